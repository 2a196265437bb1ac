"""LabHandle: what tests see of a lab (tests/lab), shared by tests/conftest.py and the suites
that make labs of their own (test_molecule.py). A module of its own: `from conftest import ...`
would get whichever conftest.py pytest imported first (tests/fleet has one too)."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABCTL = REPO / "tests" / "lab" / "labctl.py"


class LabHandle:
    """What tests see of a lab: its folder, lab.json, ports, and ways to drive it."""

    def __init__(self, lab):
        self.lab = lab
        self.dir = lab.dir
        self.vault_port = lab.vault_port
        self.proxy_port = lab.proxy_port
        self.frontend_port_base = lab.frontend_port_base
        self.apps = list(lab.apps)
        self.url = lab.url
        self.proxy_url = lab.proxy_url
        self.tls_server_name = "vault.prod.privsec.ch"

    @property
    def info(self):
        """DIR/lab.json, read fresh (the dict of ports, paths, units, commands)."""
        return json.loads((self.dir / "lab.json").read_text())

    def root_token(self):
        return self.lab.root_token()

    def labctl(self, *args, check=False, timeout=120):
        """Run labctl.py on this lab; returns CompletedProcess (text)."""
        argv = [sys.executable, str(LABCTL), "--dir", str(self.dir), "--vault-port", str(self.vault_port),
                "--proxy-port", str(self.proxy_port), "--frontend-port-base", str(self.frontend_port_base),
                "--apps", ",".join(self.apps)] + list(args)
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout,
                              env=_clean_env())

    def unit(self, name, action, timeout=120):
        """Run the unit command exactly as lab.json gives it to the command backend."""
        argv = self.info["units"][name]["commands"][action]
        if isinstance(argv, str):  # a shell line, as the command backend runs it
            argv = ["/bin/sh", "-c", argv]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                              env=_clean_env())

    def admin_env(self):
        """VAULT_ADDR/VAULT_CACERT/VAULT_CLIENT_CERT/VAULT_CLIENT_KEY/VAULT_TLS_SERVER_NAME of the admin."""
        return self.lab.admin_env()

    def status(self):
        return self.lab.status()

    def up(self):
        return self.labctl("up", check=True)

    def down(self, purge=False):
        return self.labctl(*(["down", "--purge"] if purge else ["down"]), check=True)

    def running(self):
        return all(self.lab.unit_pid(n) for n in self.lab.unit_names())

    def __repr__(self):
        return "<LabHandle %s vault:%d proxy:%d>" % (self.dir, self.vault_port, self.proxy_port)


def _clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
