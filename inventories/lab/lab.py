#!/usr/bin/env python3
# Inventory script of the lab: reads the lab's own description ONCE per run and
# hands it to the `lab` group as plain data (vault_rotate_lab, vault_rotate_lab_dir),
# so group_vars/lab.yml derives its values from a dict instead of re-reading and
# re-parsing the file at every use. Hosts and groups stay in hosts.yml.
#   lab folder: $LAB_DIR, else <repo>/.lab/default (the labctl.py default).
# With no lab there, the inventory still loads: vault_rotate_lab then fails only
# when a lab host uses it, naming the missing file.
import json
import os
import sys


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        print("{}")
        return
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    lab_dir = os.environ.get("LAB_DIR") or os.path.join(repo, ".lab", "default")
    path = os.path.join(lab_dir, "lab.json")
    try:
        with open(path) as fh:
            lab = json.load(fh)
    except (OSError, ValueError) as exc:
        # Evaluated only when used: the same error the file lookup gave before.
        lab = "{{ undef(hint=%s) }}" % json.dumps(
            "no lab description at %s (%s): start the lab with tests/lab/labctl.py up, "
            "or point LAB_DIR at its folder" % (path, exc.__class__.__name__))
    print(json.dumps({"lab": {"vars": {"vault_rotate_lab_dir": lab_dir, "vault_rotate_lab": lab}},
                      "_meta": {"hostvars": {}}}))


if __name__ == "__main__":
    main()
