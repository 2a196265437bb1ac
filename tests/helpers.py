"""Shared test helpers: run a collection module for real, outside ansible-playbook.

`run_module` executes the module file with the real Python interpreter and an
ANSIBLE_MODULE_ARGS file, exactly as Ansible's AnsiballZ wrapper would hand it
its arguments, and returns the parsed JSON result. No mock is involved: the
module talks to the real lab, writes real files.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / "collections"
MODULES = REPO / "plugins" / "modules"

if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))


def run_module(name, args, check=False, diff=False, env=None, python=None, timeout=120):
    """Run plugins/modules/<name>.py with args; return its JSON result (a dict).

    `check` and `diff` set Ansible's check and diff mode. `env` replaces the
    environment (default: the current one minus VAULT_*/BAO_* so tests are not
    influenced by the shell). The result always has `failed` (bool).
    """
    module_args = dict(args)
    module_args["_ansible_check_mode"] = check
    module_args["_ansible_diff"] = diff
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(COLLECTIONS), env.get("PYTHONPATH", "")]))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": module_args}, fh)
        args_file = fh.name
    try:
        proc = subprocess.run(
            [python or sys.executable, str(MODULES / (name + ".py")), args_file],
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )
    finally:
        os.unlink(args_file)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            "module %s printed no JSON (rc=%s)\nstdout: %s\nstderr: %s"
            % (name, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        )
    result.setdefault("failed", False)
    result["_rc"] = proc.returncode
    result["_stderr"] = proc.stderr
    return result
