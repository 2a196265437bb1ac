#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: run
short_description: Open a certificate rotation run (interlocks, variables, lock) or close it (report, lock released)
description:
  - Runs on the controller only (an action plugin); use it with C(run_once=true) in a play over the hosts of one
    environment. The preflight role opens the run, the report role closes it; a phase role used on its own opens
    and closes a run of its own.
  - "O(state=open) refuses, before any host is touched, when the selected hosts are not exactly one environment
    (C(REFUSED) by the environment interlock; C(-l prod) selects one), when the variables disagree with it or are
    malformed or misspelt (C(REFUSED) by the variables of the environment), or when another run of the environment
    holds the lock (C(Another rotation of <env> holds the lock ...)). The lock is
    C(<vault_rotate_lock_dir>/vault_rotate-<env>.lock),
    made atomically, with the owner (run id, user, host, pid, AWX job) inside; it is also the run's folder, where
    every step records what it found and did. In check mode no lock is taken (a private temporary folder instead).
    Register its result as C(vault_rotate_run) (the keys below): every later step reads the run from it."
  - O(state=close) writes the report of the run (C(<env>-<timestamp>.json) and C(.md), and C(latest.json)/C(.md),
    in C(vault_rotate_report_dir); none in check mode), publishes a summary with C(set_stats)
    (C(vault_rotate_report), for AWX/AAP artifacts), and releases the lock.
version_added: 1.0.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
attributes:
  check_mode:
    support: full
    details: No lock is taken and no report is written; the interlocks are checked as outside check mode.
  diff_mode:
    support: none
  action:
    support: full
    description: Runs wholly on the controller.
options:
  state:
    description: Open or close the run.
    type: str
    choices: [open, close]
    default: open
  phases:
    description:
      - With O(state=open), the rotating phases this run prepares (keys, CSRs, signatures); default
        C(vault_rotate_phases), that is all of them.
    type: list
    elements: str
  opened_by:
    description:
      - With O(state=open), who opened the run - V(preflight), or the phase role that runs on its own and then
        closes the run itself at its end.
    type: str
  status:
    description: With O(state=close), the status written into the report; V(auto) is failed when a gate failed.
    type: str
  msg:
    description: With O(state=close), one line for the report's header.
    type: str
seealso:
  - module: privsec.vault_rotate.phase
"""

EXAMPLES = r"""
- name: Open the run of the selected environment (interlocks, lock)
  privsec.vault_rotate.run:
    state: open
  run_once: true

- name: Write the report and release the lock
  privsec.vault_rotate.run:
    state: close
  run_once: true
"""

RETURN = r"""
msg:
  description: What was done, in one line (with O(state=close) the report summary and its path).
  returned: always
  type: str
id:
  description: The run id, C(awx-<job id>) under AWX/AAP, else C(<UTC time>-<pid>-<random>).
  returned: success
  type: str
env:
  description: The environment of the run (the inventory group that C(-l) selected).
  returned: success
  type: str
admin_host:
  description: The environment's C(vault_admin) host, where the steps that need the admin identity run.
  returned: success
  type: str
phases:
  description: The rotating phases this run prepares (keys, CSRs, signatures).
  returned: success
  type: list
  elements: str
opened_by:
  description: V(preflight), or the phase role that opened the run on its own.
  returned: success
  type: str
check_mode:
  description: Whether the run was opened in check mode.
  returned: success
  type: bool
dir:
  description: The run's folder on the controller (the lock folder; a private temporary folder in check mode).
  returned: success
  type: str
lock_path:
  description: The run lock C(<vault_rotate_lock_dir>/vault_rotate-<env>.lock).
  returned: success
  type: str
lock_held:
  description: Whether this run holds the lock now (false in check mode and once closed).
  returned: success
  type: bool
closed:
  description: Whether the run is closed (O(state=close)).
  returned: success
  type: bool
report:
  description: With O(state=close), the report's summary line.
  returned: state=close and a run was open
  type: str
"""
