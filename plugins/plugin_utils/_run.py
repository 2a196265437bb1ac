# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run on the controller: its lock, its journal, its report.

A run is a folder. Outside check mode it IS the per-environment lock:
``<lock_dir>/vault_rotate-<env>.lock`` made atomically (a private temp folder
holding owner.json renamed onto it: exactly one run wins, and the lock never
exists without its owner). In check mode it is a private temp folder.

Every step of the run writes what it found and did into that folder, one
JSON file per (step, phase, host), written atomically: the plan of each host,
the signed certificates (public material only), what each phase installed,
its gates. The steps that come later read it from there; the report is built
from it, also after a failure; releasing the lock removes it.

Controller side only (the action plugins of this collection).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import getpass
import glob
import json
import os
import shutil
import socket
import tempfile
import time

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _timing

OWNER = "owner.json"


def utcnow_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_user():
    """Who runs the controller: the login name (LOGNAME, USER, the password database), or
    'uid N' when there is none (an execution environment under a random UID without a
    passwd entry, where getpass.getuser() fails): a run must not fail for lack of a name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):
        return "uid %d" % os.getuid()


def ansible_pid():
    """pid of the ansible-playbook process of this run: the topmost ansible-playbook
    among our ancestors (every task runs in a forked worker of the same name)."""
    pid = os.getpid()
    found = None
    for _hop in range(20):
        if pid <= 1:
            break
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                argv = fh.read().split(b"\0")
            with open("/proc/%d/stat" % pid) as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if any(os.path.basename(a.decode("utf-8", "replace")).startswith("ansible-playbook") for a in argv[:3]):
            found = pid
        elif found:
            break
        pid = parent
    return found or os.getppid()


def process_started(pid):
    """Start time of a process (clock ticks since boot, /proc/<pid>/stat), or None: with the pid
    it names one process, even after the pid is reused."""
    try:
        with open("/proc/%d/stat" % int(pid)) as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def read_json(path, default=None):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def write_json(path, data):
    """Atomically (temp file in the same folder, fsync, rename)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, 0o700, exist_ok=True)  # workers of several hosts may create it at once
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            # dumps, not dump: json.dump streams through the pure-Python encoder (~3x slower
            # here), and every host writes records in every step.
            fh.write(json.dumps(data, indent=1, sort_keys=True, default=str))
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- the lock

def lock_path(lock_dir, env):
    return os.path.join(lock_dir, "vault_rotate-%s.lock" % env)


def holder(path):
    """{owner, stale}: stale = the holder ran on this host and its process is gone."""
    owner = read_json(os.path.join(path, OWNER))
    if owner is None:
        return {"owner": None, "stale": False}
    stale = owner.get("host") == socket.gethostname() and not _pid_alive(owner.get("pid"))
    return {"owner": owner, "stale": bool(stale)}


def acquire(path, run_id, env, break_stale=False, extra=None):
    """{acquired, lock, owner, stale}; re-entrant for the same run id."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise RotateError("write_failed", "cannot create the lock folder %s: %s" % (parent, exc),
                          hint="set vault_rotate_lock_dir to a folder the controller user can write")
    pid = ansible_pid()
    owner = {"run_id": run_id, "env": env, "user": current_user(), "host": socket.gethostname(),
             "pid": pid, "pid_started": process_started(pid), "since": utcnow_iso(),
             "awx_job_id": os.environ.get("JOB_ID") or None}
    owner.update(extra or {})
    tmp = "%s.tmp-%d" % (path, os.getpid())
    os.mkdir(tmp, 0o700)
    try:
        write_json(os.path.join(tmp, OWNER), owner)
        for attempt in (1, 2):
            try:
                os.rename(tmp, path)
                return {"acquired": True, "changed": True, "lock": path, "owner": owner}
            except OSError:
                current = read_json(os.path.join(path, OWNER))
                if current and current.get("run_id") == run_id:
                    return {"acquired": True, "changed": False, "lock": path, "owner": current}
                state = holder(path)
                if attempt == 1 and break_stale and state["stale"]:
                    doomed = "%s.stale-%d" % (path, os.getpid())
                    os.rename(path, doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
                    continue
                result = {"acquired": False, "changed": False, "lock": path}
                result.update(state)
                return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"acquired": False, "changed": False, "lock": path, "owner": None, "stale": False}


def release(path, run_id):
    current = read_json(os.path.join(path, OWNER))
    if not os.path.isdir(path):
        return {"released": False, "lock": path, "reason": "not held"}
    if current is not None and current.get("run_id") != run_id:
        return {"released": False, "lock": path, "reason": "held by another run", "owner": current}
    # Rename first so a concurrent acquire never sees a half-removed lock.
    doomed = "%s.released-%d" % (path, os.getpid())
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return {"released": True, "lock": path, "owner": current}


def refused_message(env, state):
    owner = state.get("owner") or {}
    text = "Another rotation of %s holds the lock %s: run %s by %s@%s (pid %s%s) since %s." % (
        env, state["lock"], owner.get("run_id", "?"), owner.get("user", "?"), owner.get("host", "?"),
        owner.get("pid", "?"), ", AWX job %s" % owner["awx_job_id"] if owner.get("awx_job_id") else "",
        owner.get("since", "?"))
    if state.get("stale"):
        return text + (" That process is gone (stale lock): after checking that no rotation runs, remove %s or rerun "
                       "with -e preflight_lock_break_stale=true." % state["lock"])
    return text + " Wait for it to finish; remove %s by hand only if no rotation runs." % state["lock"]


def check_dir(env):
    """The run folder of a check-mode run of this ansible-playbook process (no lock)."""
    pid = ansible_pid()
    return os.path.join(tempfile.gettempdir(), "vault_rotate-check-%s-%d-%s" % (env, pid, process_started(pid)))


def own_run(folder):
    """The run record in ``folder`` when THIS ansible-playbook process opened it (still open), else None."""
    meta = read_json(os.path.join(folder, "run.json"))
    if meta is None or meta.get("closed"):
        return None
    owner = read_json(os.path.join(folder, OWNER))
    if owner is not None:
        pid = ansible_pid()
        if (owner.get("pid"), owner.get("pid_started"), owner.get("host")) != (
                pid, process_started(pid), socket.gethostname()):
            return None
    return meta


# ---------------------------------------------------------------- the journal

class Run(object):
    """A run folder and the records in it."""

    def __init__(self, meta):
        self.meta = meta
        self.dir = meta["dir"]

    @property
    def id(self):
        return self.meta["id"]

    def path(self, *parts):
        return os.path.join(self.dir, *[str(p).replace("/", "%") for p in parts])

    def write(self, data, *parts):
        data = dict(data)
        data.setdefault("written", time.time())
        write_json(self.path(*parts) + ".json", data)
        return data

    def read(self, *parts):
        return read_json(self.path(*parts) + ".json")

    def all(self, *parts):
        """Every record under a folder of the run, by name (host)."""
        out = {}
        for path in sorted(glob.glob(os.path.join(self.path(*parts), "*.json"))):
            data = read_json(path)
            if data is not None:
                out[os.path.basename(path)[:-5].replace("%", "/")] = data
        return out

    def exists(self):
        return os.path.isdir(self.dir) and os.path.exists(self.path("run") + ".json")

    # -- what the steps need of each other

    def issuers(self):
        return (self.read("vault") or {}).get("issuers") or {}

    def ca_bundle(self):
        return self.issuers().get("ca_bundle")

    def plans(self):
        return self.all("plan")

    def signed(self):
        return (self.read("signed") or {}).get("signed") or {}

    def phase_records(self, phase):
        return {"apply": self.all("phase", phase, "apply"), "gate": self.read("phase", phase, "gate"),
                "mappings": self.read("phase", phase, "mappings"), "rollback": self.all("phase", phase, "rollback"),
                "unreachable": self.all("phase", phase, "unreachable")}

    def results(self):
        """The concluded phases, in the order of the run."""
        found = [read_json(p) for p in glob.glob(os.path.join(self.dir, "phase", "*", "result.json"))]
        order = dict((phase, i) for i, phase in enumerate(PHASE_ORDER))
        return sorted([r for r in found if r],
                      key=lambda r: (order.get(r.get("phase"), len(order)), r.get("ended_epoch") or 0))


def new_run_id(awx_job_id=None):
    if awx_job_id:
        return "awx-%s" % awx_job_id
    return "%s-%d-%04x" % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                           ansible_pid(), int.from_bytes(os.urandom(2), "big"))


# ---------------------------------------------------------------- the report

def _lifetime_days(issued):
    """Days from not_before to not_after of an issued certificate (None when unknown)."""
    try:
        span = _timing.parse_time(issued["not_after"]) - _timing.parse_time(issued["not_before"])
    except (KeyError, TypeError, ValueError):
        return None
    return round(span.total_seconds() / 86400.0, 4)


def slot_records(run):
    """Every slot of the run, as the report lists it: planned, then what the phases did."""
    slots = {}
    for host, plan in run.plans().items():
        for record in plan.get("slots") or []:
            entry = dict((k, record.get(k)) for k in ("slot", "phase", "cert_path", "decision", "reasons",
                                                      "reason_text", "old"))
            entry.update(host=host, action="planned", new=None)
            slots[record["slot"]] = entry
    signed = run.signed()
    for phase in PHASE_ORDER:
        for host, applied in run.all("phase", phase, "apply").items():
            for done in applied.get("slots") or []:
                entry = slots.setdefault(done["slot"], {"slot": done["slot"], "phase": phase, "host": host,
                                                        "decision": "rotate", "reasons": [], "reason_text": "",
                                                        "old": None})
                entry["action"] = done["action"]
                if done["action"] == "rotated":
                    issued = signed.get(done["slot"]) or {}
                    entry["new"] = {"serial": done.get("serial") or issued.get("serial"),
                                    "not_after": issued.get("not_after"),
                                    "fingerprint_sha256": issued.get("fingerprint_sha256"),
                                    "lifetime_days": _lifetime_days(issued)}
        for undone in run.all("phase", phase, "rollback").values():
            for done in undone.get("slots") or []:
                if done.get("changed") and done["slot"] in slots:
                    slots[done["slot"]]["action"] = "restored"
    # A phase that passed without installing (nothing due, its gates checked in place or by
    # the healthcheck's batched verification) kept its slots.
    passed = set(r["phase"] for r in run.results() if r.get("gate") == "passed")
    for entry in slots.values():
        if entry["action"] == "planned" and entry["decision"] == "keep" and entry["phase"] in passed:
            entry["action"] = "kept"
    return list(slots.values())


PHASE_ORDER = ("preflight", "admin_cert", "server_tls", "agent_login", "app_leaf", "proxy_trust", "restart",
               "healthcheck")


def finish(run, report_dir, status="auto", msg="", check_mode=False, extra=None):
    """Build the report from the journal, write it (not in check mode), release the lock.

    Returns {report, files, summary_line, stats}."""
    from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _report

    meta = run.meta
    extra_lines = {}
    for result in run.results():
        extra_lines.update(result.get("extra") or {})
    extra_lines.update(extra or {})
    report = _report.report_build(slot_records(run), run.results(), {
        "env": meta.get("env"), "run_id": meta.get("id"), "status": status, "check_mode": check_mode,
        "started": meta.get("started"), "written": utcnow_iso(), "controller": meta.get("controller"),
        "user": meta.get("user"), "msg": msg, "extra": extra_lines})
    s = report["summary"]
    files = []
    if not check_mode:
        # One pair of files per run: <env>-<run id> (the id starts with the run's UTC start, or is awx-<job>).
        body = json.dumps(report, indent=2, sort_keys=False) + "\n"
        markdown = _report.report_markdown(report)
        files = [os.path.join(report_dir, "%s-%s.json" % (meta["env"], meta["id"])),
                 os.path.join(report_dir, "%s-%s.md" % (meta["env"], meta["id"]))]
        try:
            os.makedirs(report_dir, 0o750, exist_ok=True)
            for path, text in ((files[0], body), (os.path.join(report_dir, "latest.json"), body),
                               (files[1], markdown), (os.path.join(report_dir, "latest.md"), markdown)):
                _write_text(path, text, 0o640)
        except OSError as exc:
            raise RotateError("write_failed", "cannot write the report into %s: %s" % (report_dir, exc),
                              hint="set vault_rotate_report_dir to a folder the controller user can write")
        finally:
            if meta.get("lock_held"):
                release(meta["lock_path"], meta["id"])
    line = "Rotation of %s %s: %s rotated, %s kept, %s restored, gates passed %s, failed %s. %s" % (
        report["env"], str(report["status"]).upper(), s["rotated"], s["kept"], s["restored"], s["gates_passed"],
        s["gates_failed"], ("Report: %s" % files[1]) if files else "(check mode: no report written)")
    stats = {"env": report["env"], "run_id": report["run_id"], "status": report["status"], "summary": s,
             "json": files[0] if files else None, "markdown": files[1] if files else None}
    return {"report": report, "files": files, "summary_line": line, "stats": stats}


def _write_text(path, text, mode):
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
