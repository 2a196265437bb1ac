"""`playbooks/rotate_all.yml -l lab` against a throwaway lab, checked from the outside.

Every check here is independent of the roles: serials are read from the files
with `cryptography`, served certificates come from real TLS handshakes (SNI,
verified chain, hostname check), logins and agent tokens come from the lab's own
HTTP client and the agents' rendered whoami.json. No mocks.
"""
import hashlib
import json
import os
import re
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from lab import SNI, handshake, http_json, tls_context

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "rotate_all.yml"

pytestmark = [pytest.mark.lab, pytest.mark.destructive, pytest.mark.slow]

# Tasks of the control roles that write bookkeeping on the controller on every
# run (run lock, report files): not a rotation, allowed on a second run.
BOOKKEEPING_TASK = re.compile(r"run lock|Write the (JSON|Markdown) report|report folder", re.I)


def _ansible(lab, playbook, *extra, timeout=900):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "ANSIBLE_"))}
    env.update({
        "LAB_DIR": str(lab.dir),
        "LAB_VAULT_PORT": str(lab.vault_port),
        "LAB_PROXY_PORT": str(lab.proxy_port),
        "LAB_FRONTEND_PORT_BASE": str(lab.frontend_port_base),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    })
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), str(playbook), "-l", "lab"] + list(extra)
    if not Path(argv[0]).exists():
        argv[0] = "ansible-playbook"
    return subprocess.run(argv, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _tail(proc, n=6000):
    return (proc.stdout + proc.stderr)[-n:]


def _recap(output):
    """{host: {ok, changed, failed, ...}} from the PLAY RECAP."""
    recap = {}
    for host, fields in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", fields)}
    return recap


def _changed_tasks(output):
    """Names of the tasks that reported `changed` on any host."""
    names, current = [], None
    for line in output.splitlines():
        m = re.match(r"^TASK \[(.*)\] \**$", line)
        if m:
            current = m.group(1)
        elif line.startswith("changed:") and current:
            names.append(current)
    return names


def _cert(path):
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _slots(info):
    """slot -> (cert file, key file) of every certificate the run rotates."""
    p, a = info["paths"], info["app_paths"]
    slots = {"admin": (p["admin_crt"], p["admin_key"]), "listener": (p["server_crt"], p["server_key"])}
    for app in info["apps"] + [info["proxy_app"]]:
        slots["agent-%s" % app] = (a[app]["agent_crt"], a[app]["agent_key"])
    for app in info["apps"]:
        slots["frontend-%s" % app] = (a[app]["frontend_crt"], a[app]["frontend_key"])
    proxy = a[info["proxy_app"]]
    slots["frontend-%s" % info["proxy_app"]] = (proxy["proxy_crt"], proxy["proxy_key"])
    return slots


def _serials(info):
    return {name: _cert(crt).serial_number for name, (crt, _key) in _slots(info).items()}


def _material_hashes(lab):
    """sha256 of every key/cert/chain file of the lab (agents' tokens and renders excluded)."""
    out = {}
    for top in ("home", "root"):
        for path in sorted((lab.dir / top).rglob("*")):
            if not path.is_file() or path.suffix not in (".pem", ".crt", ".key", ".prev", ".next"):
                continue
            out[str(path.relative_to(lab.dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _admin_ctx(lab):
    env = lab.admin_env()
    return tls_context(env["VAULT_CACERT"], env["VAULT_CLIENT_CERT"], env["VAULT_CLIENT_KEY"])


def _served_serial(port, sni, ctx):
    der, _version = handshake(port, sni, ctx)
    return x509.load_der_x509_certificate(der).serial_number


def _whoami(info, app):
    return json.loads(Path(info["app_paths"][app]["whoami"]).read_text())


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


class ListenerProbe(threading.Thread):
    """Every ~20 ms: a verified handshake + GET /v1/sys/seal-status with the admin identity.

    The admin files are read again for every probe (they rotate during the run);
    a moment where cert and key on disk do not match yet is the client's problem,
    counted apart, never as a server failure.
    """

    def __init__(self, lab, interval=0.02):
        super().__init__(daemon=True)
        self.lab, self.interval = lab, interval
        self.stopped = threading.Event()
        self.ok, self.client_side, self.failures = 0, 0, []

    def run(self):
        while not self.stopped.is_set():
            try:
                ctx = _admin_ctx(self.lab)
            except (ssl.SSLError, OSError):
                self.client_side += 1
            else:
                try:
                    status, _body = http_json(self.lab.vault_port, "GET", "/v1/sys/seal-status", ctx, timeout=5)
                    if status == 200:
                        self.ok += 1
                    else:
                        self.failures.append("HTTP %s" % status)
                except Exception as exc:  # every failure class counts here
                    self.failures.append("%s: %s" % (type(exc).__name__, exc))
            self.stopped.wait(self.interval)

    def stop(self):
        self.stopped.set()
        self.join(10)


def test_rotate_all_rotates_every_slot_then_changes_nothing(throwaway_lab):
    """One lab for the whole life cycle (each rotate_all run is the expensive part):
    --check on the fresh lab plans rotations and changes nothing, the real run
    rotates every slot with zero failed listener handshakes, a rerun changes
    nothing, --check then plans nothing."""
    lab = throwaway_lab()
    info = lab.info

    # --check on the fresh lab (every slot due): the plan says ROTATE, nothing changes,
    # no key is staged.
    fresh_hashes = _material_hashes(lab)
    fresh_check = _ansible(lab, PLAYBOOK, "--check")
    assert fresh_check.returncode == 0, _tail(fresh_check)
    assert "ROTATE" in fresh_check.stdout
    assert _material_hashes(lab) == fresh_hashes
    assert not list(lab.dir.rglob("*.next")), "check mode staged a key"

    before = _serials(info)
    modes_before = {p: stat.S_IMODE(os.stat(p).st_mode) for pair in _slots(info).values() for p in pair}
    owners_before = {p: (os.stat(p).st_uid, os.stat(p).st_gid) for pair in _slots(info).values() for p in pair}
    started = time.time()

    probe = ListenerProbe(lab)
    probe.start()
    try:
        first = _ansible(lab, PLAYBOOK)
    finally:
        probe.stop()
    assert first.returncode == 0, _tail(first)

    # No restart was required (the CA set did not change), so the listener must
    # have answered every probe while its cert was replaced (SIGHUP, no restart).
    report = json.loads((lab.dir / "reports" / "latest.json").read_text())
    restart = [p for p in report.get("phases", []) if p.get("phase") == "restart"]
    assert restart and restart[0]["gate"] == "skipped", restart
    # Each restarted agent's login gate was its own login with the new cert (no second login),
    # and with nothing restarted the healthcheck took the phases' proofs of each host's gates
    # (only what no phase proved is checked again).
    phases = {p["phase"]: p for p in report["phases"]}
    for app in info["apps"]:
        assert "agent %s login (by the agent's own login)" % app in phases["agent_login"]["msg"], phases["agent_login"]
    assert int(report["extra"]["host_gates_proven_earlier"]) >= 4 * len(info["apps"]), report["extra"]
    # Each app host's, the server's and the proxy's phases proved every gate and unit there (agent,
    # nginx, Vault, proxy running): the healthcheck ended those hosts without sending them a task;
    # only the admin host is visited (its admin phase came before the new listener cert).
    assert int(report["extra"]["hosts_not_visited"]) == len(info["apps"]) + 2, report["extra"]
    assert "proven by this run's phases" in phases["healthcheck"]["msg"], phases["healthcheck"]
    print("listener probe during the run: %d ok, %d failed, %d skipped (admin files mid-install)"
          % (probe.ok, len(probe.failures), probe.client_side))
    assert probe.ok > 100, (probe.ok, probe.failures[:5])
    assert probe.failures == [], "%d of %d probes failed: %s" % (
        len(probe.failures), len(probe.failures) + probe.ok, probe.failures[:5])

    # Every serial changed, and the files are a matching, verified pair.
    after = _serials(info)
    unchanged = sorted(name for name in before if before[name] == after[name])
    assert not unchanged, "not rotated: %s" % unchanged
    for name, (crt, key) in _slots(info).items():
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, name
        assert stat.S_IMODE(os.stat(crt).st_mode) == modes_before[crt] == 0o644, name
        assert (os.stat(key).st_uid, os.stat(key).st_gid) == owners_before[key], name
        assert (os.stat(crt).st_uid, os.stat(crt).st_gid) == owners_before[crt], name
        days_left = (_cert(crt).not_valid_after_utc.timestamp() - time.time()) / 86400
        assert days_left > 7, "%s: only %.1f days left after rotation" % (name, days_left)

    # The listener serves the NEW cert for the SNI name, chain verified, hostname checked,
    # and seal-status answers with the NEW admin identity.
    assert _served_serial(lab.vault_port, SNI, _admin_ctx(lab)) == after["listener"]
    status, seal = http_json(lab.vault_port, "GET", "/v1/sys/seal-status", _admin_ctx(lab))
    assert status == 200 and seal["sealed"] is False
    fullchain = Path(info["paths"]["fullchain"]).read_text()
    assert fullchain.count("BEGIN CERTIFICATE") == 2
    assert x509.load_pem_x509_certificates(fullchain.encode())[0].serial_number == after["listener"]

    # Frontends and the proxy serve their new certs, verified against the root; a
    # request through the proxy reaches Vault.
    root_ctx = tls_context(lab.admin_env()["VAULT_CACERT"])
    for app in info["apps"]:
        port = info["app_paths"][app]["port"]
        assert _served_serial(port, "%s.prod.privsec.ch" % app, root_ctx) == after["frontend-%s" % app]
    proxy = info["proxy_app"]
    assert _served_serial(lab.proxy_port, SNI, root_ctx) == after["frontend-%s" % proxy]
    status, seal = http_json(lab.proxy_port, "GET", "/v1/sys/seal-status", root_ctx)
    assert status == 200 and seal["sealed"] is False

    # Agents logged in again with their new certs: a token created after the run
    # started, with exactly the mapped policies; a direct login with each new cert works.
    mappings = info["cert_auth"]["mappings"]
    for app in info["apps"] + [proxy]:
        who = _wait(lambda app=app: (lambda w: w if w["creation_time"] >= int(started) else None)(_whoami(info, app)))
        assert who, "agent of %s has no token created after the rotation: %s" % (app, _whoami(info, app))
        wanted = set(mappings["agent-%s" % app]["token_policies"])
        assert set(who["policies"]) - {"default"} == wanted, app
        ctx = tls_context(lab.admin_env()["VAULT_CACERT"], info["app_paths"][app]["agent_crt"],
                          info["app_paths"][app]["agent_key"])
        status, login = http_json(lab.vault_port, "POST", "/v1/auth/cert/login", ctx,
                                  body={"name": "agent-%s" % app})
        assert status == 200, (app, login)
        assert set(login["auth"]["token_policies"]) - {"default"} == wanted, app

    # The run left a report on the controller that names every slot.
    assert report["status"] == "success", report.get("status")
    reported = {s["slot"]: s for s in report.get("slots", [])}
    assert len([s for s in reported.values() if s.get("action") == "rotated"]) == len(before), reported.keys()

    # A second run right after changes nothing (only the run's own bookkeeping).
    hashes = _material_hashes(lab)
    second = _ansible(lab, PLAYBOOK)
    assert second.returncode == 0, _tail(second)
    rotations = [t for t in _changed_tasks(second.stdout) if not BOOKKEEPING_TASK.search(t)]
    assert rotations == [], rotations
    recap = _recap(second.stdout)
    assert all(v["changed"] == 0 for h, v in recap.items() if h != "lab-controller"), recap
    assert _serials(info) == after
    assert _material_hashes(lab) == hashes

    # --check prints the plan and changes nothing anywhere.
    check = _ansible(lab, PLAYBOOK, "--check")
    assert check.returncode == 0, _tail(check)
    assert "KEEP" in check.stdout and "ROTATE" not in check.stdout.split("Print the plan")[-1].split("PLAY")[0]
    assert _material_hashes(lab) == hashes


def test_failed_admin_gate_restores_the_previous_admin_cert(throwaway_lab):
    lab = throwaway_lab()
    info = lab.info
    old = _cert(info["paths"]["admin_crt"]).serial_number
    proc = _ansible(lab, REPO / "playbooks" / "admin_cert.yml",
                    "-e", json.dumps({"admin_cert_expected_policies": ["no-such-policy"]}))
    assert proc.returncode != 0, _tail(proc)
    assert "GATE admin_cert FAILED (policy_mismatch)" in proc.stdout + proc.stderr, _tail(proc)
    # The previous admin cert is back, and it still works.
    assert _cert(info["paths"]["admin_crt"]).serial_number == old
    status, _seal = http_json(lab.vault_port, "GET", "/v1/sys/seal-status", _admin_ctx(lab))
    assert status == 200
    status, _login = http_json(lab.vault_port, "POST", "/v1/auth/cert/login", _admin_ctx(lab),
                               body={"name": "admin"})
    assert status == 200


def test_failed_frontend_gate_restores_and_serves_the_previous_cert(throwaway_lab):
    lab = throwaway_lab()
    info = lab.info
    app = info["apps"][0]
    crt = info["app_paths"][app]["frontend_crt"]
    old = _cert(crt).serial_number
    # A new cert can never satisfy "at least 100000 days left": the files gate fails after install.
    proc = _ansible(lab, REPO / "playbooks" / "app_leaf.yml", "-e", "app_leaf_min_days_left=100000")
    assert proc.returncode != 0, _tail(proc)
    assert re.search(r"GATE app_leaf/\S+ FAILED", proc.stdout + proc.stderr), _tail(proc)
    assert _cert(crt).serial_number == old
    root_ctx = tls_context(lab.admin_env()["VAULT_CACERT"])
    port = info["app_paths"][app]["port"]
    assert _served_serial(port, "%s.prod.privsec.ch" % app, root_ctx) == old


def test_listener_that_keeps_the_old_cert_fails_the_gate_and_is_rolled_back(throwaway_lab):
    """A reload that does not take (here: a no-op instead of SIGHUP) must not pass the gate."""
    lab = throwaway_lab()
    info = lab.info
    old = _cert(info["paths"]["server_crt"]).serial_number
    commands = {name: unit["commands"] for name, unit in info["units"].items()}
    commands["container-vaultprod"] = dict(commands["container-vaultprod"], reload=["true"])
    proc = _ansible(lab, REPO / "playbooks" / "server_tls.yml",
                    "-e", json.dumps({"vault_rotate_service_commands": commands, "server_tls_wait_timeout": 3}))
    assert proc.returncode != 0, _tail(proc)
    assert "GATE server_tls FAILED (serial_mismatch)" in proc.stdout + proc.stderr, _tail(proc)
    assert _cert(info["paths"]["server_crt"]).serial_number == old
    assert _served_serial(lab.vault_port, SNI, _admin_ctx(lab)) == old
    fullchain = x509.load_pem_x509_certificates(Path(info["paths"]["fullchain"]).read_bytes())
    assert fullchain[0].serial_number == old


def _add_issuer(lab, make_default=False):
    """A second intermediate in the PKI mount (key in Vault, signed by the offline root)."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization

    token = lab.root_token()
    status, data = lab.lab.api("POST", "/v1/pki-prod/intermediate/generate/internal", token=token,
                               body={"common_name": "pki-prod intermediate CA G2 (test)", "key_type": "ec",
                                     "key_bits": 256})
    assert status < 300, data
    csr = x509.load_pem_x509_csr(data["data"]["csr"].encode())
    paths = lab.lab.p
    root_key = serialization.load_pem_private_key(paths["root_key"].read_bytes(), None)
    root = x509.load_pem_x509_certificate(paths["root_crt"].read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(root.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=700))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    status, data = lab.lab.api("POST", "/v1/pki-prod/intermediate/set-signed", token=token,
                               body={"certificate": pem + paths["root_crt"].read_text()})
    assert status < 300, data
    issuer_id = data["data"]["imported_issuers"][0]
    if make_default:
        status, data = lab.lab.api("POST", "/v1/pki-prod/config/issuers", token=token, body={"default": issuer_id})
        assert status < 300, data
    return issuer_id, cert


def _set_default_issuer(lab, issuer_id):
    status, data = lab.lab.api("POST", "/v1/pki-prod/config/issuers", token=lab.root_token(),
                               body={"default": issuer_id})
    assert status < 300, data


def _unseal_vars(lab, tmp_path):
    """An extra-vars file with the lab's unseal key (0600), as an AWX credential would inject it."""
    keys = json.loads((lab.dir / "secrets" / "init.json").read_text())["keys_base64"]
    path = tmp_path / "unseal.json"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"vault_rotate_unseal_keys": keys}, fh)
    return "@%s" % path


def test_issuer_rollover_trust_first_then_new_issuer_everywhere(throwaway_lab, tmp_path):
    """Trust overlap: a new issuer is first trusted everywhere (client CA file -> restart +
    unseal), then, as the default issuer, signs every new cert without locking anyone out."""
    lab = throwaway_lab()
    info = lab.info
    unseal = _unseal_vars(lab, tmp_path)
    issuer_id, g2 = _add_issuer(lab)
    g2_fp = g2.fingerprint(g2.signature_hash_algorithm)

    def holds_g2(path):
        return any(c.fingerprint(c.signature_hash_algorithm) == g2_fp
                   for c in x509.load_pem_x509_certificates(Path(path).read_bytes()))

    first = _ansible(lab, PLAYBOOK, "-e", unseal)
    assert first.returncode == 0, _tail(first)
    for path in [info["paths"]["ca_chain"], info["app_paths"][info["proxy_app"]]["current_ca_chain"]] + [
            info["app_paths"][app]["ca"] for app in info["apps"] + [info["proxy_app"]]]:
        assert holds_g2(path), "%s does not trust the new issuer" % path
    report = json.loads((lab.dir / "reports" / "latest.json").read_text())
    phases = {p["phase"]: p for p in report["phases"]}
    assert phases["restart"]["gate"] == "passed", phases["restart"]  # the client CA file changed
    assert phases["healthcheck"]["gate"] == "passed", phases["healthcheck"]

    _set_default_issuer(lab, issuer_id)
    second = _ansible(lab, PLAYBOOK, "-e", unseal, "-e", "vault_rotate_force=true")
    assert second.returncode == 0, _tail(second)
    for name, (crt, _key) in _slots(info).items():
        assert _cert(crt).issuer == g2.subject, "%s is not signed by the new issuer" % name
    der, _version = handshake(lab.vault_port, SNI, _admin_ctx(lab))
    assert x509.load_der_x509_certificate(der).issuer == g2.subject
    for app in info["apps"] + [info["proxy_app"]]:
        ctx = tls_context(lab.admin_env()["VAULT_CACERT"], info["app_paths"][app]["agent_crt"],
                          info["app_paths"][app]["agent_key"])
        status, login = http_json(lab.vault_port, "POST", "/v1/auth/cert/login", ctx,
                                  body={"name": "agent-%s" % app})
        assert status == 200, (app, login)
