# -*- coding: utf-8 -*-
# Copyright: privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-slot and per-phase results of a rotation run turned into the plan
table, the JSON report and the Markdown report; the environment interlock.

Controller side (the action plugins and the filters of plugins/filter/report.py).
Every output is built from an explicit allow-list of fields, so a result that
happens to carry PEM, a key or a token never reaches a report.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re

from ansible.errors import AnsibleFilterError

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _timing

SLOT_FIELDS = ("slot", "phase", "host", "cert_path", "decision", "action", "reason_text")
CERT_FIELDS = ("serial", "not_after", "fingerprint_sha256")
PHASE_FIELDS = ("phase", "started", "ended", "duration_s", "gate", "failure_class", "msg")
PHASE_ORDER = (
    "preflight", "admin_cert", "server_tls", "agent_login", "app_leaf",
    "proxy_trust", "restart", "healthcheck",
)
# Anything that looks like key material or a Vault token is cut out of free text.
_SECRET_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|$)"
    r"|\b(hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_-]{20,}",
    re.DOTALL,
)


def _scrub(value, limit=500):
    """Text safe for a report: no PEM blocks, no token-like strings, bounded."""
    if value is None:
        return None
    text = _SECRET_RE.sub("[redacted]", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


scrub = _scrub


def _parse_time(value):
    """ISO 8601 (with Z or offset), epoch seconds or a datetime -> aware UTC datetime; None when unparsable."""
    if value is None or value == "":
        return None
    try:
        return _timing.parse_time(value)
    except (ValueError, TypeError, OverflowError):
        return None


def _iso(value):
    parsed = _parse_time(value)
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ") if parsed else None


def _cert(value):
    if not isinstance(value, dict):
        return None
    out = dict((k, _scrub(value.get(k), 200)) for k in CERT_FIELDS)
    if isinstance(value.get("lifetime_days"), (int, float)) and not isinstance(value["lifetime_days"], bool):
        out["lifetime_days"] = round(float(value["lifetime_days"]), 2)
    return out


def _slot(value):
    if not isinstance(value, dict):
        raise AnsibleFilterError("slot result must be a dict, got %r" % type(value).__name__)
    out = dict((k, _scrub(value.get(k))) for k in SLOT_FIELDS)
    out["reasons"] = [_scrub(r, 100) for r in (value.get("reasons") or [])]
    out["old"] = _cert(value.get("old"))
    out["new"] = _cert(value.get("new"))
    return out


def _phase(value):
    if not isinstance(value, dict):
        raise AnsibleFilterError("phase result must be a dict, got %r" % type(value).__name__)
    out = dict((k, _scrub(value.get(k))) for k in PHASE_FIELDS)
    out["started"] = _iso(value.get("started"))
    out["ended"] = _iso(value.get("ended"))
    try:
        out["duration_s"] = round(float(value.get("duration_s")), 3)
    except (TypeError, ValueError):
        out["duration_s"] = None
    return out


def _days_left(not_after, now=None):
    parsed = _parse_time(not_after)
    if parsed is None:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return (parsed - now).total_seconds() / 86400.0


def _human_left(days):
    if days is None:
        return "-"
    if days < 0:
        return "EXPIRED"
    if days < 2:
        return "%.1fh" % (days * 24)
    return "%.0fd" % days


def _slot_sort_key(slot):
    phase = slot.get("phase") or ""
    rank = PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER)
    return (rank, slot.get("slot") or "", slot.get("host") or "")


def _short_serial(serial, width=23):
    serial = serial or "-"
    return serial if len(serial) <= width else serial[: width - 3] + "..."


def plan_rows(slot_results):
    """The plan as a list of dicts (one per slot), in phase order."""
    rows = []
    for slot in sorted((_slot(s) for s in slot_results or []), key=_slot_sort_key):
        old = slot["old"] or {}
        days = _days_left(old.get("not_after"))
        rows.append({
            "slot": slot["slot"] or "-",
            "phase": slot["phase"] or "-",
            "host": slot["host"] or "-",
            "serial": old.get("serial") or "-",
            "not_after": old.get("not_after") or "-",
            "left": _human_left(days),
            "decision": slot["decision"] or "-",
            "reason": slot["reason_text"] or ", ".join(slot["reasons"]) or "-",
        })
    return rows


def _table(headers, rows):
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    line = "  ".join(["%-*s"] * len(headers))
    out = [line % tuple(x for pair in zip(widths, headers) for x in pair)]
    out.append("  ".join("-" * w for w in widths))
    for row in rows:
        out.append(line % tuple(x for pair in zip(widths, row) for x in pair))
    return "\n".join(s.rstrip() for s in out)


def plan_table(slot_results):
    """Render the rotation plan: slot, host, current serial, expiry, keep/rotate, reason."""
    rows = plan_rows(slot_results)
    if not rows:
        return "(no slots inspected)"
    body = _table(
        ("PHASE", "SLOT", "HOST", "CURRENT SERIAL", "EXPIRES (UTC)", "LEFT", "DECISION", "REASON"),
        [(r["phase"], r["slot"], r["host"], _short_serial(r["serial"]), r["not_after"],
          r["left"], r["decision"].upper(), r["reason"]) for r in rows],
    )
    due = sum(1 for r in rows if r["decision"] == "rotate")
    return "%s\n%d slot(s): %d to rotate, %d to keep" % (body, len(rows), due, len(rows) - due)


def report_build(slot_results, phase_results=None, meta=None):
    """The JSON report: meta (env, run id, status...), slots, phases, summary."""
    meta = dict(meta or {})
    slots = sorted((_slot(s) for s in slot_results or []), key=_slot_sort_key)
    phases = [_phase(p) for p in phase_results or []]
    failed = [p for p in phases if p["gate"] == "failed"]
    status = meta.get("status") or "auto"
    if status == "auto":
        status = "failed" if failed else "success"
    actions = {}
    for slot in slots:
        actions[slot["action"] or "unknown"] = actions.get(slot["action"] or "unknown", 0) + 1
    report = {
        "format": "privsec.vault_rotate.report/v1",
        "env": _scrub(meta.get("env")),
        "run_id": _scrub(meta.get("run_id")),
        "status": _scrub(status),
        "check_mode": bool(meta.get("check_mode", False)),
        "started": _iso(meta.get("started")),
        "written": _iso(meta.get("written")) or _iso(datetime.datetime.now(datetime.timezone.utc)),
        "controller": _scrub(meta.get("controller")),
        "user": _scrub(meta.get("user")),
        "msg": _scrub(meta.get("msg")),
        "summary": {
            "slots": len(slots),
            "rotated": sum(1 for s in slots if s["action"] == "rotated"),
            "kept": sum(1 for s in slots if s["action"] == "kept"),
            "restored": sum(1 for s in slots if s["action"] == "restored"),
            "planned": sum(1 for s in slots if s["action"] == "planned"),
            "actions": actions,
            "phases": len(phases),
            "gates_passed": sum(1 for p in phases if p["gate"] == "passed"),
            "gates_failed": len(failed),
            "failed_phase": failed[0]["phase"] if failed else None,
        },
        "phases": phases,
        "slots": slots,
    }
    extra = meta.get("extra")
    if isinstance(extra, dict):
        report["extra"] = dict((str(k), _scrub(v)) for k, v in extra.items())
    return report


def _md_cell(value):
    return ("-" if value in (None, "") else str(value)).replace("|", "\\|").replace("\n", " ")


def _md_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
    return out


def report_markdown(report):
    """Render the JSON report (from report_build) as Markdown for people."""
    if not isinstance(report, dict):
        raise AnsibleFilterError("report_markdown expects the dict from report_build")
    summary = report.get("summary", {})
    lines = [
        "# Vault certificate rotation: %s (%s)" % (report.get("env"), str(report.get("status")).upper()),
        "",
        "- run: `%s`" % report.get("run_id"),
        "- started: %s, written: %s" % (report.get("started") or "-", report.get("written") or "-"),
        "- controller: %s, user: %s" % (report.get("controller") or "-", report.get("user") or "-"),
        "- slots: %s (rotated %s, kept %s, restored %s, not reached %s); gates passed %s, failed %s"
        % (summary.get("slots"), summary.get("rotated"), summary.get("kept"), summary.get("restored"),
           summary.get("planned"), summary.get("gates_passed"), summary.get("gates_failed")),
    ]
    if report.get("check_mode"):
        lines.append("- check mode: nothing was changed")
    if report.get("msg"):
        lines.append("- message: %s" % report["msg"])
    for key, value in sorted((report.get("extra") or {}).items()):
        lines.append("- %s: %s" % (key, value))
    lines += ["", "## Phases", ""]
    lines += _md_table(
        ("phase", "gate", "duration (s)", "failure class", "message"),
        [(p.get("phase"), p.get("gate"), p.get("duration_s"), p.get("failure_class"), p.get("msg"))
         for p in report.get("phases", [])],
    )
    lines += ["", "## Certificates", ""]
    rows = []
    for s in report.get("slots", []):
        old = s.get("old") or {}
        new = s.get("new") or {}
        rows.append((
            s.get("phase"), s.get("slot"), s.get("host"), s.get("action"),
            old.get("serial"), old.get("not_after"), new.get("serial"), new.get("not_after"),
            new.get("fingerprint_sha256") or old.get("fingerprint_sha256"),
            s.get("reason_text") or ", ".join(s.get("reasons") or []),
        ))
    lines += _md_table(
        ("phase", "slot", "host", "action", "old serial", "old not_after", "new serial",
         "new not_after", "fingerprint (sha256)", "reason"),
        rows,
    )
    return "\n".join(lines) + "\n"


def env_interlock(host_envs, groups, extra_env_groups=None, admin_group="vault_admin"):
    """Check that the selected hosts form exactly one environment.

    host_envs: {selected host: its vault_rotate_env ('' when undefined)};
    groups: the inventory `groups`. Returns {env, admin_host, problems}: env is
    the one environment (None when there is not exactly one), problems a list
    of sentences an operator can act on (empty = the interlock passes).
    """
    host_envs = dict(host_envs or {})
    groups = dict(groups or {})
    problems = []
    if not host_envs:
        return {"env": None, "admin_host": None, "problems": ["no host selected"]}
    missing = sorted(h for h, e in host_envs.items() if not e)
    if missing:
        problems.append(
            "vault_rotate_env is not set for %s: every host must be in an environment group "
            "(prod, lab, ...) whose group_vars set vault_rotate_env" % ", ".join(missing))
    by_env = {}
    for host, env in host_envs.items():
        if env:
            by_env.setdefault(str(env), []).append(host)
    if len(by_env) > 1:
        problems.append(
            "the selected hosts span several environments (%s): select exactly one with -l <env> "
            "or load one inventory with -i" % "; ".join(
                "%s: %d host(s)" % (e, len(h)) for e, h in sorted(by_env.items())))
    env_groups = set(by_env) | set(extra_env_groups or [])
    outside = {}
    for host, env in sorted(host_envs.items()):
        member_of = sorted(g for g in env_groups if host in (groups.get(g) or []))
        if env and host not in (groups.get(env) or []):
            key = (env, ", ".join(member_of) or "no environment group")
            outside.setdefault(key, []).append(host)
        if len(member_of) > 1:
            problems.append("%s is in several environment groups (%s)" % (host, ", ".join(member_of)))
    for (env, member_of), hosts in sorted(outside.items()):
        problems.append(
            "vault_rotate_env=%s but host(s) %s are not in inventory group %s (they are in: %s): "
            "the limit and the variables disagree" % (env, ", ".join(hosts), env, member_of))
    env = next(iter(by_env)) if len(by_env) == 1 else None
    admin_host = None
    if env is not None and not outside and admin_group:
        admins = [h for h in (groups.get(admin_group) or []) if h in host_envs and h in (groups.get(env) or [])]
        if len(admins) != 1:
            problems.append(
                "exactly one host of group %s in %s must be selected, found %d (%s)"
                % (admin_group, env, len(admins), ", ".join(admins) or "none"))
        else:
            admin_host = admins[0]
    return {"env": env, "admin_host": admin_host, "problems": problems}


def to_epoch(value):
    """ISO 8601 string, datetime or epoch -> epoch seconds (float); None when unparsable."""
    parsed = _parse_time(value)
    return parsed.timestamp() if parsed else None


def to_iso8601(value):
    """ISO 8601 string, datetime or epoch -> `YYYY-MM-DDTHH:MM:SSZ` (UTC); None when unparsable."""
    return _iso(value)


def failure(result):
    """The failure of a task result: {failed, failure_class, msg, hint, gate}."""
    result = result if isinstance(result, dict) else {}
    failed = bool(result.get("failed") or result.get("failure_class") or result.get("unreachable"))
    msg = " ".join(str(result.get("msg") or "").split())
    hint = result.get("hint")
    if ". Next: " in msg:
        msg, next_part = msg.split(". Next: ", 1)
        hint = hint or next_part
    gate = None
    match = re.match(r"^GATE (\S+) FAILED \((\w+)\): (.*)$", msg)
    klass = result.get("failure_class")
    if match:
        gate, klass, msg = match.group(1), klass or match.group(2), match.group(3)
    if result.get("unreachable") and not klass:
        klass = "unreachable"
    return {"failed": failed, "failure_class": (klass or "unknown") if failed else None,
            "msg": _scrub(msg, 1000) if failed else None, "hint": _scrub(hint, 1000) if failed else None,
            "gate": gate}
