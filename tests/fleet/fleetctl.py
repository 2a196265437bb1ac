#!/usr/bin/env python3
"""fleetctl: drive the fleet lab (real hosts on this machine; see tests/fleet/README.md).

    python tests/fleet/fleetctl.py [--dir DIR] [--apps ncprd1,resume2me] [--net 12] CMD

CMD: up | down [--purge] | status [--json] | info | unseal
     | unit NAME status|start|stop|reload|restart
     | exec HOST [--user USER] -- COMMAND...   (inside the host, as root or USER)
     | ssh HOST [-- COMMAND...]                 (the controller's SSH to the host, as ansible connects)
Env overrides: FLEET_DIR (default <repo>/.fleet/default), FLEET_APPS, FLEET_NET (10.212.NET.0/24).
Root only.
"""
import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "lab"))

from fleet import Fleet, FleetError, format_status  # noqa: E402
from lab import EXIT_FAIL, EXIT_NOT_RUNNING, EXIT_OK, LabError  # noqa: E402
from labctl import lab_lock  # noqa: E402


def parse(argv):
    ap = argparse.ArgumentParser(prog="fleetctl.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="fleet folder (env FLEET_DIR; default <repo>/.fleet/default)")
    ap.add_argument("--apps", help="comma separated apps, one host each (env FLEET_APPS; default ncprd1,resume2me)")
    ap.add_argument("--net", type=int, help="the fleet's range 10.212.NET.0/24 (env FLEET_NET; default 12)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="bring the fleet up (idempotent)")
    d = sub.add_parser("down", help="stop every host, remove namespaces, links, cgroup folders")
    d.add_argument("--purge", action="store_true", help="also remove the fleet folder")
    s = sub.add_parser("status", help="state of the fleet (exit 0 healthy, 3 not)")
    s.add_argument("--json", action="store_true")
    sub.add_parser("info", help="print DIR/fleet.json")
    sub.add_parser("unseal", help="unseal the server with the stored key")
    u = sub.add_parser("unit", help="act on one user unit through its owner's systemd, like systemctl --user")
    u.add_argument("name")
    u.add_argument("action", choices=["status", "start", "stop", "reload", "restart"])
    e = sub.add_parser("exec", help="run a command inside a host")
    e.add_argument("host")
    e.add_argument("--user")
    e.add_argument("command", nargs=argparse.REMAINDER)
    h = sub.add_parser("ssh", help="ssh to a host as ansible does (the fleet's key and known_hosts)")
    h.add_argument("host")
    h.add_argument("command", nargs=argparse.REMAINDER)
    return ap.parse_args(argv)


def ssh_argv(info, host, command=()):
    h = info["hosts"][host] if host in info["hosts"] else next(
        v for v in info["hosts"].values() if host in (v["app"], v["role"]))
    return ["ssh", "-i", info["ssh"]["key"], "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=%s"
            % info["ssh"]["known_hosts"], "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "%s@%s" % (info["ssh"]["user"], h["address"])] + list(command)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        fleet = Fleet(dir=args.dir, apps=args.apps, net=args.net)
        if args.cmd in ("up", "down", "unseal", "unit") and (args.cmd == "up" or fleet.dir.exists()):
            fleet.lock = lab_lock(fleet.dir)  # one fleetctl at a time changes a fleet
        if args.cmd == "up":
            fleet.up()
            return EXIT_OK
        if args.cmd == "down":
            fleet.down(purge=args.purge)
            left = fleet.leftovers()
            if left:
                print("fleetctl: left behind: %s" % "; ".join(left), file=sys.stderr)
                return EXIT_FAIL
            return EXIT_OK
        if not fleet.p["lab_json"].exists():
            print("no fleet in %s (run `up` first)" % fleet.dir, file=sys.stderr)
            return EXIT_NOT_RUNNING
        if args.cmd == "info":
            sys.stdout.write(fleet.p["lab_json"].read_text())
            return EXIT_OK
        if args.cmd == "status":
            st = fleet.status()
            print(json.dumps(st, indent=2, sort_keys=True) if args.json else format_status(st))
            return EXIT_OK if st["healthy"] else EXIT_NOT_RUNNING
        if args.cmd == "unseal":
            print("fleet: unsealed" if fleet.unseal() else "fleet: already unsealed")
            return EXIT_OK
        if args.cmd == "unit":
            code, msg = fleet.unit(args.name, args.action)
            print(msg, file=sys.stdout if code in (EXIT_OK, EXIT_NOT_RUNNING) else sys.stderr)
            return code
        if args.cmd == "exec":
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            proc = fleet.host_exec(args.host, cmd or ["/bin/bash", "-l"], user=args.user, timeout=3600)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            return proc.returncode
        if args.cmd == "ssh":
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            argv_ = ssh_argv(fleet.info, args.host, cmd)
            os.execvp(argv_[0], argv_)
    except (FleetError, LabError) as exc:
        print("fleetctl: %s" % exc, file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
