#!/usr/bin/env python3
"""labctl: drive the local lab (see docs/development.md, "The lab").

    python tests/lab/labctl.py [--dir DIR] [--vault-port 22400] [--proxy-port 22300]
        [--frontend-port-base 22443] [--apps ncprd1,resume2me] CMD

CMD: up | down [--purge] | status [--json] | info | unseal
     | unit NAME status|start|stop|reload|restart
Env overrides: LAB_DIR, LAB_VAULT_PORT, LAB_PROXY_PORT, LAB_FRONTEND_PORT_BASE, LAB_APPS.
"""
import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# `unit NAME status|reload|restart` is what a rotation calls most (the command
# service backend): it answers from lab.json alone, without importing lab.py
# (which imports cryptography and ssl: 0.3 s a call on this machine). An agent's
# restart holds the lab lock shared and a lock of its own unit: agents of
# different apps restart side by side, as on separate hosts, while `up`/`down`
# (the lab lock, exclusive) wait for them. Anything else takes the slow path.
FAST_ACTIONS = ("status", "reload", "restart")
STOP_TIMEOUT = 10.0


def _fast_unit(argv):
    """Exit code of `unit NAME status|reload|restart`, or None when the slow path must answer."""
    if len(argv) < 3 or argv[-3] != "unit" or argv[-1] not in FAST_ACTIONS:
        return None
    directory = None
    for i, arg in enumerate(argv[:-3]):
        if arg == "--dir" and i + 1 < len(argv):
            directory = argv[i + 1]
    directory = directory or os.environ.get("LAB_DIR") or str(Path(__file__).resolve().parents[2] / ".lab" / "default")
    try:
        unit = json.loads((Path(directory) / "lab.json").read_text())["units"][argv[-2]]
        pid = int(Path(unit["pidfile"]).read_text().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            cmdline = fh.read().decode("utf-8", "replace")
    except (OSError, ValueError, KeyError):
        return None  # not running, or no lab: the slow path says it properly
    token = unit["argv"][2].split("=", 1)[-1]  # the config file (-config=... of bao, -c ... of nginx)
    if token not in cmdline:
        return None
    name, action = argv[-2], argv[-1]
    if action == "restart":
        return _fast_restart(directory, name, unit, pid) if unit["kind"] == "agent" else None
    if action == "status":
        print("%s: active (running); pid %d" % (name, pid))
        return 0
    if unit["kind"] == "nginx":
        argv_nginx = unit["argv"]
        test = subprocess.run([argv_nginx[0], "-c", argv_nginx[2], "-p", argv_nginx[4], "-e", "stderr", "-t", "-q"],
                              capture_output=True, text=True, check=False)
        if test.returncode != 0:
            print("labctl: %s: nginx config test failed, not reloaded:\n%s" % (name, test.stderr.strip()),
                  file=sys.stderr)
            return 1
    os.kill(pid, signal.SIGHUP)
    print("%s reloaded (SIGHUP)" % name)
    return 0


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _fast_restart(directory, name, unit, pid):
    """Stop and start one agent (no ports to wait for); None when the slow path must do it."""
    lab_lock = open(os.path.join(directory, ".labctl.lock"), "a")
    try:
        fcntl.flock(lab_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return None  # `up`, `down` or a slow unit action runs: the slow path waits for it
    unit_lock = open(os.path.join(directory, ".unit-%s.lock" % name), "a")
    fcntl.flock(unit_lock, fcntl.LOCK_EX)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = ""
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        killed = " (killed after %ss)" % STOP_TIMEOUT
        kill_deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < kill_deadline:
            time.sleep(0.01)
    Path(unit["pidfile"]).unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.setdefault("HOME", directory)
    with open(unit["log"], "ab") as log:
        log.write(("---- %s start %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), name)).encode())
        log.flush()
        proc = subprocess.Popen(unit["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=directory, env=env, start_new_session=True)
    tmp = "%s.tmp%d" % (unit["pidfile"], os.getpid())
    Path(tmp).write_text("%d\n" % proc.pid)
    os.replace(tmp, unit["pidfile"])
    time.sleep(0.05)
    if proc.poll() is not None:
        Path(unit["pidfile"]).unlink(missing_ok=True)
        print("labctl: %s exited at start (code %s); see %s" % (name, proc.returncode, unit["log"]), file=sys.stderr)
        return 1
    print("%s stopped%s; %s started (pid %d)" % (name, killed, name, proc.pid))
    return 0


def parse(argv):
    ap = argparse.ArgumentParser(prog="labctl.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="lab folder (env LAB_DIR; default <repo>/.lab/default)")
    ap.add_argument("--vault-port", type=int, help="listener port (env LAB_VAULT_PORT; default 22400)")
    ap.add_argument("--proxy-port", type=int, help="proxy port (env LAB_PROXY_PORT; default 22300)")
    ap.add_argument("--frontend-port-base", type=int,
                    help="first nginx frontend port (env LAB_FRONTEND_PORT_BASE; default 22443)")
    ap.add_argument("--apps", help="comma separated apps (env LAB_APPS; default ncprd1,resume2me)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="bring the lab up (idempotent)")
    d = sub.add_parser("down", help="stop what the lab started")
    d.add_argument("--purge", action="store_true", help="also remove the lab folder")
    s = sub.add_parser("status", help="state of the lab (exit 0 healthy, 3 not)")
    s.add_argument("--json", action="store_true")
    sub.add_parser("info", help="print DIR/lab.json")
    sub.add_parser("unseal", help="unseal the server with the stored key")
    u = sub.add_parser("unit", help="act on one unit, like systemctl")
    u.add_argument("name")
    u.add_argument("action", choices=["status", "start", "stop", "reload", "restart"])
    return ap.parse_args(argv)


def lab_lock(directory):
    """An exclusive flock on DIR/.labctl.lock; waits (up to 10 min) for another labctl."""
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / ".labctl.lock", "a")  # held until the process exits
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("labctl: waiting for another labctl on %s" % directory, file=sys.stderr)
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError("another labctl holds %s for more than 10 min" % (directory / ".labctl.lock"))
                time.sleep(0.1)
    return fh


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    fast = _fast_unit(argv)
    if fast is not None:
        return fast
    global EXIT_FAIL, EXIT_NOT_RUNNING, EXIT_OK, Lab, LabError, format_status
    from lab import EXIT_FAIL, EXIT_NOT_RUNNING, EXIT_OK, Lab, LabError, format_status
    args = parse(argv)
    try:
        lab = Lab(dir=args.dir, vault_port=args.vault_port, proxy_port=args.proxy_port,
                  frontend_port_base=args.frontend_port_base, apps=args.apps)
        if args.cmd in ("up", "down", "unseal", "unit") and (args.cmd == "up" or lab.dir.exists()):
            lab.lock = lab_lock(lab.dir)  # one labctl at a time changes a lab (held until exit)
        if args.cmd == "up":
            lab.up()
            return EXIT_OK
        if args.cmd == "down":
            lab.down(purge=args.purge)
            return EXIT_OK
        if args.cmd == "info":
            if not lab.p["lab_json"].exists():
                print("no lab in %s (run `up` first)" % lab.dir, file=sys.stderr)
                return EXIT_NOT_RUNNING
            sys.stdout.write(lab.p["lab_json"].read_text())
            return EXIT_OK
        if args.cmd == "status":
            if not lab.dir.exists():
                print("no lab in %s" % lab.dir, file=sys.stderr)
                return EXIT_NOT_RUNNING
            st = lab.status()
            print(json.dumps(st, indent=2, sort_keys=True) if args.json else format_status(st))
            return EXIT_OK if st["healthy"] else EXIT_NOT_RUNNING
        if args.cmd == "unseal":
            print("lab: unsealed" if lab.unseal() else "lab: already unsealed")
            return EXIT_OK
        if args.cmd == "unit":
            code, msg = lab.unit(args.name, args.action)
            print(msg, file=sys.stdout if code in (EXIT_OK, EXIT_NOT_RUNNING) else sys.stderr)
            return code
    except LabError as exc:
        print("labctl: %s" % exc, file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
