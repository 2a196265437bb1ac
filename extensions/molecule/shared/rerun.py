"""rerun: the idempotence step of the full scenario.

Runs `ansible-playbook playbooks/rotate_all.yml -l <env>` from the repo root
with the repo's own ansible.cfg, exactly as a user reruns it right after a
rotation, and judges the output: every host must end with changed=0, except
the run's own bookkeeping on the controller (taking and releasing the run lock,
writing this run's report), which changes by design on every run. Prints one
JSON object: rc, recap, changed_tasks, offending (changed tasks that are not
bookkeeping). Exit 0 when idempotent, 1 when not, 2 when the run failed.

molecule's own idempotence step counts every `changed`, bookkeeping included,
so the full scenario uses this one (see extensions/molecule/full/molecule.yml).
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
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
    ap.add_argument("--limit", default="lab")
    ap.add_argument("--playbook", default="playbooks/rotate_all.yml")
    ap.add_argument("--log", help="write the full ansible output here")
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "MOLECULE_", "VAULT_", "BAO_"))}
    env.update({"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"})
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    argv = [os.path.join(bindir, "ansible-playbook"), args.playbook, "-l", args.limit]
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
