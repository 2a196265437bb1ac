"""VaultClient / VaultModule: option checks before any network call, SNI distinct
from the address, client cert on every request, keep-alive, bounded retries.

The server side is a real TLS HTTP server (stdlib) on 127.0.0.1:231xx that
requires a client cert and records what it saw; it answers like Vault does
(status + JSON). The real-OpenBao behaviour is covered by tests/integration.
"""
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._tls import make_context
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import (
    CONNECTION_ARGSPEC,
    VaultClient,
    backoff_delays,
)

from helpers import run_module
from lab import port_free
from pki_fixtures import PKI, key_pem, pem

SNI = "vault.prod.privsec.ch"
PORTS = range(23100, 23200)  # this suite's share of the 23000-23999 range


@pytest.fixture(scope="module")
def pki():
    return PKI("vaultclient")


@pytest.fixture(scope="module")
def files(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("vc")

    def write(name, text):
        p = d / name
        p.write_text(text)
        p.chmod(0o600)
        return str(p)

    server_key, server_cert = pki.leaf(SNI, dns=[SNI])  # no IP SAN: 127.0.0.1 must not verify
    client_key, client_cert = pki.leaf("vault-admin-prod")
    other_key, _ = pki.leaf("other")
    return {
        "dir": d,
        "ca": write("ca.pem", pem(pki.root)),
        "server_crt": write("server.crt", pem(server_cert) + pem(pki.intermediate)),
        "server_key": write("server.key", key_pem(server_key)),
        "client_crt": write("admin.crt", pem(client_cert) + pem(pki.intermediate)),
        "client_key": write("admin.key", key_pem(client_key)),
        "other_key": write("other.key", key_pem(other_key)),
        "client_ca": write("client_ca.pem", pem(pki.root) + pem(pki.intermediate)),
    }


class FakeVault(ThreadingHTTPServer):
    """A TLS HTTP server that requires a client cert and answers a script of statuses."""

    daemon_threads = True

    def __init__(self, port, files):
        self.seen = []  # (method, path, host header, has token, sni, client cn)
        self.script = []  # statuses to answer, then 200
        self.sni = []
        self.namespaces = []  # X-Vault-Namespace of each request (None: absent)
        self.connections = 0
        self.close_after_each = False
        super().__init__(("127.0.0.1", port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(files["server_crt"], files["server_key"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(files["client_ca"])
        ctx.sni_callback = lambda sock, name, c: self.sni.append(name)
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request, client_address):
        # A client that gives up (hostname check, test end) is expected; keep the output clean.
        self.errors = getattr(self, "errors", 0) + 1

    def get_request(self):
        sock, addr = self.socket.accept()
        self.connections += 1
        return sock, addr


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        cert = self.connection.getpeercert() or {}
        cn = dict(x[0] for x in cert.get("subject", ())).get("commonName")
        srv = self.server
        srv.seen.append((self.command, self.path, self.headers.get("Host"), "X-Vault-Token" in self.headers,
                         cn, body))
        srv.namespaces.append(self.headers.get("X-Vault-Namespace"))
        status = srv.script.pop(0) if srv.script else 200
        payload = {"errors": ["Vault is sealed"]} if status == 503 else {"errors": []} if status >= 400 else {
            "data": {"path": self.path}}
        if self.path.endswith("/login"):
            payload = {"auth": {"client_token": "s.fake-token", "policies": ["vault-rotate-admin"]}}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        if srv.close_after_each:
            self.close_connection = True  # like an idle timeout: close without saying so

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@pytest.fixture
def vault(files):
    port = next(p for p in PORTS if port_free(p))
    server = FakeVault(port, files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.port = port
    yield server
    server.shutdown()
    server.server_close()


def client(files, port, **kw):
    args = dict(ca_cert=files["ca"], client_cert=files["client_crt"], client_key=files["client_key"],
                tls_server_name=SNI)
    args.update(kw)
    return VaultClient("https://127.0.0.1:%d" % port, **args)


# --- the connection ------------------------------------------------------------------------


def test_sni_and_hostname_check_use_the_tls_server_name(files, vault):
    c = client(files, vault.port)
    assert c.read("sys/mounts")["data"]["path"] == "/v1/sys/mounts"  # the whole answer body
    assert vault.sni == [SNI]
    method, path, host, _token, cn, _body = vault.seen[0]
    assert host == "%s:%d" % (SNI, vault.port)
    assert cn == "vault-admin-prod"


def test_ip_address_without_server_name_fails_hostname_check(files, vault):
    c = client(files, vault.port, tls_server_name=None)
    with pytest.raises(RotateError) as info:
        c.read("sys/mounts")
    assert info.value.failure_class == "hostname_mismatch"
    assert c.requests_made == 0


def test_keep_alive_and_client_cert_on_every_request(files, vault):
    c = client(files, vault.port)
    for _ in range(5):
        c.read("sys/health")
    assert c.requests_made == 5
    assert vault.connections == 1
    assert all(seen[4] == "vault-admin-prod" for seen in vault.seen)


def test_nagle_is_off_on_the_connection(files, vault):
    """A POST leaves as two writes (headers, body): with Nagle on, the body waits for the
    server's delayed ACK of the headers, ~40 ms per login, sign and mapping write."""
    c = client(files, vault.port)
    c.write("auth/cert/login", {"name": "x"})
    assert c._conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert vault.seen[0][5] == {"name": "x"}  # the body arrived whole


def test_reconnects_once_when_the_server_closed_an_idle_connection(files, vault):
    vault.close_after_each = True
    c = client(files, vault.port)
    for _ in range(3):
        c.read("sys/health")
    assert vault.connections == 3
    assert len(vault.seen) == 3


def test_login_cert_sets_token_and_later_requests_send_it(files, vault):
    c = client(files, vault.port)
    auth = c.login_cert("cert", "admin")
    assert auth["policies"] == ["vault-rotate-admin"]
    assert vault.seen[0][1] == "/v1/auth/cert/login" and vault.seen[0][3] is False
    assert vault.seen[0][5] == {"name": "admin"}
    c.read("sys/mounts")
    assert vault.seen[1][3] is True


def test_health_returns_non_200_statuses_without_raising(files, vault):
    vault.script = [503, 429, 501, 473]
    c = client(files, vault.port)
    assert [c.health()[0] for _ in range(4)] == [503, 429, 501, 473]


def test_http_errors_are_classified(files, vault):
    vault.script = [403, 400]
    c = client(files, vault.port, token="s.SECRET-TOKEN")
    with pytest.raises(RotateError) as info:
        c.write("auth/cert/certs/admin", {"x": 1})
    assert info.value.failure_class == "permission_denied"
    assert "auth/cert/certs/admin" in info.value.message
    assert "SECRET-TOKEN" not in json.dumps(info.value.as_result())
    with pytest.raises(RotateError) as info:
        c.write("pki-prod/sign/x", {})
    assert info.value.failure_class == "bad_input"


def test_read_returns_none_on_404(files, vault):
    vault.script = [404]
    assert client(files, vault.port).read("auth/cert/certs/missing") is None


def test_no_retries_by_default(files, vault):
    vault.script = [503]
    c = client(files, vault.port)
    with pytest.raises(RotateError) as info:
        c.read("sys/mounts")
    assert info.value.failure_class == "sealed"
    assert c.requests_made == 1


def test_retries_503_and_429_with_backoff_then_succeeds(files, vault):
    vault.script = [503, 429]
    c = client(files, vault.port, retries=3)
    start = time.monotonic()
    assert c.read("sys/mounts") is not None
    assert c.requests_made == 3
    assert time.monotonic() - start >= 0.25 + 0.5 - 0.05


def test_retries_are_bounded(files, vault):
    vault.script = [503, 503, 503]
    c = client(files, vault.port, retries=1)
    with pytest.raises(RotateError):
        c.read("sys/mounts")
    assert c.requests_made == 2


def test_4xx_is_never_retried(files, vault):
    vault.script = [403]
    c = client(files, vault.port, retries=3)
    with pytest.raises(RotateError):
        c.read("sys/mounts")
    assert c.requests_made == 1


def test_refused_is_retried_then_classified():
    port = next(p for p in PORTS if port_free(p))
    c = VaultClient("https://127.0.0.1:%d" % port, retries=1)
    with pytest.raises(RotateError) as info:
        c.health()
    assert info.value.failure_class == "refused"


def test_backoff_grows_and_is_capped():
    delays = backoff_delays()
    assert [next(delays) for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_unseal_error_never_echoes_the_key(files, vault):
    vault.script = [400]
    c = client(files, vault.port)
    with pytest.raises(RotateError) as info:
        c.unseal("SECRET-UNSEAL-KEY")
    assert "SECRET-UNSEAL-KEY" not in json.dumps(info.value.as_result())


# --- the context: problems found before any network call -----------------------------------


def test_invalid_url():
    for url in ("", "ftp://x", "https://"):
        with pytest.raises(RotateError) as info:
            VaultClient(url)
        assert info.value.failure_class == "bad_input"


def test_missing_files(files):
    with pytest.raises(RotateError) as info:
        make_context(ca_cert=str(files["dir"] / "nope.pem"))
    assert info.value.failure_class == "missing_file"
    with pytest.raises(RotateError) as info:
        make_context(client_cert=files["client_crt"], client_key=str(files["dir"] / "nope.key"))
    assert info.value.failure_class == "missing_file"


def test_key_of_another_cert_is_key_mismatch(files):
    with pytest.raises(RotateError) as info:
        make_context(client_cert=files["client_crt"], client_key=files["other_key"])
    assert info.value.failure_class == "key_mismatch"


def test_garbage_ca_bundle_is_bad_pem(files):
    bad = files["dir"] / "garbage.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(RotateError) as info:
        make_context(ca_cert=str(bad))
    assert info.value.failure_class == "bad_pem"


def test_encrypted_key_fails_instead_of_prompting(files, pki):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(open(files["client_key"], "rb").read(), password=None)
    enc = files["dir"] / "enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(RotateError) as info:
        make_context(client_cert=files["client_crt"], client_key=str(enc))
    assert info.value.failure_class == "bad_pem"
    assert "passphrase" in info.value.message


def test_key_without_cert(files):
    with pytest.raises(RotateError) as info:
        make_context(client_key=files["client_key"])
    assert info.value.failure_class == "bad_input"


# --- VaultModule option handling (through a real module run, no network reached) ------------


def _env(**extra):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(extra)
    return env


def test_missing_url_names_vault_addr():
    r = run_module("vault_health", {}, env=_env())
    assert r["failed"] and r["failure_class"] == "bad_input"
    assert "VAULT_ADDR" in r["msg"]


def test_client_cert_without_key(files):
    r = run_module("vault_health", {"url": "https://127.0.0.1:23199", "client_cert": files["client_crt"]}, env=_env())
    assert r["failed"] and "client_key" in r["msg"]


def test_file_that_does_not_exist(files):
    r = run_module("vault_health", {"url": "https://127.0.0.1:23199", "ca_cert": "/nonexistent/ca.pem"}, env=_env())
    assert r["failed"] and r["failure_class"] == "missing_file" and "/nonexistent/ca.pem" in r["msg"]


def test_bao_twins_and_vault_precedence(files, vault):
    env = _env(BAO_ADDR="https://127.0.0.1:%d" % vault.port, BAO_CACERT=files["ca"],
               BAO_CLIENT_CERT=files["client_crt"], BAO_CLIENT_KEY=files["client_key"],
               BAO_TLS_SERVER_NAME=SNI, VAULT_TLS_SERVER_NAME=SNI)
    r = run_module("vault_health", {}, env=env)
    assert not r["failed"], r
    assert r["ready"] is True and vault.sni == [SNI]
    env["VAULT_ADDR"] = "https://127.0.0.1:23199"  # VAULT_* wins over BAO_*
    r = run_module("vault_health", {}, env=env)
    assert r["failed"] and "23199" in r["msg"]


def test_connection_argspec_contract():
    assert set(CONNECTION_ARGSPEC) == {"url", "ca_cert", "client_cert", "client_key", "tls_server_name",
                                       "validate_certs", "timeout", "retries", "auth_method", "cert_auth_mount",
                                       "cert_role", "token", "namespace", "proxy"}
    assert CONNECTION_ARGSPEC["token"]["no_log"] is True
    assert CONNECTION_ARGSPEC["url"]["fallback"][1] == ["VAULT_ADDR", "BAO_ADDR"]
    assert CONNECTION_ARGSPEC["namespace"]["fallback"][1] == ["VAULT_NAMESPACE", "BAO_NAMESPACE"]
    assert CONNECTION_ARGSPEC["proxy"]["fallback"][1] == ["VAULT_PROXY_ADDR", "BAO_PROXY_ADDR"]


def test_namespace_header_on_every_request_but_the_root_only_ones(files, vault):
    c = client(files, vault.port, namespace="/team-a/prod/")
    c.read("sys/mounts")
    c.health()
    c.seal_status()
    c.login_cert("cert", "admin")
    assert vault.namespaces == ["team-a/prod", None, None, "team-a/prod"]
