# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of privsec.vault_rotate.phase: one step of a rotation phase.

It builds the step's work from the inventory (plugin_utils/_catalog.py) and
from what the run found so far (its journal, plugin_utils/_run.py), runs it
on the task's host with the engine (module_utils/_engine.py), records what
happened, and fails the task when a gate did not hold. See the module
documentation (plugins/modules/phase.py) for the steps.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible.errors import AnsibleConnectionFailure

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _catalog, _report, _run
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils._action import SERVICE, EngineAction

HOST_STEPS = ("plan", "apply", "rollback")
# The kinds of gate that prove a rollback (the file checks and the fresh-token check do not apply).
PROOF_KINDS = ("login", "admin_login", "probe", "unit")
# What to check next when preflight cannot reach Vault, by failure class.
PREFLIGHT_NEXT = {
    "sealed": "unseal Vault (vault_rotate_unseal_keys or by hand), then rerun",
    "standby": "point vault_rotate_vault_url at the active node",
    "refused": "is the Vault unit running and listening on that port?",
    "reset": "the server is not ready yet (or a port forwarder has no backend): wait and rerun",
    "tls_alert": "the listener refused the admin client cert: is it expired or from a CA the listener does not trust?",
    "untrusted_server_cert": "vault_rotate_ca_cert does not verify the listener cert",
    "hostname_mismatch": "vault_rotate_tls_server_name is not a name in the listener cert",
}
# What a failed healthcheck means, by failure class.
HEALTH_MEANINGS = {
    "reset": "connection reset: the server is not ready yet or a port forwarder has no backend (running is not ready)",
    "refused": "nothing listens on that port: is the unit running?",
    "timeout": "no answer in time: firewall, or a server stuck during start",
    "tls_alert": "the server refused the handshake; 'certificate required' = client cert missing, 'unknown ca' = "
                 "client cert from a CA the listener does not trust",
    "untrusted_server_cert": "the served chain does not verify against the CA bundle (wrong trust, or fullchain "
                             "without its intermediate)",
    "hostname_mismatch": "the served cert does not carry the SNI name: wrong cert installed or wrong tls_server_name",
    "expired": "the served cert expired: the rotation did not reach the listener",
    "sealed": "Vault is sealed: unseal it (vault_rotate_unseal_keys or by hand)",
    "standby": "this node is a standby: point the URL at the active node",
    "server_error": "the server answered with an error: read its log",
}


def failure_dict(error):
    return {"failure_class": error.failure_class, "msg": error.message, "hint": error.hint}


class StepFailed(Exception):
    """A step of the phase did not hold: its failure, as recorded in the run."""

    def __init__(self, failure):
        super(StepFailed, self).__init__(failure.get("msg"))
        self.failure = failure
        self.error = RotateError(failure.get("failure_class") or "unknown", failure.get("msg") or "failed",
                                 hint=failure.get("hint"))


def key_setting(slot):
    """The variable that sets a slot's key type: app_leaf_key_type, proxy_trust_frontend_key_type, ..."""
    phase, _sep, rest = slot.partition("/")
    prefix = rest.split("-", 1)[0] + "_" if phase == "proxy_trust" and rest else ""
    return "%s_%skey_type" % (phase, prefix)


def ungated_units(units, gates):
    """The units that no unit gate of ``gates`` proves running."""
    named = set(g.get("unit") for g in gates if g["kind"] == "unit")
    return [u for u in units if u not in named]


def voided_phases(run):
    """The phases whose proofs no longer stand: every one after a restart (phase restart), those
    before server_tls after a new listener cert (every client goes through it)."""
    order = _catalog.ROTATING_PHASES
    if (run.read("phase", "restart", "decide") or {}).get("do"):
        return set(order)
    if any(s.get("action") == "rotated" for a in run.all("phase", "server_tls", "apply").values()
           for s in a.get("slots") or []):
        return set(order[:order.index("server_tls")])
    return set()


def host_proofs(run, host, phases, voided=None):
    """({gate name: phase}, whole) for ``host``: the gates its phases proved in this run with
    nothing every client goes through changed since (``voided``: voided_phases(run), read once
    by a caller that asks for many hosts), so the healthcheck does not prove them again; whole
    when that is every gate of every phase of the host and every unit they touch (the
    healthcheck has nothing left to check there)."""
    if voided is None:
        voided = voided_phases(run)
    proven, whole = {}, True
    for phase in phases:
        if phase in voided:
            whole = False
            continue
        applied = run.read("phase", phase, "apply", host) or {}
        if not applied or applied.get("failure") or applied.get("units_ungated") != []:
            whole = False
        for gate in applied.get("gates") or []:
            if gate.get("ok") and gate.get("checked", True):
                proven[gate["name"]] = phase
            else:
                whole = False
    return proven, whole


class ActionModule(EngineAction):
    _VALID_ARGS = frozenset(("phase", "step", "error"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        self._setup(task_vars)
        self.phase = self._task.args.get("phase")
        self.step = self._task.args.get("step")
        self.started = time.time()
        handler = getattr(self, "step_%s" % self.step, None)
        if self.phase not in _catalog.PHASES or handler is None:
            return self.failed(result, RotateError("bad_input", "unknown phase %r or step %r" % (
                self.phase, self.step)))
        try:
            result.update(handler())
        except StepFailed as failed:
            self.record(failed.failure)
            return self.failed(result, failed.error)
        except RotateError as err:
            self.record(failure_dict(err))
            return self.failed(result, err)
        except (AnsibleConnectionFailure, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug or an unforeseen state: say which step, keep the run reportable
            err = RotateError("unknown", "%s/%s on %s failed unexpectedly: %s: %s" % (
                self.phase, self.step, self.host, type(exc).__name__, exc),
                hint="rerun with -vvv; the run folder %s holds what each step recorded" % (
                    (self.var("vault_rotate_run") or {}).get("dir"),))
            self.record(failure_dict(err))
            return self.failed(result, err)
        return result

    # ------------------------------------------------------------ helpers

    def record(self, failure):
        """Keep a failed step in the run: whichever host stops the run reports it."""
        if self.step in ("conclude", "stop"):
            return
        run = self.run_state(required=False)
        if run is None:
            return
        failure = dict(failure)
        failure.setdefault("gate_label", failure.get("gate") or self.phase)
        failure.update(host=self.host, step=self.step, started=self.started)
        run.write(failure, "phase", self.phase, "failure", "%s-%s" % (self.step, self.host))

    def fail_step(self, run, failure, gate=None):
        """Fail the task with this failure of the phase (run() records it in the run)."""
        failure = dict(failure)
        failure.setdefault("gate", gate or self.phase)
        failure["gate_label"] = gate or failure.get("gate_label") or self.phase
        raise StepFailed(failure)

    def engine_on(self, run, params, gate=None):
        """engine() with an unreachable host turned into a recorded failure of this phase."""
        try:
            return self.engine(params)
        except AnsibleConnectionFailure as exc:
            self.fail_step(run, {"failure_class": "unreachable",
                                 "msg": "cannot reach %s: %s" % (self.host, str(exc).strip().splitlines()[0]),
                                 "hint": "nothing of this step ran on %s: bring the host back (network, sshd), then "
                                         "rerun; the run is repeatable" % self.host}, gate=gate or self.phase)

    def connection(self):
        return _catalog.connection(self.get)

    def work(self, phase=None):
        return _catalog.host_work(phase or self.phase, self.get, self.get_item)

    @staticmethod
    def as_planned(spec, planned):
        """The slot with the names the plan gave its new cert (every name of the cert it replaces,
        the configured ones, minus the dropped ones)."""
        spec = dict(spec)
        names = (planned.get(spec["name"]) or {}).get("names")
        if names:
            spec.update(dns_names=names["dns_names"], ip_addresses=names["ip_addresses"], drop_names=[])
        return spec

    def gate_label(self, work):
        app = (work.get("values") or {}).get("app")
        if self.phase in ("agent_login", "app_leaf") and app:
            return "%s/%s" % (self.phase, app)
        return self.phase

    def admin_cert_pem(self, run):
        """The admin client cert in use now (public): this run's new one once admin_cert installed it."""
        for applied in run.all("phase", "admin_cert", "apply").values():
            for done in applied.get("slots") or []:
                if done["slot"] == "admin_cert" and done.get("action") == "rotated":
                    return run.signed()["admin_cert"]["certificate"]
        return (run.read("vault") or {}).get("admin_cert_pem")

    def resolve_gates(self, run, gates):
        out = []
        for gate in gates:
            gate = dict(gate)
            if gate.get("ca_pem") == "@issuers":
                gate["ca_pem"] = run.ca_bundle()
            if gate["kind"] == "client_ca":
                gate["cert_pem"] = self.admin_cert_pem(run)
            out.append(gate)
        return out

    # ------------------------------------------------------------ preflight

    def step_check(self):
        """Admin host: Vault ready for the admin identity's certificate; the issuers of the mount.
        Outside preflight (a healthcheck or restart run on its own) only when the run has no
        issuers yet: the ones preflight read serve the whole run. In the healthcheck, also the
        hosts it need not visit (``proven_hosts``, see proven_hosts())."""
        run = self.run_state()
        if self.phase == "healthcheck":
            result = self.issuers_check(run)
            proven = self.proven_hosts(run)
            if proven:
                result["msg"] += ("; every gate of %d host(s) proven by this run's phases, nothing restarted "
                                  "since (not visited again): %s" % (len(proven), ", ".join(proven)))
            return dict(result, proven_hosts=proven)
        return self.issuers_check(run)

    def proven_hosts(self, run):
        """The hosts of the play (never the admin host) whose every gate and unit this run's phases
        proved, nothing restarted since (host_proofs()): the healthcheck's verify has nothing left to
        check there, so its play ends them (meta: end_host, no task sent to them). Their verify
        records are written here, for the report. Check mode: none (the phases proved nothing)."""
        if self.check_mode:
            return []
        admin = run.meta.get("admin_host")
        voided = voided_phases(run)
        out = []
        for host in self.var("ansible_play_hosts") or []:
            phases = _catalog.phases_of_host(host, self.groups)
            if host == admin or not phases:
                continue
            proven, whole = host_proofs(run, host, phases, voided)
            if not whole:
                continue
            run.write({"host": host, "changed": False, "gates": [], "failure": None, "started": self.started,
                       "not_visited": True,
                       "proven_earlier": [{"name": name, "ok": True, "proven_by": phase}
                                          for name, phase in sorted(proven.items())]},
                      "phase", "healthcheck", "verify", host)
            out.append(host)
        return out

    def issuers_check(self, run):
        """Vault ready for the admin identity, the issuers of the mount (recorded for the run)."""
        if self.phase != "preflight" and run.read("vault") and run.ca_bundle():
            return {"changed": False, "msg": "the issuers preflight read serve this run"}
        pre = _catalog.settings("preflight", self.get)
        params = {"phase": self.phase, "step": "check", "connection": self.connection(),
                  "pki_mount": _catalog.Values("vault_rotate", self.get).glob("pki_mount"),
                  "wait_timeout": pre["vault_wait_timeout"], "interval": 0.5}
        found = self.engine_on(run, params, gate=self.phase)
        run.write(dict(found, host=self.host), "vault")
        failure = found.get("failure")
        if failure and failure.get("gate") == "issuers":
            self.fail_step(run, failure, gate=self.phase)
        if failure:
            klass = failure["failure_class"]
            self.fail_step(run, {"failure_class": klass,
                                 "msg": "the admin identity cannot reach Vault: %s: %s" % (klass, failure["msg"]),
                                 "hint": PREFLIGHT_NEXT.get(klass, failure.get("hint") or
                                                            "check the URL, the CA bundle and the admin cert")},
                           gate=self.phase)
        health = found.get("health") or {}
        return {"changed": False, "msg": "Vault %s ready (HTTP %s); %d valid issuer(s) in %s" % (
            health.get("version") or "?", health.get("status_code"),
            len((found.get("issuers") or {}).get("issuers") or []), params["pki_mount"])}

    def step_plan(self):
        """Every host: inspect its slots and bundles, read its units; key + CSR where due."""
        run = self.run_state()
        phases = _catalog.phases_of_host(self.host, self.groups)
        if not phases:
            return {"changed": False, "skipped": True, "skip_reason": "no certificate of this run on %s" % self.host}
        pre = _catalog.settings("preflight", self.get)
        works = dict((p, self.work(p)) for p in phases)
        # A PKI role that demands another key type than the one installed (found by sign):
        # a key of that type is made now.
        rekey = (run.read("rekey") or {}).get("slots") or {}
        for work in works.values():
            for slot in work["slots"]:
                if slot["name"] in rekey:
                    slot.update(key_type=rekey[slot["name"]]["key_type"], key_size=rekey[slot["name"]]["key_size"],
                                key_source="role")
        units = []
        for work in works.values():
            units += [u for u in work["units"] if u not in units]
        params = {"phase": "preflight", "step": "plan", "ca_bundle": run.ca_bundle(),
                  "slots": [s for w in works.values() for s in w["slots"]],
                  "bundles": [b for w in works.values() for b in w["bundles"]],
                  "units": units if pre["check_units"] else [],
                  "prepare": [p for p in phases if p in run.meta["phases"]] if not self.check_mode else [],
                  "service": SERVICE}
        found = self.engine_on(run, params, gate="preflight")
        record = {"host": self.host, "phases": phases, "works": works, "slots": found["slots"],
                  "bundles": found["bundles"], "units": found.get("units") or {}, "started": self.started}
        run.write(record, "plan", self.host)
        down = ["%s (%s)" % (u, s.get("state")) for u, s in sorted(record["units"].items()) if not s.get("active")]
        if down:
            self.fail_step(run, {"failure_class": "unit_not_active",
                                 "msg": "units not active on %s: %s" % (self.host, ", ".join(down)),
                                 "hint": "check the unit (backend %s) on %s: it must exist and run before a rotation "
                                         "reloads it" % (params["service"]["backend"], self.host)}, gate="preflight")
        due = [s["slot"] for s in found["slots"] if s["decision"] == "rotate"]
        return {"changed": bool(found.get("changed")),
                "msg": "%d slot(s), %d due%s" % (len(found["slots"]), len(due), ": " + ", ".join(due) if due else "")}

    def step_sign(self):
        """Admin host: one login; the admin mapping; every CSR of the run signed; the plan."""
        run = self.run_state()
        phases = run.meta["phases"]
        plans = run.plans()
        pre = _catalog.settings("preflight", self.get)
        before = run.read("signed") or {}
        requests, write, compare, rows = [], [], [], []
        for host, plan in sorted(plans.items()):
            specs = dict((s["name"], s) for w in plan["works"].values() for s in w["slots"])
            for record in plan["slots"]:
                rows.append(dict(record, host=host))
                if record["phase"] in phases and record["decision"] == "rotate" and record.get("csr") \
                        and record["slot"] not in (before.get("signed") or {}):
                    spec = specs[record["slot"]]
                    requests.append({"slot": spec["name"], "pki_mount": spec["pki_mount"], "pki_role": spec["pki_role"],
                                     "csr": record["csr"], "common_name": spec["common_name"],
                                     "dns_names": record["names"]["dns_names"],
                                     "ip_addresses": record["names"]["ip_addresses"], "ttl": spec.get("ttl"),
                                     "key_source": record["key"]["source"], "key_setting": key_setting(spec["name"]),
                                     "old_lifetime_days": (record.get("old") or {}).get("lifetime_days")})
            for phase, work in plan["works"].items():
                for mapping in work["mappings"]:
                    (write if phase == "admin_cert" and phase in phases else compare).append(dict(mapping, phase=phase))
        params = {"phase": "preflight", "step": "sign", "connection": self.connection(), "ca_bundle": run.ca_bundle(),
                  "requests": requests, "mappings": [dict((k, v) for k, v in m.items() if k != "phase") for m in write],
                  "compare": [dict((k, v) for k, v in m.items() if k != "phase") for m in compare],
                  "expected_policies": pre["admin_policies"]}
        found = self.engine_on(run, params, gate="preflight")
        phase_of = dict((m["name"], m["phase"]) for m in write + compare)
        for entry in (found.get("mappings") or []) + (found.get("compared") or []):
            entry["phase"] = phase_of.get(entry["name"])
        found["signed"] = dict(before.get("signed") or {}, **(found.get("signed") or {}))
        found["warnings"] = (before.get("warnings") or []) + (found.get("warnings") or [])
        if before and not write:  # a second round (new keys): keep what the first one wrote and compared
            found["mappings"], found["compared"] = before.get("mappings") or [], before.get("compared") or []
        run.write(dict(found, requests=[r["slot"] for r in requests]), "signed")
        rekey = found.get("rekey") or {}
        if rekey:
            run.write({"slots": rekey}, "rekey")
        due = self.due(plans, found, phases)
        # Nothing due and no restart asked for: rotate_all skips the rotating phases and the
        # healthcheck checks their gates in one batched verification (a forced restart runs
        # them in place, so that their gates hold before Vault goes down).
        due["batch"] = not due["any"] and _catalog.settings("restart", self.get)["vault_mode"] != "always"
        run.write({"due": due}, "due")
        table = _report.plan_table(rows) + self.trust_lines(plans, found) + self.dropin_lines(plans, found)
        failure = found.get("failure")
        if failure:
            slot = failure.get("slot")
            self.fail_step(run, dict(failure, msg=("slot %s: %s" % (slot, failure["msg"])) if slot else failure["msg"]),
                           gate="preflight")
        return {"changed": bool(found.get("changed")), "plan": table, "due": due, "rekey": sorted(rekey),
                "warnings": found["warnings"],
                "msg": "%d certificate(s) signed; phases with work: %s" % (
                    len(found.get("signed") or {}), ", ".join(p for p in _catalog.ROTATING_PHASES if due[p]) or "none")}

    @staticmethod
    def due(plans, signed, phases):
        """Per rotating phase: does it have anything to change (slot, bundle, mapping)?"""
        due = dict((p, False) for p in _catalog.ROTATING_PHASES)
        for plan in plans.values():
            for record in plan["slots"]:
                if record["decision"] == "rotate":
                    due[record["phase"]] = True
            for bundle in plan["bundles"]:
                if bundle["differs"]:
                    due[bundle["phase"]] = True
        for entry in (signed.get("mappings") or []) + (signed.get("compared") or []):
            if entry.get("changed") and entry.get("phase") in due:
                due[entry["phase"]] = True
        due["any"] = any(due[p] for p in phases if p in due)
        return due

    @staticmethod
    def dropin_lines(plans, signed):
        """What a drop-in replacement keeps, adds and drops, per slot that rotates; the key;
        new keys a PKI role asked for; certificates that will live shorter."""
        lines = []
        for host, plan in sorted(plans.items()):
            for record in plan["slots"]:
                if record["decision"] != "rotate":
                    continue
                names, key = record.get("names") or {}, record.get("key") or {}
                parts = ["key %s-%s (%s)" % (key.get("type"), key.get("size"), {
                    "installed": "as installed", "setting": "as set", "role": "as the PKI role requires",
                    "default": "none installed"}.get(key.get("source"), key.get("source")))]
                for what in ("kept", "added", "dropped"):
                    if names.get(what):
                        parts.append("%s %s" % ({"kept": "keeps", "added": "adds", "dropped": "DROPS"}[what],
                                                ", ".join(names[what])))
                lines.append("  %s on %s: %s" % (record["slot"], host, "; ".join(parts)))
        for slot, rekey in sorted((signed.get("rekey") or {}).items()):
            lines.append("  %s: a new %s-%s key (the CSR had %s, which the PKI role refuses)" % (
                slot, rekey["key_type"], rekey["key_size"], rekey.get("was")))
        for warning in signed.get("warnings") or []:
            lines.append("  WARNING: %s" % warning)
        return ("\n" + "\n".join(lines)) if lines else ""

    @staticmethod
    def trust_lines(plans, signed):
        lines = []
        for host, plan in sorted(plans.items()):
            for bundle in plan["bundles"]:
                if bundle["differs"]:
                    lines.append("  trust %s on %s: WRITE (adds %s; drops %s)" % (
                        bundle["path"], host, ", ".join(bundle["added"]) or "-", ", ".join(bundle["removed"]) or "-"))
        for entry in (signed.get("mappings") or []) + (signed.get("compared") or []):
            if entry.get("changed"):
                lines.append("  mapping %s: WRITE (%s)" % (entry["name"], ", ".join(entry.get("changed_fields") or [])))
        return ("\n" + "\n".join(lines)) if lines else "\ntrust bundles and mappings: as wanted"

    # ------------------------------------------------------------ a phase

    def step_mappings(self):
        """Admin host: write this phase's cert-auth mappings in full where they differ (one login)."""
        run = self.run_state()
        if self.check_mode:
            return {"changed": False, "msg": "check mode: the plan is the answer"}
        compared = dict((m["name"], m) for m in (run.read("signed") or {}).get("compared") or [])
        mappings = []
        for plan in run.plans().values():
            for mapping in (plan["works"].get(self.phase) or {}).get("mappings") or []:
                seen = compared.get(mapping["name"])
                if seen is None or seen.get("changed"):
                    mappings.append(mapping)
        if not mappings:
            return {"changed": False, "msg": "every mapping of %s is as wanted" % self.phase}
        params = {"phase": self.phase, "step": "mappings", "connection": self.connection(),
                  "ca_bundle": run.ca_bundle(), "mappings": mappings}
        found = self.engine_on(run, params)
        run.write(dict(found, host=self.host, started=self.started), "phase", self.phase, "mappings")
        if found.get("failure"):
            self.fail_step(run, found["failure"])
        return {"changed": bool(found.get("changed")), "mappings": found.get("mappings"),
                "msg": "mappings written: %s" % (", ".join(m["name"] for m in found["mappings"] if m["changed"])
                                                 or "none")}

    def step_apply(self):
        """A host of the phase: install what was signed, bundles, reload/restart, the host's gates."""
        run = self.run_state()
        if self.phase == "restart":
            return self.restart_apply(run)
        if self.phase not in _catalog.phases_of_host(self.host, self.groups):
            return {"changed": False, "skipped": True, "skip_reason": "no %s work on %s" % (self.phase, self.host)}
        if self.check_mode:
            return {"changed": False, "msg": "check mode: the plan printed by preflight is the answer"}
        work = self.work()
        signed = run.signed() if self.phase in run.meta["phases"] else {}
        planned = dict((r["slot"], r) for r in (run.read("plan", self.host) or {}).get("slots") or [])
        slots = []
        for spec in work["slots"]:
            spec = self.as_planned(spec, planned)
            issued = signed.get(spec["name"])
            if issued:
                spec["certificate"] = issued["certificate"]
                spec["chain"] = "".join(issued.get("ca_chain") or [issued.get("issuing_ca") or ""])
            slots.append(spec)
        params = {"phase": self.phase, "step": "apply", "slots": slots, "bundles": work["bundles"],
                  "gates": self.resolve_gates(run, work["gates"]), "ca_bundle": run.ca_bundle(),
                  "service": SERVICE}
        if self.phase == "admin_cert":
            params["connection"] = self.connection()
        label = self.gate_label(work)
        found = self.engine_on(run, params, gate=label)
        installed = dict((d["slot"], d) for d in found.get("slots") or [])
        record = {"host": self.host, "phase": self.phase, "started": self.started, "ended": time.time(),
                  "slots": [{"slot": s["name"], "action": "rotated" if (installed.get(s["name"]) or {}).get("changed")
                             else "kept", "serial": (found.get("serials") or {}).get(s["name"])} for s in slots],
                  "bundles": found.get("bundles"), "units": found.get("units"), "gates": found.get("gates"),
                  "restart_reasons": found.get("restart_reasons") or [], "failure": found.get("failure"),
                  "service_calls": found.get("service_calls"), "engine": found.get("engine"),
                  "units_ungated": ungated_units(work["units"], params["gates"])}
        run.write(record, "phase", self.phase, "apply", self.host)
        if found.get("failure"):
            failure = dict(found["failure"])
            failure["hint"] = "; ".join(x for x in (failure.get("hint"), work.get("next") and "then check " + work["next"])
                                        if x)
            self.fail_step(run, failure, gate=label)
        rotated = [s["slot"] for s in record["slots"] if s["action"] == "rotated"]
        return {"changed": bool(found.get("changed")), "slots": record["slots"], "gates": found.get("gates"),
                "msg": "%s: %s; gates passed: %s" % (self.host, ("rotated " + ", ".join(rotated)) if rotated else
                                                     "nothing to install", ", ".join(g["name"] for g in
                                                                                     found.get("gates") or []))}

    def step_verify(self):
        """Healthcheck, every host: every gate of every phase of this host against what is
        installed and running now; each agent must hold a valid token from its current cert."""
        run = self.run_state()
        if self.check_mode:
            return {"changed": False, "msg": "check mode: the plan is the answer"}
        phases = _catalog.phases_of_host(self.host, self.groups)
        if not phases:
            return {"changed": False, "skipped": True, "skip_reason": "no certificate of this run on %s" % self.host}
        planned = dict((r["slot"], r) for r in (run.read("plan", self.host) or {}).get("slots") or [])
        slots, gates, units = [], [], []
        for phase in phases:
            work = self.work(phase)
            slots += [self.as_planned(spec, planned) for spec in work["slots"]]
            units += [u for u in work["units"] if u not in units]
            for gate in self.resolve_gates(run, work["gates"]):
                if gate["kind"] == "token":
                    gate = dict(gate, fresh=False, wait_timeout=min(float(gate.get("wait_timeout") or 0), 10))
                elif gate["kind"] == "files":
                    # min_days_left is the sanity of a NEW cert; what is installed must only still be valid
                    gate = dict(gate, min_days_left=0)
                gates.append(gate)
        gates = [_catalog.unit_gate(u, wait_timeout=0) for u in ungated_units(units, gates)] + gates
        proven = host_proofs(run, self.host, phases)[0]
        earlier = [{"name": g["name"], "kind": g["kind"], "ok": True, "proven_by": proven[g["name"]]}
                   for g in gates if g["name"] in proven]
        gates = [g for g in gates if g["name"] not in proven]
        found = {"changed": False, "gates": [], "failure": None}
        if gates:
            wanted = set(g.get("slot") for g in gates)
            params = {"phase": "healthcheck", "step": "verify", "slots": [s for s in slots if s["name"] in wanted],
                      "gates": gates, "ca_bundle": run.ca_bundle(), "service": SERVICE}
            if "admin_cert" in phases:
                params["connection"] = self.connection()
            found = self.engine_on(run, params, gate="healthcheck")
        run.write(dict(found, host=self.host, started=self.started, proven_earlier=earlier), "phase", "healthcheck",
                  "verify", self.host)
        if found.get("failure"):
            failure = dict(found["failure"])
            failure["hint"] = failure.get("hint") or HEALTH_MEANINGS.get(failure["failure_class"])
            self.fail_step(run, failure, gate="healthcheck/%s" % self.host)
        held = [g["name"] for g in found.get("gates") or []]
        return {"changed": False, "gates": (found.get("gates") or []) + earlier,
                "msg": "%s: %d gate(s) hold: %s%s" % (
                    self.host, len(held), ", ".join(held) or "-",
                    "; %d proven by this run's phases, nothing restarted since: %s" % (
                        len(earlier), ", ".join(g["name"] for g in earlier)) if earlier else "")}

    def step_gate(self):
        """Admin host: the gates that need the admin identity."""
        run = self.run_state()
        if self.check_mode:
            return {"changed": False, "msg": "check mode: the plan is the answer"}
        g = _catalog.Values("vault_rotate", self.get).glob
        conn = self.connection()
        if self.phase == "server_tls":
            v = _catalog.settings("server_tls", self.get)
            serial = None
            for applied in run.all("phase", "server_tls", "apply").values():
                for done in applied.get("slots") or []:
                    if done["slot"] == "server_tls":
                        serial = done.get("serial")
            names = self.planned_names(run, "server_tls")
            gates = [{"kind": "probe", "name": "listener serves the %s cert for %s" % (
                "expected" if serial else "current", g("tls_server_name")),
                "host": v["probe_host"], "port": v["probe_port"], "server_name": g("tls_server_name"),
                "ca_cert": g("ca_cert"), "client_cert": g("admin_cert"), "client_key": g("admin_key"),
                "expect_serial": serial, "wait_timeout": v["wait_timeout"],
                "names": names["dns_names"], "addresses": names["ip_addresses"]},
                {"kind": "health", "name": "seal-status through the listener with the admin cert",
                 "wait_timeout": v["wait_timeout"]}]
            hint = _catalog.next_hint("server_tls", v.as_dict(), {"ca_cert": g("ca_cert")})
        elif self.phase == "healthcheck":
            v = _catalog.settings("healthcheck", self.get)
            host, port = _catalog.urlsplit(g("vault_url")).hostname, _catalog.urlsplit(g("vault_url")).port or 8200
            listener = self.planned_names(run, "server_tls")
            gates = [{"kind": "health", "name": "sys/health at %s" % g("vault_url"), "wait_timeout": v["wait_timeout"],
                      "interval": v["interval"]},
                     {"kind": "probe", "name": "listener %s" % g("vault_url"), "host": host, "port": port,
                      "server_name": g("tls_server_name"), "ca_cert": g("ca_cert"), "client_cert": g("admin_cert"),
                      "client_key": g("admin_key"), "http_path": v["http_path"], "expect_status": 200,
                      "wait_timeout": v["wait_timeout"], "interval": v["interval"],
                      "names": listener["dns_names"], "addresses": listener["ip_addresses"]}]
            endpoint = v["proxy_endpoint"] or {}
            if endpoint.get("port"):
                front = {"dns_names": [], "ip_addresses": []}
                for slot in self.planned_slots(run):
                    if slot.startswith("proxy_trust/frontend-"):
                        front = self.planned_names(run, slot)
                proxy = {"kind": "probe", "name": "proxy %s:%s" % (endpoint.get("host") or "127.0.0.1", endpoint["port"]),
                         "host": endpoint.get("host") or "127.0.0.1", "port": int(endpoint["port"]),
                         "server_name": g("tls_server_name"), "ca_cert": g("ca_cert"), "http_path": v["http_path"],
                         "expect_status": 200, "wait_timeout": v["wait_timeout"], "interval": v["interval"],
                         "names": front["dns_names"], "addresses": front["ip_addresses"]}
                if v["proxy_client_cert"]:
                    proxy.update(client_cert=g("admin_cert"), client_key=g("admin_key"))
                gates.append(proxy)
            hint = None
        else:
            return {"changed": False, "msg": "%s has no gate on the admin host" % self.phase}
        params = {"phase": self.phase, "step": "gate", "connection": conn, "gates": gates,
                  "ca_bundle": run.ca_bundle()}
        found = self.engine_on(run, params)
        run.write(dict(found, host=self.host, started=self.started), "phase", self.phase, "gate")
        failure = found.get("failure")
        if failure:
            failure = dict(failure)
            if self.phase == "healthcheck":
                klass = failure["failure_class"]
                failure["msg"] = "%s: %s: %s" % (failure["gate"], klass, failure["msg"])
                failure["hint"] = HEALTH_MEANINGS.get(klass, failure.get("hint") or "read the message above")
            elif hint:
                failure["hint"] = "; ".join(x for x in (failure.get("hint"), "then check " + hint) if x)
            self.fail_step(run, failure)
        return {"changed": False, "gates": found.get("gates"),
                "msg": "gates passed: %s" % ", ".join(x["name"] for x in found.get("gates") or [])}

    @staticmethod
    def planned_slots(run):
        return [r["slot"] for plan in run.plans().values() for r in plan.get("slots") or []]

    @staticmethod
    def planned_names(run, slot):
        """{dns_names, ip_addresses} the plan gave a slot (every host's plan), empty when unknown."""
        for plan in run.plans().values():
            for record in plan.get("slots") or []:
                if record["slot"] == slot and record.get("names"):
                    return record["names"]
        return {"dns_names": [], "ip_addresses": []}

    def step_rollback(self):
        """A host of the failed phase: put back what this run changed there, reload, prove."""
        run = self.run_state()
        if self.check_mode:
            return {"changed": False, "msg": "check mode: nothing to roll back"}
        if self.phase not in _catalog.phases_of_host(self.host, self.groups):
            return {"changed": False, "skipped": True, "skip_reason": "no %s work on %s" % (self.phase, self.host)}
        applied = run.read("phase", self.phase, "apply", self.host)
        if applied is None:
            return {"changed": False, "msg": "%s: nothing of %s was applied here" % (self.host, self.phase)}
        work = self.work()
        signed = run.signed()
        plan = run.read("plan", self.host) or {}
        differed = dict((b["bundle"], b["differs"]) for b in plan.get("bundles") or [])
        written = dict((b["bundle"], b["changed"]) for b in applied.get("bundles") or [])
        slots = [dict(s, new_serial=signed[s["name"]]["serial"]) if s["name"] in signed else s
                 for s in work["slots"]]
        bundles = []
        for bundle in work["bundles"]:
            if written.get(bundle["name"]):
                how = "restore"
            elif not differed.get(bundle["name"], True):
                how = "repair"
            else:
                how = "leave"
            bundles.append(dict(bundle, rollback=how))
        proofs = [dict(p, expect_serial=None, wait_timeout=min(float(p.get("wait_timeout") or 0), 10))
                  for p in self.resolve_gates(run, work["gates"]) if p["kind"] in PROOF_KINDS]
        params = {"phase": self.phase, "step": "rollback", "slots": slots, "bundles": bundles, "proofs": proofs,
                  "ca_bundle": run.ca_bundle(), "service": SERVICE}
        if self.phase == "admin_cert":
            params["connection"] = self.connection()
        try:
            found = self.engine(params)
        except AnsibleConnectionFailure as exc:
            found = {"problems": [{"gate": "rollback", "failure_class": "unreachable", "msg": str(exc)}]}
        run.write(dict(found, host=self.host, started=self.started), "phase", self.phase, "rollback", self.host)
        restored = [d["slot"] for d in found.get("slots") or [] if d.get("changed")]
        return {"changed": bool(found.get("changed")), "proofs": found.get("proofs"), "problems": found.get("problems"),
                "msg": "%s: %s" % (self.host, ("restored " + ", ".join(restored)) if restored else "no slot to restore")}

    # ------------------------------------------------------------ restart

    def step_decide(self):
        """Controller: restart Vault (and the proxy) only when a phase said so, or always."""
        run = self.run_state()
        v = _catalog.settings("restart", self.get)
        reasons = []
        for phase in _catalog.ROTATING_PHASES:
            for applied in run.all("phase", phase, "apply").values():
                reasons += [r for r in applied.get("restart_reasons") or [] if r not in reasons]
        required = bool(reasons)
        do = v["vault_mode"] == "always" or (v["vault_mode"] == "auto" and required)
        decision = {"do": do and not self.check_mode, "required": required, "reasons": reasons, "mode": v["vault_mode"]}
        run.write(dict(decision, started=self.started), "phase", "restart", "decide")
        if required and not do:
            self._display.warning("a restart is required (%s) but vault_rotate_restart_vault=never: the listener keeps "
                                  "its old client CA file until %s is restarted (and unsealed)" % (
                                      "; ".join(reasons), v["vault_unit"]))
        return {"changed": False, "do": decision["do"], "required": required, "reasons": reasons,
                "msg": "restart: %s" % ("yes (%s)" % ("; ".join(reasons) or "vault_rotate_restart_vault=always")
                                        if do else "no (%s)" % ("nothing requires it" if not required else
                                                                "required but vault_rotate_restart_vault=never"))}

    def restart_apply(self, run):
        v = _catalog.settings("restart", self.get)
        units = []
        if self.host in (self.groups.get("vault_proxies") or []) and v["proxy"]:
            units.append(v["proxy_unit"])
        if self.host in (self.groups.get("vault_servers") or []):
            units.append(v["vault_unit"])
        if not units:
            return {"changed": False, "skipped": True, "skip_reason": "no unit to restart on %s" % self.host}
        params = {"phase": "restart", "step": "apply", "restart": units, "service": SERVICE}
        found = self.engine_on(run, params, gate="restart")
        run.write(dict(found, host=self.host, started=self.started, units_restarted=units), "phase", "restart", "apply",
                  self.host)
        if found.get("failure"):
            self.fail_step(run, dict(found["failure"], hint="check the unit logs of %s, then run playbooks/healthcheck.yml"
                                     % ", ".join(units)), gate="restart")
        return {"changed": True, "msg": "restarted %s on %s" % (", ".join(units), self.host)}

    def step_ready(self):
        """Admin host: wait, bounded, until the restarted Vault is ready; unseal it with the keys given."""
        run = self.run_state()
        v = _catalog.settings("restart", self.get)
        params = {"phase": "restart", "step": "ready", "connection": self.connection(),
                  "unseal_keys": v["unseal_keys"] or [], "wait_timeout": v["wait_timeout"],
                  "interval": v["wait_interval"], "sealed_grace": v["sealed_grace"]}
        found = self.engine_on(run, params, gate="restart")
        began = None
        ran = None
        for applied in run.all("phase", "restart", "apply").values():
            for call in applied.get("service_calls") or []:
                if call["unit"] == v["vault_unit"]:
                    began = call["at"]
                    ran = call["at"] + call["seconds"]
        record = dict(found, host=self.host, started=self.started, restart_began=began, unit_returned=ran)
        run.write(record, "phase", "restart", "ready")
        if found.get("failure"):
            self.fail_step(run, found["failure"], gate="restart")
        now = found.get("ready_at") or time.time()
        began = began or self.started
        return {"changed": bool(found.get("unsealed")), "ready_at": found.get("ready_at"),
                "msg": "Vault ready %.2f s after the restart began%s" % (
                    now - began, " (unsealed with the provided keys)" if found.get("unsealed") else "")}

    # ------------------------------------------------------------ conclude

    def step_stop(self):
        """Controller, in a rescue: report the failed phase, release the lock, stop the run.
        Every host of the play enters the rescue (any_errors_fatal); whichever runs this
        finds the failure in the run."""
        return self.step_conclude(stopping=True)

    def step_conclude(self, stopping=False):
        """Controller: record the phase as passed (or skipped); on a failure, report and stop the run."""
        error = self._task.args.get("error") or {}
        run = self.run_state(required=not stopping)
        if run is None:
            # The run never opened (refused by an interlock or the lock): nothing to record.
            return {"failed": True, "failure_class": error.get("failure_class") or "unknown",
                    "msg": error.get("msg") or "the run could not start (see the failed task above)"}
        failures = sorted(run.all("phase", self.phase, "failure").values(), key=lambda f: f.get("written") or 0)
        opened = [run.meta.get("started_epoch") or self.started] if self.phase == "preflight" else []
        started = min([f.get("started") or self.started for f in failures] + opened +
                      [r.get("started") or self.started for r in self.phase_records(run)] + [self.started])
        ended = time.time()
        entry = {"phase": self.phase, "host": self.host, "started": _report.to_iso8601(started),
                 "ended": _report.to_iso8601(ended), "duration_s": round(ended - started, 3), "ended_epoch": ended}
        if not failures and not stopping:
            gate, msg, extra = self.passed(run)
            entry.update(gate=gate, failure_class=None, msg=msg, extra=extra)
            run.write(entry, "phase", self.phase, "result")
            if self.phase == "healthcheck":
                self.record_batched(run, entry)
            return {"changed": False, "msg": "phase %s %s: %s" % (self.phase, gate, msg)}
        if failures:
            first = failures[0]
            klass = first.get("failure_class") or "unknown"
            label = first.get("gate_label") or self.phase
            text, hint = first.get("msg") or "the gate did not hold", first.get("hint")
        else:
            klass = error.get("failure_class") or "unknown"
            label = self.phase
            text = " ".join(str(error.get("msg") or "a step of %s failed (see the failed task above)" % self.phase)
                            .split())
            hint = error.get("hint") or "read the message above, fix it, rerun"
            if ". Next: " in text:
                text, hint = text.split(". Next: ", 1)
        line = "GATE %s FAILED (%s): %s. Next: %s" % (label, klass, text.rstrip("."),
                                                      hint or "read the message above, fix it, rerun")
        entry.update(gate="failed", failure_class=klass, msg=_report.scrub(text, 600))
        run.write(entry, "phase", self.phase, "result")
        done = _run.finish(run, _catalog.settings("report", self.get)["dir"], status="failed", msg=line,
                           check_mode=self.check_mode)
        return {"failed": True, "failure_class": klass, "msg": line, "report": done["summary_line"]}

    @staticmethod
    def record_batched(run, healthcheck):
        """A run where the plan had nothing due skips the rotating phases: the healthcheck ran
        their gates in one batched verification, and the report says so."""
        due = (run.read("due") or {}).get("due") or {}
        if not due.get("batch"):
            return
        for phase in _catalog.ROTATING_PHASES:
            if run.read("phase", phase, "result") is None and phase in run.meta.get("phases", []):
                run.write(dict(healthcheck, phase=phase, gate="passed", duration_s=0.0,
                               msg="nothing due: its gates were checked by the healthcheck's batched verification",
                               extra={}), "phase", phase, "result")

    def phase_records(self, run):
        records = list(run.all("phase", self.phase, "apply").values())
        records += [r for r in (run.read("phase", self.phase, "gate"), run.read("phase", self.phase, "mappings"),
                                run.read("phase", self.phase, "decide"), run.read("phase", self.phase, "ready")) if r]
        return records

    def passed(self, run):
        """(gate, msg, extra) of a phase that held."""
        if self.phase == "preflight":
            return "passed", ("plan only (check mode)" if self.check_mode
                              else "interlocks, units, Vault and admin identity ok"), {}
        if self.phase == "restart":
            decision = run.read("phase", "restart", "decide") or {}
            if not decision.get("do"):
                why = ("required but vault_rotate_restart_vault=never: " + "; ".join(decision.get("reasons") or [])
                       if decision.get("required") else "not required (no file read only at start changed)")
                return "skipped", why, {}
            ready = run.read("phase", "restart", "ready") or {}
            began = ready.get("restart_began") or ready.get("started")
            at = ready.get("ready_at") or ready.get("written")
            readiness = round(at - began, 2) if at and began else None
            after = round(at - ready["unit_returned"], 2) if at and ready.get("unit_returned") else None
            extra = {"restart": "vault restarted: " + ("; ".join(decision.get("reasons") or [])
                                                       or "vault_rotate_restart_vault=always"),
                     "restart_readiness_s": readiness, "restart_ready_after_running_s": after,
                     "restart_tls_attempts": (ready.get("tls") or {}).get("attempts"),
                     "restart_unsealed_by_run": bool(ready.get("unsealed")),
                     "restart_ready_at": ready.get("ready_at")}
            return "passed", "ready %s s after the restart began (%s s after the unit ran)%s" % (
                readiness, after, " (unsealed with the provided keys)" if ready.get("unsealed") else ""), extra
        if self.phase == "healthcheck":
            checked = (run.read("phase", "healthcheck", "gate") or {}).get("gates") or []
            gates = dict((x["kind"] + ":" + x["name"], x) for x in checked)
            probes = [x for k, x in gates.items() if k.startswith("probe:")]
            health = [x for k, x in gates.items() if k.startswith("health:")]
            listener = probes[0] if probes else {}
            proxy = probes[1] if len(probes) > 1 else None
            verified = run.all("phase", "healthcheck", "verify").values()
            rechecked = sum(len(v.get("gates") or []) for v in verified)
            earlier = sum(len(v.get("proven_earlier") or []) for v in verified)
            unvisited = sum(1 for v in verified if v.get("not_visited"))
            msg = "unsealed, HTTP %s; listener serves %s (%s, %.1f days left)%s; host gates: %d checked%s%s" % (
                (health[0] if health else {}).get("status_code"), listener.get("serial"), listener.get("tls_version"),
                float(listener.get("days_left") or 0),
                "; proxy serves %s, seal-status %s" % (proxy.get("serial"), proxy.get("http_status")) if proxy
                else "; no proxy configured", rechecked,
                ", %d proven by this run's phases with nothing restarted since" % earlier if earlier else "",
                " (%d host(s) not visited: the phases proved every gate there)" % unvisited if unvisited else "")
            return "passed", msg, {"listener_serial": listener.get("serial"),
                                   "listener_not_after": listener.get("not_after"),
                                   "proxy_serial": proxy.get("serial") if proxy else None,
                                   "host_gates_checked": rechecked, "host_gates_proven_earlier": earlier,
                                   "hosts_not_visited": unvisited}
        applied = run.all("phase", self.phase, "apply")
        rotated = [s["slot"] for a in applied.values() for s in a.get("slots") or [] if s["action"] == "rotated"]
        gates = [x["name"] + (" (by the agent's own login)" if x.get("proven_by") else "")
                 for a in applied.values() for x in a.get("gates") or []]
        gates += [x["name"] for x in (run.read("phase", self.phase, "gate") or {}).get("gates") or []]
        written = [m["name"] for m in (run.read("phase", self.phase, "mappings") or {}).get("mappings") or []
                   if m.get("changed")]
        msg = "%s; %sgates passed: %s" % (
            "rotated " + ", ".join(rotated) if rotated else "nothing due",
            "mappings written: %s; " % ", ".join(written) if written else "",
            ", ".join(gates) or "none")
        return "passed", msg, {}
