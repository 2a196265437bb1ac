# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Service backends: status, reload and restart of the units that read the
certificate files, on the host that runs them.

- ``systemd_user``: production. Every service is a systemd USER unit of its
  owner (``container-vaultprod.service`` of user vaultprod, ...). Run as that
  user, ``systemctl --user`` needs the owner's ``XDG_RUNTIME_DIR``; run as root,
  the call goes through ``runuser -u OWNER`` with that variable set.
- ``command``: hosts without systemd (the local lab): one argv per unit and
  action (``{unit: {status: [...], reload: [...], restart: [...]}}``), exit 0
  meaning success (for status: active).

Errors come out as RotateError with class ``reload_failed`` (the action ran
and failed: its output is in the message) or ``bad_input`` (the unit or
action is not configured).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import pwd
import subprocess
import time

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

BACKENDS = ("systemd_user", "command")
ACTIONS = ("status", "start", "stop", "reload", "restart")
# Bound for one backend call (a restart of a container may take a while).
CALL_TIMEOUT = 120


def _tail(text, lines=6):
    text = (text or "").strip()
    return " | ".join(text.splitlines()[-lines:])


class Services(object):
    """The units of one host, driven through one backend."""

    def __init__(self, backend="command", user=None, commands=None, timeout=CALL_TIMEOUT):
        if backend not in BACKENDS:
            raise RotateError("bad_input", "unknown service backend %r" % (backend,),
                              hint="set vault_rotate_service_backend to one of %s" % ", ".join(BACKENDS))
        self.backend = backend
        self.user = user or None
        self.commands = commands or {}
        self.timeout = timeout
        self.log = []  # (unit, action, rc, seconds, epoch) of every call, for the result

    # ------------------------------------------------------------ systemd_user

    def _owner(self):
        if not self.user:
            raise RotateError("bad_input", "the systemd_user backend needs the owner of the user units",
                              hint="set vault_rotate_service_user for this host (the user whose systemd "
                                   "manager runs the units)")
        try:
            return pwd.getpwnam(self.user)
        except KeyError:
            raise RotateError("bad_input", "service user %r does not exist on this host" % self.user,
                              hint="check vault_rotate_service_user for this host")

    def _systemctl(self, args):
        owner = self._owner()
        runtime = "/run/user/%d" % owner.pw_uid
        env = dict(os.environ, XDG_RUNTIME_DIR=runtime,
                   DBUS_SESSION_BUS_ADDRESS="unix:path=%s/bus" % runtime)
        argv = ["systemctl", "--user"] + list(args)
        if os.geteuid() != owner.pw_uid:
            if os.geteuid() != 0:
                raise RotateError(
                    "permission_denied",
                    "running as uid %d, cannot drive the user units of %s" % (os.geteuid(), self.user),
                    hint="run the task as root (become: true) or as %s (become_user)" % self.user)
            argv = ["runuser", "-u", self.user, "--", "env", "XDG_RUNTIME_DIR=%s" % runtime,
                    "DBUS_SESSION_BUS_ADDRESS=unix:path=%s/bus" % runtime] + argv
        return self._run(argv, env=env)

    # ------------------------------------------------------------ command

    def _command(self, unit, action):
        unit_commands = self.commands.get(unit)
        if not isinstance(unit_commands, dict) or not unit_commands.get(action):
            raise RotateError("bad_input", "the command backend has no '%s' command for unit '%s'" % (action, unit),
                              hint="check vault_rotate_service_commands for this host")
        argv = unit_commands[action]
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        return self._run([str(a) for a in argv])

    # ------------------------------------------------------------ common

    def _run(self, argv, env=None):
        # subprocess, not AnsibleModule.run_command: this code also runs in-process in the action
        # plugin on the controller (plugins/plugin_utils/_action.py), where there is no AnsibleModule.
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                                  stderr=subprocess.PIPE, env=env, timeout=self.timeout, check=False)
        except OSError as exc:
            raise RotateError("bad_input", "cannot run %s: %s" % (argv[0], exc),
                              hint="is the service manager (or the configured command) installed on this host?")
        except subprocess.TimeoutExpired:
            raise RotateError("timeout", "%s did not return within %d s" % (" ".join(argv[:6]), self.timeout),
                              hint="read the unit's log: it may hang while stopping or starting")
        return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")

    def call(self, unit, action):
        """Run one action; (rc, stdout, stderr). Does not judge the exit code."""
        if action not in ACTIONS:
            raise RotateError("bad_input", "unknown unit action %r" % (action,))
        started = time.time()
        if self.backend == "command":
            rc, out, err = self._command(unit, action)
        else:
            verb = "is-active" if action == "status" else action
            rc, out, err = self._systemctl([verb, "--", unit])
        self.log.append({"unit": unit, "action": action, "rc": rc, "seconds": round(time.time() - started, 3),
                         "at": round(started, 3)})
        return rc, out, err

    def act(self, unit, action):
        """reload / restart / start / stop: RotateError('reload_failed') unless it worked."""
        rc, out, err = self.call(unit, action)
        if rc != 0:
            detail = _tail(err) or _tail(out) or "exit code %d" % rc
            if self.backend == "systemd_user" and "not applicable" in err:
                hint = "the user unit %s has no ExecReload=: add one (ExecReload=/bin/kill -HUP $MAINPID)" % unit
            else:
                hint = "read the log of %s (config test, key/cert pair, permissions)" % unit
            raise RotateError("reload_failed", "%s of %s failed: %s" % (action, unit, detail), hint=hint,
                              details={"unit": unit, "action": action, "rc": rc})
        return True

    def status_all(self, units):
        """{unit: {active: bool, state: str}} for every unit, in one backend call where it can."""
        units = list(units)
        if not units:
            return {}
        if self.backend == "systemd_user":
            # One call: `is-active` prints one state per unit, in the order given.
            rc, out, err = self._systemctl(["is-active", "--"] + units)
            states = out.split()
            if len(states) != len(units):
                raise RotateError("bad_input", "systemctl --user is-active gave no state per unit (%s)" % (
                    _tail(err) or _tail(out) or "rc %d" % rc),
                    hint="is the user manager of %s running (loginctl enable-linger %s)?" % (self.user, self.user))
            return dict((u, {"active": s == "active", "state": s}) for u, s in zip(units, states))
        result = {}
        procs = []
        for unit in units:  # side by side: the lab's status commands each start a Python
            unit_commands = self.commands.get(unit)
            if not isinstance(unit_commands, dict) or not unit_commands.get("status"):
                raise RotateError("bad_input", "the command backend has no 'status' command for unit '%s'" % unit,
                                  hint="check vault_rotate_service_commands for this host")
            argv = unit_commands["status"]
            argv = ["/bin/sh", "-c", argv] if isinstance(argv, str) else [str(a) for a in argv]
            try:
                # Popen, to run the status commands side by side (run_command waits for each; see _run).
                procs.append((unit, subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # pylint: disable=ansible-bad-function
                                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            except OSError as exc:
                raise RotateError("bad_input", "cannot run the status command of %s: %s" % (unit, exc))
        for unit, proc in procs:
            try:
                rc = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = -1
            result[unit] = {"active": rc == 0, "state": "active" if rc == 0 else "inactive (rc %d)" % rc}
        return result

    def active(self, unit):
        return self.status_all([unit])[unit]["active"]
