"""The lab is what it claims: real OpenBao, real TLS, real agents, real nginx. No mocks."""
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lab import PROXY_APP, SNI, handshake, http_json, pid_alive, pid_cmdline, tls_context

pytestmark = pytest.mark.lab


def _serial_of_file(path):
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number


def _admin_ctx(lab):
    env = lab.admin_env()
    return tls_context(env["VAULT_CACERT"], env["VAULT_CLIENT_CERT"], env["VAULT_CLIENT_KEY"])


def _login(lab, mapping, certfile, keyfile):
    ctx = tls_context(lab.admin_env()["VAULT_CACERT"], certfile, keyfile)
    return http_json(lab.vault_port, "POST", "/v1/auth/cert/login", ctx, body={"name": mapping})


def _all_apps(lab):
    return lab.info["apps"] + [lab.info["proxy_app"]]


# ---- listener --------------------------------------------------------------

def test_client_without_cert_is_refused_with_certificate_required(lab):
    ctx = tls_context(lab.admin_env()["VAULT_CACERT"])  # trusts the server, presents no cert
    with socket.create_connection(("127.0.0.1", lab.vault_port), timeout=5) as sock:
        with pytest.raises(ssl.SSLError) as err:
            # TLS 1.3: the handshake completes on the client side; the server's
            # alert arrives with the first read.
            with ctx.wrap_socket(sock, server_hostname=SNI) as tls:
                tls.sendall(b"GET /v1/sys/seal-status HTTP/1.1\r\nHost: %s\r\n\r\n" % SNI.encode())
                tls.recv(1024)
    assert "certificate required" in str(err.value).lower()


def test_listener_serves_fullchain_for_sni_and_verifies_with_root(lab):
    der, version = handshake(lab.vault_port, SNI, _admin_ctx(lab))
    cert = x509.load_der_x509_certificate(der)
    paths = lab.info["paths"]
    assert cert.serial_number == _serial_of_file(paths["server_crt"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SNI
    fullchain = Path(paths["fullchain"]).read_text()
    assert fullchain.count("BEGIN CERTIFICATE") == 2
    assert Path(paths["ca_chain"]).read_text().count("BEGIN CERTIFICATE") == 2
    assert version in ("TLSv1.2", "TLSv1.3")


def test_initial_certificates_are_due_for_rotation_but_valid(lab):
    now = time.time()
    files = [lab.info["paths"]["server_crt"], lab.info["paths"]["admin_crt"]]
    for app in _all_apps(lab):
        files.append(lab.info["app_paths"][app]["agent_crt"])
    for f in files:
        c = x509.load_pem_x509_certificate(Path(f).read_bytes())
        start, end = c.not_valid_before_utc.timestamp(), c.not_valid_after_utc.timestamp()
        if abs((end - start) - 86400) > 120:
            continue  # already rotated by someone's test: no longer the initial one
        assert (now - start) / (end - start) > 2.0 / 3.0, f
        assert end > now, f


def test_admin_cert_gets_seal_status_and_cert_login(lab):
    ctx = _admin_ctx(lab)
    status, seal = http_json(lab.vault_port, "GET", "/v1/sys/seal-status", ctx)
    assert status == 200 and seal["initialized"] is True and seal["sealed"] is False
    env = lab.admin_env()
    status, data = _login(lab, "admin", env["VAULT_CLIENT_CERT"], env["VAULT_CLIENT_KEY"])
    assert status == 200, data
    auth = data["auth"]
    assert "vault-rotate-admin" in auth["token_policies"]
    assert auth["metadata"]["common_name"] == "vault-admin-prod"
    status, me = http_json(lab.vault_port, "GET", "/v1/auth/token/lookup-self", ctx, token=auth["client_token"])
    assert status == 200 and me["data"]["display_name"] == "cert-admin"


def test_admin_policy_covers_a_rotation(lab):
    env = lab.admin_env()
    _, data = _login(lab, "admin", env["VAULT_CLIENT_CERT"], env["VAULT_CLIENT_KEY"])
    token = data["auth"]["client_token"]
    ctx = _admin_ctx(lab)
    paths = ["pki-prod/sign/vault-server", "pki-prod/issue/agent-mtls-ncprd1", "auth/cert/certs/agent-ncprd1",
             "pki-prod/cert/ca_chain", "sys/auth", "pki-prod/issuer/default"]
    status, caps = http_json(lab.vault_port, "POST", "/v1/sys/capabilities-self", ctx, token=token,
                             body={"paths": paths})
    assert status == 200, caps
    assert "update" in caps["pki-prod/sign/vault-server"]
    assert "update" in caps["pki-prod/issue/agent-mtls-ncprd1"]
    assert {"read", "update", "delete"} <= set(caps["auth/cert/certs/agent-ncprd1"])
    assert "read" in caps["pki-prod/cert/ca_chain"] and "read" in caps["sys/auth"]
    # and a real CSR signature for the listener name (RSA 2048: the listener's role pins RSA, like production)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SNI)]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    status, signed = http_json(lab.vault_port, "POST", "/v1/pki-prod/sign/vault-server", ctx, token=token,
                               body={"csr": csr, "common_name": SNI, "ip_sans": "127.0.0.1", "ttl": "1h"})
    assert status == 200, signed
    cert = x509.load_pem_x509_certificate(signed["data"]["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SNI
    # an app's agent token may not touch the mappings
    agent_token = Path(lab.info["app_paths"]["ncprd1"]["token"]).read_text().strip()
    status, _ = http_json(lab.vault_port, "GET", "/v1/auth/cert/certs/admin", ctx, token=agent_token)
    assert status == 403


def test_admin_mapping_refuses_an_agent_cert(lab):
    a = lab.info["app_paths"]["ncprd1"]
    status, data = _login(lab, "admin", a["agent_crt"], a["agent_key"])
    assert status in (400, 403), data


# ---- agents ----------------------------------------------------------------

@pytest.mark.parametrize("app", ["ncprd1", "resume2me", PROXY_APP])
def test_agent_holds_a_working_token_with_mapped_policies(lab, app):
    if app not in _all_apps(lab):
        pytest.skip("app %s not in this lab" % app)
    a = lab.info["app_paths"][app]
    assert lab.unit(a["agent_unit"], "status").returncode == 0
    token = Path(a["token"]).read_text().strip()
    assert token
    assert oct(os.stat(a["token"]).st_mode & 0o777) == "0o600"
    who = json.loads(Path(a["whoami"]).read_text())
    mapped = lab.info["cert_auth"]["mappings"][a["agent_mapping"]]["token_policies"]
    assert who["display_name"] == "cert-%s" % a["agent_mapping"]
    assert set(mapped) <= set(who["policies"])
    # the sink token is live: lookup-self with it (TLS with a client cert, as the listener requires)
    status, me = http_json(lab.vault_port, "GET", "/v1/auth/token/lookup-self", _admin_ctx(lab), token=token)
    assert status == 200, me
    assert me["data"]["display_name"] == who["display_name"]
    # and the agent's own login cert works through its mapping
    status, data = _login(lab, a["agent_mapping"], a["agent_crt"], a["agent_key"])
    assert status == 200, data
    assert set(mapped) <= set(data["auth"]["token_policies"])


def test_agent_restart_logs_in_again(lab):
    """The restart a rotation runs (lab.json's shell line): the old agent gone, the bundled bao
    binary (not its Python launcher) in a session of its own, a new login."""
    a = lab.info["app_paths"]["ncprd1"]
    before = json.loads(Path(a["whoami"]).read_text())["creation_time"]
    old_pid = lab.lab.unit_pid(a["agent_unit"])
    time.sleep(1.1)  # creation_time has a 1 s resolution
    proc = lab.unit(a["agent_unit"], "restart")
    assert proc.returncode == 0, proc.stderr
    pid = lab.lab.unit_pid(a["agent_unit"])
    assert pid and pid != old_pid and not pid_alive(old_pid)
    with open("/proc/%d/exe" % pid, "rb") as exe:
        assert exe.read(4) == b"\x7fELF"
    assert os.getsid(pid) == pid
    deadline = time.time() + 20
    after = before
    while time.time() < deadline:
        try:
            after = json.loads(Path(a["whoami"]).read_text())["creation_time"]
        except (OSError, ValueError):
            pass
        if after > before:
            break
        time.sleep(0.1)
    assert after > before
    # not running: the shell line hands over to labctl, which starts it
    assert lab.unit(a["agent_unit"], "stop").returncode == 0 and lab.lab.unit_pid(a["agent_unit"]) is None
    proc = lab.unit(a["agent_unit"], "restart")
    assert proc.returncode == 0 and "started" in proc.stdout, proc.stdout + proc.stderr
    assert lab.lab.unit_pid(a["agent_unit"])


def test_proxy_agent_renders_the_ca_chain(lab):
    a = lab.info["app_paths"][PROXY_APP]
    deadline = time.time() + 15
    while time.time() < deadline and not Path(a["rendered_ca_chain"]).exists():
        time.sleep(0.1)
    rendered = Path(a["rendered_ca_chain"]).read_text()
    inter = Path(lab.info["paths"]["int_crt"]).read_text().strip()
    assert inter in rendered


# ---- frontends and proxy ---------------------------------------------------

@pytest.mark.parametrize("app", ["ncprd1", "resume2me"])
def test_frontend_serves_its_leaf_for_its_sni(lab, app):
    if app not in lab.info["apps"]:
        pytest.skip("app %s not in this lab" % app)
    a = lab.info["app_paths"][app]
    ca = a["ca"]
    der, _ = handshake(a["port"], a["sni"], tls_context(ca))  # verifies chain + hostname
    assert x509.load_der_x509_certificate(der).serial_number == _serial_of_file(a["frontend_crt"])
    status, body = http_json(a["port"], "GET", "/", tls_context(ca), sni=a["sni"])
    assert status == 200 and body["app"] == app
    with pytest.raises(ssl.SSLError):  # another name gets no certificate at all
        handshake(a["port"], "nope.prod.privsec.ch", tls_context(ca))


def test_proxy_handshake_verifies_and_forwards_to_the_listener(lab):
    a = lab.info["app_paths"][PROXY_APP]
    ctx = tls_context(a["current_ca_chain"])
    der, _ = handshake(lab.proxy_port, SNI, ctx)
    assert x509.load_der_x509_certificate(der).serial_number == _serial_of_file(a["proxy_crt"])
    status, seal = http_json(lab.proxy_port, "GET", "/v1/sys/seal-status", ctx)
    assert status == 200 and seal["sealed"] is False
    # a cert login through the proxy becomes the proxy's identity (its upstream client cert)
    status, data = http_json(lab.proxy_port, "POST", "/v1/auth/cert/login", ctx, body={"name": "agent-proxyprod"})
    assert status == 200, data
    assert data["auth"]["metadata"]["common_name"] == "agent-proxyprod.prod.privsec.ch"


# ---- supervisor ------------------------------------------------------------

def test_lab_json_has_commands_and_no_secrets(lab):
    text = (lab.dir / "lab.json").read_text()
    init = json.loads((lab.dir / "secrets" / "init.json").read_text())
    assert init["root_token"] not in text
    for k in init["keys_base64"]:
        assert k not in text
    info = json.loads(text)
    for name, unit in info["units"].items():
        assert set(unit["commands"]) == {"status", "start", "stop", "reload", "restart"}
        shell = ("status", "reload", "restart") if unit["kind"] == "agent" else ("status", "reload")
        for action in set(("start", "stop", "restart")) - set(shell):
            assert unit["commands"][action][-2:] == [name, action]
        # status, reload and an agent's restart are shell lines (a few ms), labctl when their own
        # check fails (the unit is not running): it answers
        for action in shell:
            line = unit["commands"][action]
            tail = line[:-len("; fi")] if line.endswith("; fi") else line
            assert isinstance(line, str) and tail.endswith("unit %s %s" % (name, action)), line
        status = subprocess.run(["/bin/sh", "-c", unit["commands"]["status"]], capture_output=True, check=False)
        assert status.returncode == 0, name
    assert oct(os.stat(lab.dir / "secrets" / "init.json").st_mode & 0o777) == "0o600"


def test_second_up_is_a_noop(lab):
    pids = {n: u for n, u in ((n, lab.lab.unit_pid(n)) for n in lab.info["units"])}
    t0 = time.monotonic()
    proc = lab.labctl("up")
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert {n: lab.lab.unit_pid(n) for n in lab.info["units"]} == pids
    assert took < 5


def test_unit_status_exit_codes(lab):
    assert lab.unit("container-vaultprod", "status").returncode == 0
    proc = lab.labctl("unit", "no-such-unit", "status")
    assert proc.returncode == 1 and "unknown unit" in proc.stderr


def test_status_reports_healthy(lab):
    proc = lab.labctl("status", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = json.loads(proc.stdout)
    assert st["healthy"] and st["seal"]["sealed"] is False
    assert st["listener"]["sni"] == SNI and st["listener"]["serial"]


# ---- throwaway labs (destructive) ------------------------------------------

@pytest.mark.destructive
def test_restarted_vault_comes_back_sealed_and_unseal_fixes_it(throwaway_lab):
    t = throwaway_lab()
    ctx = _admin_ctx(t)
    proc = t.unit("container-vaultprod", "restart")
    assert proc.returncode == 0, proc.stderr
    assert t.unit("container-vaultprod", "status").returncode == 0
    status, seal = http_json(t.vault_port, "GET", "/v1/sys/seal-status", ctx)
    assert status == 200 and seal["sealed"] is True
    status, _ = http_json(t.vault_port, "GET", "/v1/sys/health", ctx)
    assert status == 503
    proc = t.labctl("unseal")
    assert proc.returncode == 0, proc.stderr
    status, _ = http_json(t.vault_port, "GET", "/v1/sys/health", ctx)
    assert status == 200


@pytest.mark.destructive
def test_nginx_reload_refuses_a_broken_config(throwaway_lab):
    t = throwaway_lab()
    conf = Path(t.info["app_paths"]["ncprd1"]["nginx_conf"])
    good = conf.read_text()
    conf.write_text(good + "\nthis_is_not_a_directive;\n")
    proc = t.unit("nginx-ncprd1", "reload")
    assert proc.returncode != 0
    assert "this_is_not_a_directive" in proc.stderr
    assert t.unit("nginx-ncprd1", "status").returncode == 0  # still serving the old config
    conf.write_text(good)
    assert t.unit("nginx-ncprd1", "reload").returncode == 0


@pytest.mark.destructive
def test_busy_port_gives_a_clear_message(throwaway_lab):
    t = throwaway_lab()
    other = throwaway_lab(up=False, vault_port=t.vault_port)
    proc = other.labctl("up")
    assert proc.returncode == 1
    assert "port %d" % t.vault_port in proc.stderr and "already in use" in proc.stderr


@pytest.mark.destructive
def test_down_leaves_no_process_and_no_port(throwaway_lab):
    t = throwaway_lab()
    info = t.info
    pids = [t.lab.unit_pid(n) for n in info["units"]]
    assert all(pids)
    ports = [info["ports"]["vault"], info["ports"]["vault_cluster"], info["ports"]["proxy"]]
    ports += list(info["ports"]["frontends"].values())
    t0 = time.monotonic()
    proc = t.labctl("down")
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert not [p for p in pids if pid_alive(p)]
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    leftovers = []
    for d in os.listdir("/proc"):
        if d.isdigit() and pid_alive(int(d)) and str(t.dir) in pid_cmdline(int(d)):
            leftovers.append((d, pid_cmdline(int(d))))
    assert not leftovers
    # the shell status line says so too (the pid files may stay; no live process has the unit's config)
    for name, unit in info["units"].items():
        status = subprocess.run(["/bin/sh", "-c", unit["commands"]["status"]], capture_output=True, check=False)
        assert status.returncode != 0, name
    assert took < 15
