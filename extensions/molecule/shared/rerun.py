"""rerun: the idempotence step of every scenario (molecule's side_effect).

A phase role, used on its own or in rotate_all, opens a run: it takes the run
lock, and closing the run writes the run's report and releases the lock. That
bookkeeping on the controller changes by design on every run, and molecule's
own idempotence step counts every `changed`; so each scenario reruns through
this script, which allows exactly that bookkeeping and nothing else:

- `--scenario full` (default): `ansible-playbook playbooks/rotate_all.yml -l
  <env>` from the repo root with the repo's own ansible.cfg and no
  ANSIBLE_/MOLECULE_ variables, exactly as a user reruns it right after a
  rotation;
- `--scenario NAME` (a role scenario): that scenario's converge.yml, run as
  molecule's converge runs it (molecule's environment, `--inventory
  inventories/lab`, the extra vars of shared/vars/molecule.yml); molecule's
  state says converged, so the rerun is the plain, unforced one.

Every host must end with changed=0, except the run's own bookkeeping on the
controller (taking and releasing the run lock, writing this run's report).
Prints one JSON object: rc, recap, changed_tasks, offending (changed tasks that
are not bookkeeping). Exit 0 when idempotent, 1 when not, 2 when the run failed.
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MOLECULE = REPO / "extensions" / "molecule"
BOOKKEEPING = re.compile(r"run lock|Write the (JSON|Markdown) report|report folder", re.I)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def changed_tasks(output):
    """[(task, host)] for every `changed:` result line, under the TASK banner it belongs to."""
    out, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK ["):].rsplit("]", 1)[0]
        elif line.startswith("changed: [") and task:
            out.append((task, line[len("changed: ["):].split("]", 1)[0]))
    return out


def recap(output):
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        m = RECAP.match(line.strip())
        if m:
            hosts[m.group(1)] = {"ok": int(m.group(2)), "changed": int(m.group(3)),
                                 "unreachable": int(m.group(4)), "failed": int(m.group(5))}
    return hosts


def main(argv=None):
    ap = argparse.ArgumentParser(prog="rerun.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="full")
    ap.add_argument("--limit", default="lab", help="the environment (scenario full)")
    ap.add_argument("--log", help="write the full ansible output here")
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args(argv)
    bindir = str(Path(sys.executable).parent)
    if args.scenario == "full":
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ANSIBLE_", "MOLECULE_", "VAULT_", "BAO_"))}
        env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
        argv = [os.path.join(bindir, "ansible-playbook"), "playbooks/rotate_all.yml", "-l", args.limit]
    else:
        converge = MOLECULE / args.scenario / "converge.yml"
        if not converge.is_file():
            ap.error("no scenario %s (%s)" % (args.scenario, converge))
        env = dict(os.environ)
        argv = [os.path.join(bindir, "ansible-playbook"), "--inventory", str(REPO / "inventories" / "lab"),
                "--extra-vars", "@%s" % (MOLECULE / "shared" / "vars" / "molecule.yml"), str(converge)]
    env.update({"ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "PY_COLORS": "0"})
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(argv, cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=args.timeout, check=False)
    output = proc.stdout + proc.stderr
    if args.log:
        Path(args.log).write_text(output)
    tasks = changed_tasks(proc.stdout)
    hosts = recap(proc.stdout)
    offending = sorted({"%s [%s]" % (t, h) for t, h in tasks if not BOOKKEEPING.search(t)})
    result = {"command": " ".join(argv[1:]), "rc": proc.returncode, "recap": hosts,
              "changed_tasks": ["%s [%s]" % th for th in tasks], "offending": offending}
    if proc.returncode != 0:
        result["tail"] = output.splitlines()[-25:]
    print(json.dumps(result, indent=1))
    if proc.returncode != 0 or not hosts:
        return 2
    return 1 if offending else 0


if __name__ == "__main__":
    sys.exit(main())
