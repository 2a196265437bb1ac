"""Per-environment run lock for privsec.vault_rotate, on the controller.

    vault_rotate_lock.py acquire LOCK_DIR RUN_ID ENV [--break-stale]
    vault_rotate_lock.py release LOCK_DIR RUN_ID
    vault_rotate_lock.py show LOCK_DIR

Acquire is atomic: the owner file is written into a private temp directory,
which is then renamed onto LOCK_DIR. rename(2) of a directory onto an existing
non-empty directory fails, so exactly one run wins and the lock never exists
without its owner file. Prints one JSON object; exit 0 unless the call itself
was wrong (the caller decides what a held lock means).
"""
import datetime
import getpass
import json
import os
import shutil
import socket
import sys

OWNER = "owner.json"


def _ansible_pid():
    """pid of the ansible-playbook process that runs us (walk up /proc), else our parent.

    The nearest ancestor named ansible-playbook is the per-task worker fork (same
    cmdline), gone as soon as the task ends: that made every lock look stale at
    once. Keep walking: the topmost ansible-playbook of the chain is the run."""
    pid = os.getppid()
    found = None
    seen = 0
    while pid > 1 and seen < 20:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                argv = fh.read().split(b"\0")
            with open("/proc/%d/stat" % pid) as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if any(os.path.basename(a.decode(errors="replace")).startswith("ansible-playbook") for a in argv[:3]):
            found = pid
        elif found:
            break
        pid = parent
        seen += 1
    return found or os.getppid()


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def _read_owner(lock_dir):
    try:
        with open(os.path.join(lock_dir, OWNER)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _holder_state(owner):
    """Add `stale`: the holder ran on this host and its pid is gone."""
    if owner is None:
        return {"owner": None, "stale": False}
    stale = owner.get("host") == socket.gethostname() and not _pid_alive(owner.get("pid"))
    return {"owner": owner, "stale": bool(stale)}


def acquire(lock_dir, run_id, env, break_stale=False):
    parent = os.path.dirname(os.path.abspath(lock_dir))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    owner = {
        "run_id": run_id,
        "env": env,
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "pid": _ansible_pid(),
        "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "awx_job_id": os.environ.get("JOB_ID") or None,
    }
    tmp = "%s.tmp-%d" % (lock_dir, os.getpid())
    os.mkdir(tmp, 0o755)
    try:
        with open(os.path.join(tmp, OWNER), "w") as fh:
            json.dump(owner, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        for attempt in (1, 2):
            try:
                os.rename(tmp, lock_dir)
                return {"acquired": True, "changed": True, "lock": lock_dir, "owner": owner}
            except OSError:
                current = _read_owner(lock_dir)
                if current and current.get("run_id") == run_id:
                    return {"acquired": True, "changed": False, "lock": lock_dir, "owner": current}
                state = _holder_state(current)
                if attempt == 1 and break_stale and state["stale"]:
                    shutil.rmtree(lock_dir, ignore_errors=True)
                    continue
                result = {"acquired": False, "changed": False, "lock": lock_dir}
                result.update(state)
                return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"acquired": False, "changed": False, "lock": lock_dir, "owner": None, "stale": False}


def release(lock_dir, run_id):
    current = _read_owner(lock_dir)
    if not os.path.isdir(lock_dir):
        return {"released": False, "changed": False, "lock": lock_dir, "reason": "not held"}
    if current is not None and current.get("run_id") != run_id:
        return {"released": False, "changed": False, "lock": lock_dir,
                "reason": "held by another run", "owner": current}
    # Rename first so a concurrent acquire never sees a half-removed lock.
    doomed = "%s.released-%d" % (lock_dir, os.getpid())
    os.rename(lock_dir, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return {"released": True, "changed": True, "lock": lock_dir, "owner": current}


def main(argv):
    if len(argv) >= 4 and argv[0] == "acquire":
        result = acquire(argv[1], argv[2], argv[3], "--break-stale" in argv[4:])
    elif len(argv) == 3 and argv[0] == "release":
        result = release(argv[1], argv[2])
    elif len(argv) == 2 and argv[0] == "show":
        result = {"lock": argv[1], "held": os.path.isdir(argv[1])}
        result.update(_holder_state(_read_owner(argv[1])))
    else:
        sys.stderr.write(__doc__)
        return 2
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
