"""The molecule scenarios of extensions/molecule/, run by pytest so `make test` includes them.

Every scenario runs as `molecule test -s <name>` from the repo root, one after
the other, against ONE lab of this module: its own folder (tmp) and its own
ports (a free block in 28600-28699), never the session lab of the other tests.
The scenarios' `create` joins that running lab and their `destroy` leaves it
running (they stop only a lab they started), so it comes up once; the module
purges it at the end. Each scenario gets its own molecule ephemeral folder.

    pytest tests/integration/test_molecule.py -m molecule
    pytest tests/integration/test_molecule.py -k full      # one scenario (the lab still comes up)
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ports
from lab import Lab
from labhandle import LabHandle

pytestmark = [pytest.mark.molecule, pytest.mark.lab, pytest.mark.destructive, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MOLECULE_DIR = REPO / "extensions" / "molecule"
BIN = Path(sys.executable).parent
# Role scenarios first, each proving one role on its own; then the whole run.
SCENARIOS = ["admin_cert", "server_tls", "agent_login", "app_leaf", "proxy_trust", "healthcheck", "restart", "full"]
PORTS = range(28600, 28700)
BLOCK = 10
# Bounds per scenario (s), for a 2-core machine that other test runs share: the
# full scenario takes ~3.5 min when the machine is quiet, 15+ min at load 16.
SCENARIO_TIMEOUT = int(os.environ.get("MOLECULE_SCENARIO_TIMEOUT", "900"))
FULL_TIMEOUT = int(os.environ.get("MOLECULE_FULL_TIMEOUT", "2400"))
TIMES = {}


@pytest.fixture(scope="module")
def molecule_lab(tmp_path_factory):
    """One private lab for every scenario of this module, purged at the end."""
    base = ports.reserve(PORTS, BLOCK)
    handle = LabHandle(Lab(dir=tmp_path_factory.mktemp("molecule") / "lab", vault_port=base, proxy_port=base + 2,
                           frontend_port_base=base + 3))
    try:
        proc = handle.labctl("up")
        if proc.returncode != 0:
            pytest.fail("molecule lab up failed in %s:\n%s%s" % (handle.dir, proc.stdout, proc.stderr), pytrace=False)
        yield handle
    finally:
        handle.labctl("down", "--purge")
        ports.release(base)
        if TIMES:
            total = sum(TIMES.values())
            print("\nmolecule scenario times: %s; total %.0f s" % (
                ", ".join("%s %.0f s" % kv for kv in TIMES.items()), total))


def molecule_env(lab, ephemeral):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "MOLECULE_", "VAULT_", "BAO_", "LAB_"))}
    env.update({
        "PATH": str(BIN) + os.pathsep + env.get("PATH", ""),
        "LAB_DIR": str(lab.dir),
        "LAB_VAULT_PORT": str(lab.vault_port),
        "LAB_PROXY_PORT": str(lab.proxy_port),
        "LAB_FRONTEND_PORT_BASE": str(lab.frontend_port_base),
        "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral),
        "ANSIBLE_FORCE_COLOR": "0",
        "PY_COLORS": "0",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "COLUMNS": "160",
    })
    return env


def stop_leftover_probe(ephemeral):
    """A scenario that died before its destroy may leave its prober running: stop it by its pid."""
    pidfile = ephemeral / "probe.pid"
    if pidfile.exists():
        subprocess.run([sys.executable, str(REPO / "tests" / "lab" / "probe.py"), "stop", "--pidfile", str(pidfile)],
                       capture_output=True, text=True, timeout=30, check=False)


def test_every_scenario_is_run():
    on_disk = sorted(p.parent.name for p in MOLECULE_DIR.glob("*/molecule.yml"))
    assert on_disk == sorted(SCENARIOS), "scenarios on disk %s, run here %s" % (on_disk, SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario, molecule_lab, tmp_path, record_property):
    ephemeral = tmp_path / "molecule" / scenario
    ephemeral.mkdir(parents=True)
    started = time.monotonic()
    timeout = FULL_TIMEOUT if scenario == "full" else SCENARIO_TIMEOUT
    # own session: on a timeout the whole tree (molecule, ansible-playbook, ...) is stopped by its group id
    proc = subprocess.Popen([str(BIN / "molecule"), "test", "-s", scenario], cwd=str(REPO),
                            env=molecule_env(molecule_lab, ephemeral), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        output += "\n[test_molecule] molecule test -s %s stopped after %d s\n" % (scenario, timeout)
    finally:
        stop_leftover_probe(ephemeral)
        TIMES[scenario] = time.monotonic() - started
    record_property("molecule_seconds", round(TIMES[scenario], 1))
    (tmp_path / "molecule.log").write_text(output)
    tail = "\n".join(output.splitlines()[-80:])
    assert proc.returncode == 0, "molecule test -s %s failed (rc %d, full log %s):\n%s" % (
        scenario, proc.returncode, tmp_path / "molecule.log", tail)
    assert "1 successful" in output, tail
    # the lab is left running for the next scenario (destroy stops only a lab it started)
    status = molecule_lab.labctl("status", "--json")
    assert status.returncode == 0, "lab not healthy after %s: %s" % (scenario, status.stdout[-2000:])
    # what verify found (kept by the scenarios' driver safe_files)
    verify = json.loads((ephemeral / "verify.json").read_text())
    assert verify["scenario"] == scenario and verify["failed"] == 0, verify
    record_property("molecule_checks", len(verify["results"]))
    if scenario == "full":
        probe = json.loads((ephemeral / "probe.json").read_text())
        record_property("probe", {k: probe[k] for k in ("attempts", "failures", "failure_classes", "max_gap_ms")})
        print("\nfull: probe %d handshakes, %d failed, longest gap %.0f ms" % (
            probe["attempts"], probe["failures"], probe["max_gap_ms"]))


# The judges of the scenarios must be able to say no: a verify that cannot fail
# proves nothing.

def test_labcheck_fails_when_the_rotation_did_not_happen(molecule_lab, tmp_path):
    labcheck = [sys.executable, str(MOLECULE_DIR / "shared" / "labcheck.py")]
    snap = tmp_path / "snapshot.json"
    subprocess.run(labcheck + ["snapshot", "--lab-dir", str(molecule_lab.dir), "--out", str(snap)],
                   check=True, capture_output=True, text=True, timeout=60)
    healthy = subprocess.run(labcheck + ["check", "--lab-dir", str(molecule_lab.dir), "--snapshot", str(snap),
                                         "--scenario", "healthcheck"], capture_output=True, text=True, timeout=120)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    # nothing was rotated since the snapshot: the admin_cert verify must refuse
    proc = subprocess.run(labcheck + ["check", "--lab-dir", str(molecule_lab.dir), "--snapshot", str(snap),
                                      "--scenario", "admin_cert"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL files admin: serial unchanged" in proc.stdout, proc.stdout


def test_labcheck_fails_when_a_run_is_left_open(molecule_lab, tmp_path):
    """A run lock left in the lab's run/ folder (a role that did not close its run) fails every scenario's verify."""
    labcheck = [sys.executable, str(MOLECULE_DIR / "shared" / "labcheck.py")]
    snap = tmp_path / "snapshot.json"
    subprocess.run(labcheck + ["snapshot", "--lab-dir", str(molecule_lab.dir), "--out", str(snap)],
                   check=True, capture_output=True, text=True, timeout=60)
    lock = molecule_lab.dir / "run" / "vault_rotate-lab.lock"
    lock.mkdir()
    try:
        (lock / "owner.json").write_text(json.dumps({"run_id": "left-open", "env": "lab", "pid": 0}))
        proc = subprocess.run(labcheck + ["check", "--lab-dir", str(molecule_lab.dir), "--snapshot", str(snap),
                                          "--scenario", "healthcheck"], capture_output=True, text=True, timeout=120)
    finally:
        (lock / "owner.json").unlink()
        lock.rmdir()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL no run lock left behind" in proc.stdout, proc.stdout


def test_probe_sees_a_vault_restart(molecule_lab, tmp_path):
    """A restart (sealed until unsealed) shows up as failed handshakes; the probe runs on afterwards."""
    paths = molecule_lab.info["paths"]
    probe = [sys.executable, str(REPO / "tests" / "lab" / "probe.py")]
    pidfile, out = tmp_path / "probe.pid", tmp_path / "probe.json"
    subprocess.run(probe + ["start", "--port", str(molecule_lab.vault_port), "--server-name", molecule_lab.tls_server_name,
                            "--ca", paths["admin_ca"], "--cert", paths["admin_crt"], "--key", paths["admin_key"],
                            "--out", str(out), "--pidfile", str(pidfile)],
                   check=True, capture_output=True, text=True, timeout=30)
    try:
        time.sleep(0.5)
        assert molecule_lab.unit("container-vaultprod", "restart").returncode == 0
        molecule_lab.labctl("unseal", check=True)
        time.sleep(0.5)
    finally:
        stop = subprocess.run(probe + ["stop", "--pidfile", str(pidfile)], capture_output=True, text=True, timeout=30)
    summary = json.loads(stop.stdout)
    assert summary["failures"] > 0, summary
    assert set(summary["failure_classes"]) <= {"refused", "reset", "sealed", "timeout", "http_503"} | {
        c for c in summary["failure_classes"] if c.startswith(("tls_error", "os_error"))}, summary["failure_classes"]
    assert summary["ok"] > 0 and summary["attempts"] == summary["ok"] + summary["failures"]
    assert summary["last_ok"] > summary["last_failure"], "no good handshake after the restart: %s" % summary
