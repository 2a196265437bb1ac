"""The venv of each ansible-core line the collection supports, built from the line's one pin.

    python scripts/core_venv.py LINE      # prints the venv's path (builds it when needed)
    python scripts/core_venv.py --lines   # prints the supported lines, oldest first

| line | pin (the one source)             | venv                                  | Python          |
|------|----------------------------------|---------------------------------------|-----------------|
| 2.19 | tests/requirements-oldest.txt    | .cache/venv-oldest (OLDEST_VENV)      | 3.11, else 3.12 |
| 2.20 | tests/requirements-2.20.txt      | .cache/venv-2.20                      | 3.12, else 3.13 |
| 2.21 | requirements-controller.txt      | .venv (scripts/bootstrap.sh makes it) | bootstrap's     |

The oldest line is `requires_ansible` in meta/runtime.yml, the newest is what
`.venv` runs. A venv under .cache/ is rebuilt only when its pin file or its
interpreter changes (a stamp file holds their hash), under an flock, so
scripts/sanity.sh and tests/integration/test_ansible_versions.py share it safely.
The interpreter: `<LINE>` env `CORE_PYTHON_2_19` / `CORE_PYTHON_2_20` (2.19 also
`OLDEST_PYTHON`), else pythonX.Y on PATH (not a pyenv shim), else the newest
pyenv version of that minor, by full path. Controller-side only (Python >= 3.11).
"""
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINES = {
    "2.19": {"reqs": REPO / "tests" / "requirements-oldest.txt",
             "venv": Path(os.environ.get("OLDEST_VENV", REPO / ".cache" / "venv-oldest")),
             "pythons": ("3.11", "3.12"), "env": ("CORE_PYTHON_2_19", "OLDEST_PYTHON")},
    "2.20": {"reqs": REPO / "tests" / "requirements-2.20.txt", "venv": REPO / ".cache" / "venv-2.20",
             "pythons": ("3.12", "3.13"), "env": ("CORE_PYTHON_2_20",)},
    "2.21": {"reqs": REPO / "requirements-controller.txt",
             "venv": Path(os.environ.get("VENV", REPO / ".venv")), "pythons": None, "env": ()},
}


class Error(Exception):
    """What is wrong and what to do, for a person."""


def pin(line):
    """The ansible-core version pinned for `line` in its requirements file (the newest when several)."""
    reqs = LINES[line]["reqs"]
    pins = re.findall(r"^ansible-core==(\S+)", reqs.read_text(), re.M)
    pins = [p for p in pins if p.startswith(line + ".")]
    if not pins:
        raise Error("%s pins no ansible-core %s.x" % (reqs.relative_to(REPO), line))
    return max(pins, key=lambda v: tuple(int(x) for x in v.split(".")))


def find_python(line):
    """An interpreter for the line's venv, or None."""
    for name in LINES[line]["env"]:
        if os.environ.get(name):
            return os.environ[name]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for minor in LINES[line]["pythons"]:
        found = shutil.which("python" + minor)
        if found and "/shims/" not in found:
            return found
        versions = sorted(glob.glob(os.path.join(pyenv_root, "versions", minor + ".*", "bin", "python3")),
                          key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/versions/")[1].split("/")[0])])
        if versions:
            return versions[-1]
    return None


def _run(argv, what, timeout=900):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise Error("%s failed (rc=%s):\n%s" % (what, proc.returncode, (proc.stdout + proc.stderr)[-4000:]))
    return proc


def installed_core(venv):
    proc = _run([venv / "bin" / "python", "-c", "from importlib.metadata import version; print(version('ansible-core'))"],
                "ansible-core version in %s" % venv)
    return proc.stdout.strip()


def ensure(line):
    """The venv of `line` with its pinned ansible-core, built when missing or out of date; its path."""
    if line not in LINES:
        raise Error("unknown ansible-core line %r (supported: %s)" % (line, " ".join(LINES)))
    spec = LINES[line]
    venv, want = spec["venv"], pin(line)
    if spec["pythons"] is None:  # .venv: scripts/bootstrap.sh owns it
        if not (venv / "bin" / "python").exists():
            raise Error("%s does not exist: run `make bootstrap` (scripts/bootstrap.sh)" % venv)
    else:
        python = find_python(line)
        if not python:
            raise Error("no Python %s for ansible-core %s (set %s=/path/to/python%s)"
                        % (" or ".join(spec["pythons"]), line, spec["env"][0], spec["pythons"][0]))
        stamp_value = hashlib.sha256(spec["reqs"].read_bytes() + python.encode()).hexdigest()
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(str(venv) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stamp = venv / ".stamp"
            if not (stamp.is_file() and stamp.read_text() == stamp_value):
                shutil.rmtree(venv, ignore_errors=True)
                _run([python, "-m", "venv", venv], "python -m venv %s" % venv)
                _run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "-r", spec["reqs"]],
                     "pip install -r %s" % spec["reqs"])
                stamp.write_text(stamp_value)
    have = installed_core(venv)
    if have != want:
        hint = ("ansible-core %s needs Python >= 3.12 for .venv: rerun scripts/bootstrap.sh with PYTHON=/path/to/python3.12"
                if line == "2.21" else "remove %s and rerun" % venv)
        raise Error("%s has ansible-core %s, %s pins %s: %s" % (venv, have, spec["reqs"].relative_to(REPO), want, hint))
    return venv


def main(argv):
    if argv == ["--lines"]:
        print(" ".join(LINES))
        return 0
    if len(argv) != 1:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        print(ensure(argv[0]))
    except Error as exc:
        print("core_venv: ERROR: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
