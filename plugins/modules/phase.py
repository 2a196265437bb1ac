#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: phase
short_description: Run one step of a certificate rotation phase for every slot of a host
description:
  - The engine of the collection's phase roles. A phase (V(admin_cert), V(server_tls), V(agent_login),
    V(app_leaf), V(proxy_trust), V(restart), V(healthcheck), and V(preflight)) is a set of certificates
    ("slots"), trust bundles and cert-auth mappings, the units that read them, and the gates that prove the
    result. Each step does its part for ALL of them in one call per host (or one call on the admin host).
  - The action plugin of the same name builds the work from the inventory variables (C(vault_rotate_*) and the
    role variables such as C(app_leaf_pki_role); the roles' argument specs list them) and from what the run found
    so far (the run folder on the controller), runs it on the task's host, records the result in the run, and
    fails the task when a gate did not hold. The role tasks call it; it is not meant to be called with other
    arguments than O(phase), O(step) and O(error).
  - When the task's host is the controller itself (local connection, no become), the action runs the same code
    in its own process instead of starting this module (about 0.3 s less per call); set
    C(vault_rotate_inprocess=false) or the environment variable C(VAULT_ROTATE_INPROCESS=0) to always use the module.
  - "Steps of preflight: V(check) (admin host: sys/health 200 with the admin client cert, the issuers of the PKI
    mount), V(plan) (every host: inspect each slot and bundle, read the units; outside check mode stage a new key
    and make the CSR of every slot that is due; the key never leaves its host), V(sign) (admin host: one login,
    the admin mapping written in full, every other mapping compared, every CSR signed)."
  - "Steps of a phase: V(mappings) (admin host: the phase's mappings written in full where they differ),
    V(apply) (each host of the phase: install the signed certificates, key + cert + chains as one group with
    C(.prev) backups, write the bundles, reload or restart the units that read what changed, run the host's gates),
    V(gate) (admin host: the gates that need the admin identity), V(rollback) (each host, after a failed gate:
    put back what this run changed there, reload/restart again, prove it), V(conclude) (controller: record the
    phase as passed), V(stop) (controller, in the rescue: write the report, release the lock and stop the run
    with the line C(GATE <gate> FAILED <class>: <what>. Next: <what to check>), the class in parentheses;
    it always fails)."
  - "Steps of the restart phase: V(decide) (controller: restart only when a phase changed a file Vault reads at
    start only, or always), V(apply) (the Vault and proxy hosts: restart the units), V(ready) (admin host: wait,
    bounded, for a TLS session and sys/health 200, unsealing with the given keys)."
  - "Step of the healthcheck: V(verify) (every host: every gate of its phases against what is installed and
    running now; in a whole run, a gate that this run's phase proved on that host is not proved again unless a
    restart happened since, or the listener cert changed after that phase), then V(gate) on the admin host (always)."
version_added: 1.0.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
attributes:
  check_mode:
    support: full
    details:
      - V(plan) inspects and decides as outside check mode but stages no key; V(sign) logs in and compares but
        writes and signs nothing; the other steps change nothing.
  diff_mode:
    support: none
  action:
    support: full
    description: The action plugin of the same name builds the work and records the result on the controller.
options:
  phase:
    description: The phase.
    type: str
    required: true
    choices: [preflight, admin_cert, server_tls, agent_login, app_leaf, proxy_trust, restart, healthcheck]
  step:
    description: The step of the phase, see the description.
    type: str
    required: true
    choices: [plan, apply, rollback, verify, check, sign, mappings, gate, ready, decide, conclude, stop]
  error:
    description:
      - With O(step=stop) (in a rescue), the failed task's result (C(ansible_failed_result)), used when the
        failure was not one of the run's own steps (an unexpected error).
    type: dict
  work:
    description:
      - Internal, set by the action plugin - the slots, bundles, units, gates and connection of the step.
    type: dict
    default: {}
  unseal_keys:
    description:
      - Internal, set by the action plugin for O(step=ready) from C(restart_unseal_keys). Never logged.
    type: list
    elements: str
    default: []
seealso:
  - module: privsec.vault_rotate.run
  - module: privsec.vault_rotate.cert_material
  - module: privsec.vault_rotate.tls_probe
notes:
  - The run folder lives on the controller (C(vault_rotate_lock_dir)); the controller never reads a target's files,
    and private keys never leave their host. Every result holds public material only.
"""

EXAMPLES = r"""
# The phase roles are short declarations of these steps, for example roles/app_leaf/tasks/phase.yml:
- name: App leaf | Install the signed frontend certs, reload nginx, prove the served serial
  privsec.vault_rotate.phase:
    phase: app_leaf
    step: apply

- name: Server TLS | Gate - the listener serves the new serial, seal-status with the admin cert
  privsec.vault_rotate.phase:
    phase: server_tls
    step: gate
  run_once: true
  delegate_to: "{{ vault_rotate_run.admin_host }}"
"""

RETURN = r"""
msg:
  description: What the step did, in one line.
  returned: always
  type: str
plan:
  description: With O(step=sign), the plan table (slot, host, current serial, expiry, keep/rotate, reason).
  returned: step=sign
  type: str
due:
  description:
    - With O(step=sign), per rotating phase whether it has anything to change, and C(any); the preflight role
      registers this result as C(vault_rotate_plan). C(batch) is true when nothing is due and no restart is forced;
      rotate_all.yml then skips the rotating phases and the healthcheck checks their gates in one batched
      verification.
  returned: step=sign
  type: dict
rekey:
  description: With O(step=sign), the slots whose PKI role refused the CSR's key type (a second round makes new keys).
  returned: step=sign
  type: list
  elements: str
warnings:
  description: With O(step=sign), certificates that will live shorter than the ones they replace.
  returned: step=sign
  type: list
  elements: str
slots:
  description: With O(step=apply), each slot of the host with C(action) (V(rotated) or V(kept)) and the C(serial) installed now.
  returned: step=apply
  type: list
  elements: dict
gates:
  description: The gates that held, each with C(name), C(kind) and what it saw (serial, policies, HTTP status).
  returned: step=apply, step=gate
  type: list
  elements: dict
ready_at:
  description: With O(step=ready), when Vault was first seen ready (epoch seconds).
  returned: step=ready
  type: float
failure_class:
  description: On failure, the class of the failure, for example V(serial_mismatch), V(policy_mismatch), V(sealed).
  returned: failure
  type: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _engine


def main():
    module = AnsibleModule(
        argument_spec=dict(
            phase=dict(type="str", required=True, choices=["preflight", "admin_cert", "server_tls", "agent_login",
                                                           "app_leaf", "proxy_trust", "restart", "healthcheck"]),
            step=dict(type="str", required=True, choices=["plan", "apply", "rollback", "verify", "check", "sign",
                                                          "mappings", "gate", "ready", "decide", "conclude", "stop"]),
            error=dict(type="dict"),
            work=dict(type="dict", default={}),
            unseal_keys=dict(type="list", elements="str", no_log=True, default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["step"] not in _engine.STEPS:
        module.fail_json(msg="step %s runs in the action plugin on the controller, not on a host" % p["step"],
                         failure_class="bad_input")
    params = dict(p["work"], phase=p["phase"], step=p["step"], unseal_keys=p["unseal_keys"])
    checked = ArgumentSpecValidator(_engine.ARGUMENT_SPEC).validate(params)
    if checked.error_messages:
        module.fail_json(msg="invalid work for %s/%s: %s" % (p["phase"], p["step"], "; ".join(checked.error_messages)),
                         failure_class="bad_input")
    try:
        result = _engine.run_step(checked.validated_parameters, check_mode=module.check_mode)
    except Exception as exc:  # pylint: disable=broad-except
        module.fail_json(msg="%s/%s failed unexpectedly: %s" % (p["phase"], p["step"], exc), failure_class="unknown",
                         exception=traceback.format_exc())
    result["step"] = p["step"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
