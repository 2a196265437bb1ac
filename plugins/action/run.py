# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of privsec.vault_rotate.run: open a rotation run (interlocks,
variables, lock) or close it (report, set_stats, lock released). Runs on the
controller only; see the module documentation (plugins/modules/run.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import socket
import time

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._tls import Proxy
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import normalize_namespace
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _catalog, _report
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _run
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils._action import EngineAction

_URL_RE = __import__("re").compile(r"^https://[A-Za-z0-9.\[\]:-]+(:[0-9]{1,5})?/?$")
_DNS_RE = __import__("re").compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_NAME_RE = __import__("re").compile(r"^[A-Za-z0-9_./-]+$")
_APP_RE = __import__("re").compile(r"^[a-z0-9][a-z0-9_-]*$")


class ActionModule(EngineAction):
    _VALID_ARGS = frozenset(("state", "phases", "opened_by", "status", "msg"))
    BYPASS_HOST_LOOP = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        self._setup(task_vars)
        state = self._task.args.get("state", "open")
        try:
            if state == "open":
                result.update(self.open())
            elif state == "close":
                result.update(self.close())
            else:
                raise RotateError("bad_input", "state must be open or close, got %r" % state)
        except RotateError as err:
            return self.failed(result, err)
        return result

    # ------------------------------------------------------------ open

    def _host_envs(self):
        hostvars = self._vars.get("hostvars") or {}
        out = {}
        for host in self._vars.get("ansible_play_hosts_all") or [self.host]:
            try:
                env = hostvars[host].get("vault_rotate_env", "")
                out[host] = self._templar.template(env) or ""
            except Exception:  # an undefined or broken variable counts as unset
                out[host] = ""
        return out

    def _problems(self, env, pre):
        """The variable interlock: every sentence says what to fix."""
        g = _catalog.Values("vault_rotate", self.get)
        problems = []

        def value(key, default=""):
            try:
                return g.glob(key)
            except RotateError:
                return default

        url, sni = value("vault_url"), value("tls_server_name")
        if not _URL_RE.match(str(url or "")):
            problems.append("vault_rotate_vault_url must be https://host[:port] without a path, got '%s'" % url)
        if not _DNS_RE.match(str(sni or "")):
            problems.append("vault_rotate_tls_server_name must be a DNS name (the SNI and hostname the listener "
                            "serves), got '%s'" % sni)
        try:
            normalize_namespace(value("vault_namespace") or None)
        except RotateError as err:
            problems.append("vault_rotate_vault_namespace: %s (%s)" % (err.message, err.hint))
        if value("vault_proxy"):
            try:
                Proxy(value("vault_proxy"))
            except RotateError as err:
                problems.append("vault_rotate_vault_proxy: %s (%s)" % (err.message, err.hint))
        for key in ("pki_mount", "cert_auth_mount"):
            if not _NAME_RE.match(str(value(key) or "")):
                problems.append("vault_rotate_%s is not set" % key)
        if not _NAME_RE.match(str(value("admin_mapping") or "")):
            problems.append("vault_rotate_admin_mapping is not set")
        if not all(str(value(k) or "").startswith("/") for k in ("ca_cert", "admin_cert", "admin_key")):
            problems.append("vault_rotate_ca_cert, vault_rotate_admin_cert and vault_rotate_admin_key must be "
                            "absolute paths on the vault_admin host")
        apps = value("apps", [])
        if not isinstance(apps, list) or not apps:
            problems.append("vault_rotate_apps must be a non-empty list of app names, got %s" % (apps,))
        else:
            bad = [a for a in apps if not _APP_RE.match(str(a))]
            if bad:
                problems.append("every app name in vault_rotate_apps must be a lowercase name (it builds PKI roles "
                                "agent-mtls-<app>, nginx-<app> and mapping agent-<app>): %s" % ", ".join(bad))
            hosts_app = self._apps_of("vault_apps", env)
            if sorted(apps) != sorted(hosts_app):
                problems.append("vault_rotate_apps %s must match the vault_rotate_app of the vault_apps hosts %s one "
                                "to one" % (apps, hosts_app))
        proxies = value("proxy_apps", [])
        if isinstance(proxies, list) and sorted(proxies) != sorted(self._apps_of("vault_proxies", env)):
            problems.append("vault_rotate_proxy_apps %s must match the vault_rotate_app of the vault_proxies hosts %s"
                            % (proxies, self._apps_of("vault_proxies", env)))
        try:
            fraction = float(value("renew_fraction", 0))
        except (TypeError, ValueError):
            fraction = 0
        if not 0 < fraction < 1:
            problems.append("vault_rotate_renew_fraction must be between 0 and 1 (share of the lifetime after which a "
                            "cert is due), got %s" % value("renew_fraction"))
        if value("restart_vault") not in ("auto", "always", "never"):
            problems.append("vault_rotate_restart_vault must be auto, always or never, got '%s'"
                            % value("restart_vault"))
        keys = self.var("vault_rotate_unseal_keys", [])
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
            problems.append("vault_rotate_unseal_keys must be a list (of unseal keys)")
        for key in ("report_dir", "lock_dir"):
            # Paths on the controller: absolute, or from ~ (expanded for the controller user); unset,
            # the controller user's state folder (plugins/plugin_utils/_catalog.py controller_state_dir).
            try:
                path = g.glob(key)
            except RotateError as err:
                if err.message not in problems:
                    problems.append(err.message)
                continue
            if not os.path.isabs(path):
                problems.append("vault_rotate_%s must be an absolute path on the controller (or start with ~/, the "
                                "controller user's home), got '%s'%s" % (
                                    key, path, " (the controller user has no home folder to expand ~ to)"
                                    if path.startswith("~") else ""))
        phases = self._task.args.get("phases")
        phases = value("phases", list(_catalog.ROTATING_PHASES)) if phases is None else phases
        unknown = [p for p in phases if p not in _catalog.ROTATING_PHASES]
        if unknown:
            problems.append("vault_rotate_phases holds unknown phases %s (known: %s)" % (
                ", ".join(unknown), ", ".join(_catalog.ROTATING_PHASES)))
        for name, suggestion in _catalog.unknown_variables(self._vars.keys()):
            if not name.startswith(_catalog.DISTINCT_PREFIXES):
                self._display.warning("unknown variable %s%s" % (
                    name, " (did you mean %s?)" % suggestion if suggestion else ""))
            else:
                problems.append("unknown variable %s%s" % (
                    name, " (did you mean %s?)" % suggestion if suggestion else ""))
        for role in _catalog.ROLES:
            if role in ("preflight", "report", "restart", "healthcheck", "admin_cert", "server_tls"):
                try:
                    _catalog.settings(role, self.get)
                except RotateError as err:
                    problems.append(err.message)
        return problems

    def _apps_of(self, group, env):
        hostvars = self._vars.get("hostvars") or {}
        members = set(self.groups.get(env) or [])
        out = []
        for host in self.groups.get(group) or []:
            if host in members:
                try:
                    out.append(self._templar.template(hostvars[host].get("vault_rotate_app", "")) or "")
                except Exception:
                    out.append("")
        return out

    def open(self):
        pre = _catalog.settings("preflight", self.get)
        # The admin host need not be in this play (a phase play over the app hosts): it is
        # the environment's one vault_admin host, picked below from the inventory.
        interlock = _report.env_interlock(self._host_envs(), self.groups, pre["env_groups"], admin_group="")
        if interlock["problems"]:
            raise RotateError("interlock", "REFUSED (environment interlock): %s" % "; ".join(interlock["problems"]),
                              hint="limit the run to one environment (-l prod) whose group_vars set vault_rotate_env")
        env = interlock["env"]
        declared = self.var("vault_rotate_env", "")
        problems = []
        if declared != env:
            problems.append("vault_rotate_env (%s) differs from the selected environment (%s)" % (declared, env))
        problems += self._problems(env, pre)
        if problems:
            raise RotateError("interlock", "REFUSED (variables of %s): %s" % (env, "; ".join(problems)),
                              hint="fix the variables of %s (inventories/prod shows every one)" % env)
        g = _catalog.Values("vault_rotate", self.get)
        phases = self._task.args.get("phases")
        phases = list(g.glob("phases") if phases is None else phases)
        try:
            admin_host = _catalog.admin_host(self.groups, env, self._vars.get("ansible_play_hosts_all"))
        except RotateError as err:
            raise RotateError("interlock", "REFUSED (environment interlock): %s" % err.message, hint=err.hint)
        run_id = _run.new_run_id(self.var("awx_job_id"))
        meta = {"id": run_id, "env": env, "admin_host": admin_host, "phases": phases,
                "check_mode": self.check_mode, "started": _run.utcnow_iso(), "started_epoch": time.time(),
                "user": _run.current_user(), "controller": socket.gethostname(),
                "opened_by": self._task.args.get("opened_by") or "preflight", "closed": False,
                "lock_held": False, "lock_path": _run.lock_path(g.glob("lock_dir"), env)}
        # One run per ansible-playbook process: a later play of the same process (restart.yml
        # after preflight.yml, say) joins the run that is open, whichever hosts it registered on.
        folder = _run.check_dir(env) if self.check_mode else meta["lock_path"]
        joined = _run.own_run(folder)
        if joined is not None:
            joined["phases"] = joined["phases"] + [p for p in phases if p not in joined["phases"]]
            _run.Run(joined).write(joined, "run")
            out = dict(joined, changed=False)
            out["msg"] = "run %s of %s (opened by %s) continues" % (joined["id"], env, joined.get("opened_by"))
            return out
        if self.check_mode:
            os.makedirs(folder, 0o700)
            meta["dir"] = folder
            msg = "check mode: no lock taken"
        else:
            state = _run.acquire(meta["lock_path"], run_id, env, break_stale=pre["lock_break_stale"])
            if not state["acquired"]:
                raise RotateError("locked", _run.refused_message(env, state),
                                  hint="one rotation per environment at a time")
            meta.update(dir=meta["lock_path"], lock_held=True)
            msg = "lock %s taken" % meta["lock_path"]
        run = _run.Run(meta)
        run.write(meta, "run")
        out = dict(meta, changed=not self.check_mode)
        out["msg"] = "Environment %s: %d host(s), admin host %s; run %s (%s)" % (
            env, len(self._vars.get("ansible_play_hosts_all") or []), meta["admin_host"], run_id, msg)
        return out

    # ------------------------------------------------------------ close

    def close(self):
        run = self.run_state(required=False)
        if run is None:
            return {"changed": False, "closed": True, "msg": "no open run to close"}
        report = _run.finish(run, _catalog.settings("report", self.get)["dir"],
                             status=self._task.args.get("status") or "auto", msg=self._task.args.get("msg") or "",
                             check_mode=self.check_mode)
        out = dict(run.meta, closed=True, lock_held=False, changed=not self.check_mode, report=report["summary_line"],
                   msg=report["summary_line"])
        if _catalog.settings("report", self.get)["set_stats"]:
            out["ansible_stats"] = {"data": {"vault_rotate_report": report["stats"]}, "per_host": False,
                                    "aggregate": False}
        if self.check_mode:
            shutil.rmtree(run.dir, ignore_errors=True)
        return out
