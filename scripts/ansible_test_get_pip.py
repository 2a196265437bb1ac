"""Provide ansible-test's pip bootstrap script locally (no internet needed).

`ansible-test ... --venv` bootstraps pip into each empty venv it makes by
running `get-pip-<ver>.py`, which it downloads from ci-files.testing.ansible.com
unless `~/.ansible/test/cache/get_pip_<ver with _>.py` already exists
(ansible_test/_util/target/setup/requirements.py, `bootstrap()`). It then runs
that file as a module (quiet_pip.py, env GET_PIP) with pip's options and the
packages to install (`pip==<ver>`), plus `--no-setuptools --no-wheel`.

This script writes that cache file: a small get-pip equivalent that runs pip
from the real pip wheel (fetched with `pip download`, through the normal index)
kept next to it, and installs pip from that same wheel (`--no-index
--find-links`), so the bootstrap never touches the network.

Usage: python scripts/ansible_test_get_pip.py   (idempotent; prints the path)
"""
import os
import re
import subprocess
import sys
from pathlib import Path

GET_PIP_TEMPLATE = '''\
"""get-pip replacement written by scripts/ansible_test_get_pip.py (pip {version}, offline)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WHEEL = os.path.join(HERE, "{wheel}")


def main():
    # get-pip.py flags that only steer which extra packages it adds itself.
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    sys.path.insert(0, WHEEL)
    from pip._internal.cli.main import main as pip_main

    cmd = ["install", "--upgrade", "--force-reinstall", "--no-index", "--find-links", HERE]
    sys.exit(pip_main(cmd + args))


if __name__ == "__main__":
    main()
'''


def wanted_pip_version():
    """The pip version ansible-test bootstraps (default_packages in python_requirements.py)."""
    import ansible_test

    src = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    match = re.search(r"default_packages = dict\(\s*pip='([^']+)'", src.read_text())
    if not match:
        sys.exit("cannot find the pip version ansible-test wants in %s" % src)
    return match.group(1)


def main():
    version = wanted_pip_version()
    cache = Path(os.path.expanduser("~/.ansible/test/cache"))
    cache.mkdir(parents=True, exist_ok=True)
    wheel_name = "pip-%s-py3-none-any.whl" % version
    wheel = cache / wheel_name
    if not wheel.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--dest", str(cache), "pip==%s" % version],
            check=True,
        )
    if not wheel.exists():
        sys.exit("pip download did not produce %s" % wheel)
    script = cache / ("get_pip_%s.py" % version.replace(".", "_"))
    content = GET_PIP_TEMPLATE.format(version=version, wheel=wheel_name)
    if not script.exists() or script.read_text() != content:
        script.write_text(content)
    print(script)


if __name__ == "__main__":
    main()
