"""The control roles against real throwaway labs: interlocks, the run lock,
the plan under --check, restart with and without unseal keys, the healthcheck
gate and the report files. Every run is a real `ansible-playbook` from the
repo root with the shipped ansible.cfg; nothing is mocked.

Labs run on a block of ports reserved in 21500-21999 (tests/ports.py), so
parallel workers and sessions do not collide with each other, the default lab
or other suites' throwaway labs.
"""
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = str(REPO / ".venv" / "bin" / "ansible-playbook")
if not os.path.exists(PLAYBOOK):
    PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))

PORTS = range(21500, 22000)  # blocks of 10: vault, cluster, proxy, frontends

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def new_lab(throwaway_lab):
    """A fresh throwaway lab, up, on a port block reserved in our range."""
    return throwaway_lab(ports_from=PORTS)


def run_playbook(lab_dir, *args, extra_env=None, timeout=600):
    """ansible-playbook from the repo root, LAB_DIR pointing at the lab; returns CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "ANSIBLE_", "LAB_"))}
    env.update({"LAB_DIR": str(lab_dir), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})
    env.update(extra_env or {})
    argv = [PLAYBOOK] + [str(a) for a in args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def out(proc):
    return proc.stdout + proc.stderr


def one_line(text):
    """Ansible folds long messages over lines: compare on whitespace-normalised text."""
    return re.sub(r"\s+", " ", text)


def lock_path(lab):
    return Path(lab.dir) / "run" / "vault_rotate-lab.lock"


def report_dir(lab):
    return Path(lab.dir) / "reports"


def material_hashes(lab_dir):
    """sha256 of every certificate/key/config file of the lab (not logs, pids, raft data, agent sinks)."""
    root = Path(lab_dir)
    hashes = {}
    for sub in ("home", "root", "offline-ca", "secrets"):
        for path in sorted((root / sub).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or "/data/" in rel or rel.endswith("/vault/token") or "/rendered/" in rel:
                continue
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def keys_file(lab, tmp_path):
    """An extra-vars file with the unseal keys, as AWX/ansible-vault would hand them over."""
    init = json.loads((Path(lab.dir) / "secrets" / "init.json").read_text())
    keys = init.get("keys_base64") or init.get("unseal_keys_b64")
    path = tmp_path / "unseal.json"
    path.write_text(json.dumps({"vault_rotate_unseal_keys": keys}))
    path.chmod(0o600)
    return path, keys, init.get("root_token")


def test_env_mismatch_refused(tmp_path):
    """Both inventories without -l, or -l prod with lab values: refused before any host is touched."""
    both = run_playbook(tmp_path, "playbooks/preflight.yml")
    assert both.returncode != 0
    text = one_line(out(both))
    assert "REFUSED (environment interlock)" in text
    assert "span several environments (lab: 5 host(s); prod: 5 host(s))" in text

    mixed = run_playbook(tmp_path, "playbooks/preflight.yml", "-l", "prod", "-e", "vault_rotate_env=lab")
    assert mixed.returncode != 0
    text = one_line(out(mixed))
    assert "REFUSED (environment interlock)" in text
    assert "vault_rotate_env=lab but host(s) prod-controller" in text
    assert "are not in inventory group lab (they are in: prod)" in text
    # Nothing ran past the interlock: no lock, no report, no unit check.
    assert "Take the run lock" not in out(mixed)
    assert not (tmp_path / "run").exists() and not (tmp_path / "reports").exists()


def test_bad_variables_refused(throwaway_lab):
    lab = new_lab(throwaway_lab)
    proc = run_playbook(lab.dir, "playbooks/preflight.yml", "-l", "lab",
                        "-e", "vault_rotate_vault_url=http://127.0.0.1:1/v1", "-e", "vault_rotate_restart_vault=sometimes",
                        "-e", "vault_rotate_report_dir=reports")
    text = one_line(out(proc))
    assert proc.returncode != 0
    assert "REFUSED (variables of lab)" in text
    assert "vault_rotate_vault_url must be https://host[:port] without a path" in text
    assert "vault_rotate_restart_vault must be auto, always or never" in text
    assert ("vault_rotate_report_dir must be an absolute path on the controller (or start with ~/, the controller "
            "user's home), got 'reports'") in text
    assert not lock_path(lab).exists()


def test_lock_held_refused_then_released_after_failed_run(throwaway_lab):
    lab = new_lab(throwaway_lab)
    lock = lock_path(lab)
    lock.mkdir(parents=True)
    owner = {"run_id": "other-run-42", "env": "lab", "user": "alice", "host": socket.gethostname(),
             "pid": os.getpid(), "since": "2026-01-01T00:00:00Z", "awx_job_id": None}
    (lock / "owner.json").write_text(json.dumps(owner))

    held = run_playbook(lab.dir, "playbooks/preflight.yml", "-l", "lab")
    text = one_line(out(held))
    assert held.returncode != 0
    assert "Another rotation of lab holds the lock" in text
    assert "run other-run-42 by alice@" in text and "since 2026-01-01T00:00:00Z" in text
    assert json.loads((lock / "owner.json").read_text())["run_id"] == "other-run-42", "someone else's lock was touched"
    assert not report_dir(lab).exists()

    # The holder is gone (dead pid on this host): the lock is stale and taken over;
    # then the run fails in preflight (no such admin mapping) and must release it.
    owner["pid"] = 2 ** 22 + 12345
    (lock / "owner.json").write_text(json.dumps(owner))
    failed = run_playbook(lab.dir, "playbooks/preflight.yml", "-l", "lab", "-e", "vault_rotate_admin_mapping=nosuch-mapping")
    text = one_line(out(failed))
    assert failed.returncode != 0
    assert "GATE preflight FAILED" in text
    assert "the admin identity cannot reach Vault: " in text
    assert not lock.exists(), "a failed run must release its lock"
    report = json.loads((report_dir(lab) / "latest.json").read_text())
    assert report["status"] == "failed"
    assert report["summary"]["failed_phase"] == "preflight"
    assert "the admin identity cannot reach Vault" in report["msg"]

    # And the next run can take the lock again (and gives it back at the end).
    ok = run_playbook(lab.dir, "playbooks/preflight.yml", "playbooks/report.yml", "-l", "lab")
    assert ok.returncode == 0, out(ok)[-3000:]
    assert not lock.exists()


def test_check_prints_plan_and_changes_nothing(throwaway_lab):
    lab = new_lab(throwaway_lab)
    before = material_hashes(lab.dir)
    proc = run_playbook(lab.dir, "playbooks/rotate_all.yml", "-l", "lab", "--check")
    text = out(proc)
    assert proc.returncode == 0, text[-4000:]
    assert material_hashes(lab.dir) == before, "--check changed a file"
    assert not lock_path(lab).exists(), "--check must not take the lock"
    assert not report_dir(lab).exists(), "--check must not write a report"

    table = text.split("CURRENT SERIAL", 1)[1].split("slot(s):", 1)[0]
    for slot in ("admin_cert", "server_tls", "agent_login/ncprd1", "agent_login/resume2me",
                 "app_leaf/ncprd1", "app_leaf/resume2me"):
        assert re.search(r"\b%s\b" % re.escape(slot), table), slot
    # The lab issues its first leaf certs backdated: every slot is due, with its reason.
    assert "ROTATE" in table and "lifetime has elapsed" in table
    # The serials in the plan are the ones on disk.
    from cryptography import x509
    served = x509.load_pem_x509_certificate(
        (Path(lab.dir) / "home" / "vaultprod" / "tls-prod" / "server.crt").read_bytes())
    serial = ":".join("%02x" % b for b in served.serial_number.to_bytes(20, "big").lstrip(b"\0"))
    assert serial[:20] in table
    # Every later phase ended at once: nothing was rotated, restarted or reported.
    assert "changed=0" in text.split("PLAY RECAP", 1)[1]


def test_restart_sealed_without_keys_then_ready_with_keys(throwaway_lab, tmp_path):
    lab = new_lab(throwaway_lab)
    keys_path, keys, root_token = keys_file(lab, tmp_path)

    # No keys at all (explicitly: the lab inventory may provide its own).
    sealed = run_playbook(lab.dir, "playbooks/restart.yml", "-l", "lab", "-e", "vault_rotate_restart_vault=always",
                          "-e", '{"vault_rotate_unseal_keys": []}')
    text = one_line(out(sealed))
    assert sealed.returncode != 0
    assert ("Vault restarted and is sealed: provide vault_rotate_unseal_keys (AWX credential / ansible-vault) "
            "or unseal by hand, then run playbooks/healthcheck.yml") in text
    report = json.loads((report_dir(lab) / "latest.json").read_text())
    assert report["status"] == "failed" and report["summary"]["failed_phase"] == "restart"
    assert report["phases"][-1]["failure_class"] == "sealed"

    ready = run_playbook(lab.dir, "playbooks/restart.yml", "playbooks/healthcheck.yml", "playbooks/report.yml",
                         "-l", "lab", "-e", "vault_rotate_restart_vault=always", "-e", "@%s" % keys_path)
    text = out(ready)
    assert ready.returncode == 0, text[-4000:]
    assert "Wait until Vault is ready (TLS, unsealed, HTTP 200)" in text
    assert "Healthcheck passed" in text
    for secret in list(keys) + [root_token]:
        assert secret not in text, "an unseal key or the root token reached the output"
    # Each playbook of the command is a run of its own (its role opened it and closes it):
    # restart's report, then healthcheck's (latest); report.yml finds no open run.
    # The sealed run above wrote a ("restart",) report too: oldest first, so the later run's wins
    # (in directory order it sometimes came last, and the test failed on the sealed run's report).
    reports = {}
    for path in sorted(report_dir(lab).glob("lab-*.json"), key=lambda p: p.stat().st_mtime_ns):
        data = json.loads(path.read_text())
        reports[tuple(p["phase"] for p in data["phases"])] = data
    assert {"restart": "passed"} == {p["phase"]: p["gate"] for p in reports[("restart",)]["phases"]}
    latest = json.loads((report_dir(lab) / "latest.json").read_text())
    assert latest["status"] == "success"
    assert {p["phase"]: p["gate"] for p in latest["phases"]} == {"healthcheck": "passed"}
    report = reports[("restart",)]
    assert report["status"] == "success"
    readiness = float(report["extra"]["restart_readiness_s"])
    assert 0 < readiness < 90
    assert report["extra"]["restart_unsealed_by_run"] in (True, "True", "true")

    # Independently of the roles: the listener answers seal-status unsealed with the admin cert.
    import ssl
    env = lab.admin_env()
    ctx = ssl.create_default_context(cafile=env["VAULT_CACERT"])
    ctx.load_cert_chain(env["VAULT_CLIENT_CERT"], env["VAULT_CLIENT_KEY"])
    with socket.create_connection(("127.0.0.1", lab.vault_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=env["VAULT_TLS_SERVER_NAME"]) as tls:
            tls.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_healthcheck_names_the_failure(throwaway_lab):
    """A wrong SNI name: the hard gate fails with the class and what it means."""
    lab = new_lab(throwaway_lab)
    proc = run_playbook(lab.dir, "playbooks/healthcheck.yml", "-l", "lab",
                        "-e", "vault_rotate_tls_server_name=wrong.prod.privsec.ch",
                        "-e", "healthcheck_wait_timeout=1")
    text = one_line(out(proc))
    assert proc.returncode != 0
    assert "GATE healthcheck FAILED (hostname_mismatch)" in text or "GATE healthcheck FAILED (untrusted_server_cert)" in text


def test_report_files_parse_and_hold_no_secrets(throwaway_lab):
    lab = new_lab(throwaway_lab)
    proc = run_playbook(lab.dir, "playbooks/preflight.yml", "playbooks/healthcheck.yml", "playbooks/report.yml", "-l", "lab")
    assert proc.returncode == 0, out(proc)[-4000:]
    rdir = report_dir(lab)
    stamped = sorted(p.name for p in rdir.glob("lab-*"))
    assert len(stamped) == 2 and stamped[0].endswith(".json") and stamped[1].endswith(".md"), stamped
    assert (rdir / "latest.json").read_bytes() == (rdir / stamped[0]).read_bytes()
    assert (rdir / "latest.md").read_bytes() == (rdir / stamped[1]).read_bytes()

    report = json.loads((rdir / "latest.json").read_text())
    assert report["env"] == "lab" and report["status"] == "success"
    assert [p["phase"] for p in report["phases"]] == ["preflight", "healthcheck"]
    assert all(p["gate"] == "passed" and p["duration_s"] >= 0 for p in report["phases"])
    slots = {s["slot"]: s for s in report["slots"]}
    assert {"admin_cert", "server_tls", "agent_login/ncprd1", "app_leaf/resume2me"} <= set(slots)
    for slot in slots.values():
        assert slot["action"] == "planned" and slot["decision"] in ("keep", "rotate")
        assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2})+", slot["old"]["serial"])
        assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){31}", slot["old"]["fingerprint_sha256"])
        assert slot["old"]["not_after"].endswith("Z")
    md = (rdir / "latest.md").read_text()
    assert "# Vault certificate rotation: lab (SUCCESS)" in md and "| admin_cert |" in md

    init = json.loads((Path(lab.dir) / "secrets" / "init.json").read_text())
    secrets = [init["root_token"]] + list(init.get("keys_base64") or init.get("unseal_keys_b64") or [])
    for path in rdir.iterdir():
        body = path.read_text()
        assert "-----BEGIN" not in body and "PRIVATE KEY" not in body, path
        assert not re.search(r"\b(hvs|s)\.[A-Za-z0-9]{20,}", body), path
        for secret in secrets:
            assert secret not in body, path
    assert not lock_path(lab).exists()


def test_failed_gate_after_preflight_reports_and_releases_lock(throwaway_lab):
    """Preflight takes the lock; the healthcheck gate fails (nothing listens where the
    proxy should be): the rescue records it, writes the report and releases the lock."""
    lab = new_lab(throwaway_lab)
    proc = run_playbook(lab.dir, "playbooks/preflight.yml", "playbooks/healthcheck.yml", "playbooks/report.yml",
                        "-l", "lab", "-e", '{"healthcheck_proxy_endpoint": {"host": "127.0.0.1", "port": 1}}',
                        "-e", "healthcheck_wait_timeout=1")
    text = one_line(out(proc))
    assert proc.returncode != 0
    assert "GATE healthcheck FAILED (refused): proxy 127.0.0.1:1: refused" in text
    assert "nothing listens on that port" in text
    assert not lock_path(lab).exists(), "the failed run kept its lock"
    report = json.loads((report_dir(lab) / "latest.json").read_text())
    assert report["status"] == "failed"
    assert [(p["phase"], p["gate"]) for p in report["phases"]] == [("preflight", "passed"), ("healthcheck", "failed")]
    assert report["phases"][1]["failure_class"] == "refused"
    assert report["summary"]["planned"] == len(report["slots"]) > 0


def test_defaults_keep_the_lock_and_report_in_the_users_state_folder(throwaway_lab, tmp_path):
    """The lab's inventory without vault_rotate_lock_dir / _report_dir, run by a user whose HOME is a
    fresh folder (no XDG_STATE_HOME): a forced rotation takes the lock and writes the report under
    ~/.local/state/vault-rotate/lab, releases the lock, and publishes the report summary with
    set_stats (once, not per host: what AWX keeps as the job's artifacts)."""
    lab = new_lab(throwaway_lab)
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    for rel in ("hosts.yml", "group_vars/lab.yml"):
        (inventory / rel).write_text((REPO / "inventories" / "lab" / rel).read_text())
    # the lab's inventory script, minus the two folders (so their defaults apply)
    script = inventory / "lab.py"
    script.write_text("#!%s\nimport json, subprocess, sys\n"
                      "data = json.loads(subprocess.check_output([sys.executable, %r] + sys.argv[1:]))\n"
                      "for name in ('vault_rotate_report_dir', 'vault_rotate_lock_dir'):\n"
                      "    data.get('lab', {}).get('vars', {}).pop(name, None)\n"
                      "print(json.dumps(data))\n" % (sys.executable, str(REPO / "inventories" / "lab" / "lab.py")))
    script.chmod(0o755)
    home = tmp_path / "home"
    state = home / ".local" / "state" / "vault-rotate" / "lab"
    env = {"HOME": str(home), "ANSIBLE_SHOW_CUSTOM_STATS": "true"}
    # the lock is where the default says: another run's lock there refuses this one
    foreign = state / "vault_rotate-lab.lock"
    foreign.mkdir(parents=True)
    (foreign / "owner.json").write_text(json.dumps({"run_id": "other-run-7", "env": "lab", "user": "bob",
                                                    "host": socket.gethostname(), "pid": os.getpid()}))
    held = run_playbook(lab.dir, "-i", inventory, "playbooks/preflight.yml", "-l", "lab", extra_env=env)
    assert held.returncode != 0
    assert "Another rotation of lab holds the lock %s: run other-run-7 by bob@" % foreign in one_line(out(held))
    (foreign / "owner.json").unlink()
    foreign.rmdir()

    proc = run_playbook(lab.dir, "-i", inventory, "playbooks/rotate_all.yml", "-l", "lab", "-e", "vault_rotate_force=true",
                        extra_env=env)
    assert proc.returncode == 0, out(proc)[-4000:]
    report = json.loads((state / "reports" / "latest.json").read_text())
    assert report["status"] == "success" and report["env"] == "lab"
    assert report["summary"]["rotated"] == report["summary"]["slots"] > 0, report["summary"]
    assert sorted(p.name for p in state.iterdir()) == ["reports"], "the lock was not released: %s" % sorted(
        state.iterdir())
    assert not (Path(lab.dir) / "reports").exists() and not lock_path(lab).exists()
    # set_stats: one vault_rotate_report for the run (not per host), pointing at the report files
    stats = out(proc).split("CUSTOM STATS", 1)[-1]
    assert "RUN:" in stats and "vault_rotate_report" in stats, out(proc)[-3000:]
    assert report["run_id"] in stats and str(state / "reports" / ("lab-%s.json" % report["run_id"])) in stats
    assert not re.search(r"^\s*lab-controller:", stats, re.M), "the summary was published per host"
