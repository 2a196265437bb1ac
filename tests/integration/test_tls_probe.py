"""tls_probe against the real lab (OpenBao listener requiring client certs, nginx
frontends and proxy) and against tiny local servers for what the lab cannot
show on demand: an expired cert, a refused port, a reset (SO_LINGER 0), a
silent listener, a port forwarder that resets until its server is up.
Local servers use 127.0.0.1:232xx (this suite's share of 23000-23999).
"""
import datetime
import socket
import ssl
import struct
import threading
import time

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509

from helpers import run_module
import ports
from pki_fixtures import PKI, key_pem, make_cert, new_key, now, pem

pytestmark = pytest.mark.lab

SNI = "vault.prod.privsec.ch"
LOCAL_PORTS = range(23200, 23300)


def free_port():
    """A port of ours for a local test server, reserved for this process's lifetime."""
    return ports.reserve(LOCAL_PORTS)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paths(lab):
    info = lab.info
    p = info["paths"]
    return {
        "port": info["ports"]["vault"],
        "proxy_port": info["ports"]["proxy"],
        "ca": p["admin_ca"],
        "root_ca": p["root_ca"],
        "crt": p["admin_crt"],
        "key": p["admin_key"],
        "server_crt": p["server_crt"],
        "apps": info["app_paths"],
    }


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """A PKI the lab does not know: its root as a wrong trust bundle, a client cert with the admin's CN."""
    d = tmp_path_factory.mktemp("stranger")
    other = PKI("stranger")
    key, cert = other.leaf("vault-admin-prod")
    files = {"ca": d / "ca.pem", "crt": d / "client.crt", "key": d / "client.key"}
    files["ca"].write_text(pem(other.root))
    files["crt"].write_text(pem(cert) + pem(other.intermediate))
    files["key"].write_text(key_pem(key))
    files["key"].chmod(0o600)
    return {k: str(v) for k, v in files.items()}


def base_args(paths, **kw):
    args = {"host": "127.0.0.1", "port": paths["port"], "server_name": SNI, "ca_cert": paths["ca"],
            "client_cert": paths["crt"], "client_key": paths["key"]}
    args.update(kw)
    return args


def served_serial(path):
    return _x509.cert_info(_x509.load_certificate(open(path).read()))["serial"]


# --- tiny local servers ---------------------------------------------------------------------


class LocalServer:
    """mode: 'tls' (serve cert_files), 'reset' (accept, RST), 'silent' (accept, never answer),
    'forwarder' (reset until `ready_after` seconds, then 'tls')."""

    def __init__(self, mode, cert_files=None, ready_after=0.0):
        self.mode = mode
        self.port = free_port()
        self.ready_at = time.monotonic() + ready_after
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.ctx = None
        if cert_files:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(*cert_files)
        self.held = []
        self.resets = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            mode = self.mode
            if mode == "forwarder":
                mode = "tls" if time.monotonic() >= self.ready_at else "reset"
            if mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                self.resets += 1
            elif mode == "silent":
                self.held.append(conn)
            else:
                threading.Thread(target=self.serve_tls, args=(conn,), daemon=True).start()

    def serve_tls(self, conn):
        conn.settimeout(5)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
            tls.recv(1024)
            tls.close()
        except OSError:
            conn.close()

    def close(self):
        self.stop = True
        self.sock.close()
        for conn in self.held:
            conn.close()
        self.thread.join(2)


@pytest.fixture(scope="module")
def local_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("localpki")
    pki = PKI("local")
    (d / "ca.pem").write_text(pem(pki.root))
    key = new_key()
    expired = make_cert(SNI, key, pki.intermediate, pki.int_key, dns=[SNI],
                        not_before=now() - datetime.timedelta(days=40), days=30)
    good = make_cert(SNI, key, pki.intermediate, pki.int_key, dns=[SNI], days=30)
    (d / "key.pem").write_text(key_pem(key))
    (d / "expired.pem").write_text(pem(expired) + pem(pki.intermediate))
    (d / "good.pem").write_text(pem(good) + pem(pki.intermediate))
    return {"ca": str(d / "ca.pem"), "key": str(d / "key.pem"), "expired": str(d / "expired.pem"),
            "good": str(d / "good.pem"), "good_serial": _x509.format_serial(good.serial_number),
            "expired_serial": _x509.format_serial(expired.serial_number)}


@pytest.fixture
def server():
    made = []

    def make(*args, **kw):
        s = LocalServer(*args, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# --- the lab: success ---------------------------------------------------------------------


def test_listener_with_admin_cert_and_sni(paths):
    r = run_module("tls_probe", base_args(paths, http_path="/v1/sys/seal-status"))
    assert not r["failed"], r["msg"]
    assert r["ok"] is True and r["failure_class"] is None and r["changed"] is False
    assert r["http_status"] == 200 and '"sealed":false' in r["http_body"]
    assert r["serial"] == served_serial(paths["server_crt"])
    assert r["common_name"] == SNI and SNI in r["dns_names"]
    assert r["tls_version"] == "TLSv1.3" and r["verified"] is True
    assert len(r["chain"]) == 2 and r["chain"][0]["serial"] == r["serial"]
    assert r["days_left"] > 0 and r["not_after"].endswith("Z")
    assert r["attempts"] == 1


def test_listener_without_http_path_still_proves_the_client_cert(paths):
    r = run_module("tls_probe", base_args(paths))
    assert r["ok"] is True
    assert r["elapsed"] < 0.9  # the session ticket (not the 1 s wait) ended the post-handshake read


def test_expect_serial_and_fingerprint_match(paths):
    serial = served_serial(paths["server_crt"])
    r = run_module("tls_probe", base_args(paths, expect_serial=serial.replace(":", "").upper()))
    assert r["ok"] is True
    r2 = run_module("tls_probe", base_args(paths, expect_fingerprint=r["fingerprint_sha256"]))
    assert r2["ok"] is True


def test_expect_serial_mismatch(paths):
    r = run_module("tls_probe", base_args(paths, expect_serial="01:02:03"))
    assert r["failed"] and r["failure_class"] == "serial_mismatch"
    assert "01:02:03" in r["msg"] and "reload" in r["hint"]
    assert r["serial"] == served_serial(paths["server_crt"])


def test_frontend_by_sni(paths):
    app, a = sorted(paths["apps"].items())[0]
    if "frontend_crt" not in a:
        app, a = sorted(paths["apps"].items())[1]
    r = run_module("tls_probe", {"host": "127.0.0.1", "port": a["port"], "server_name": a["sni"], "ca_cert": paths["ca"]})
    assert r["ok"] is True, r["msg"]
    assert r["common_name"] == a["sni"]
    assert r["serial"] == served_serial(a["frontend_crt"])


def test_proxy_with_sni(paths):
    r = run_module("tls_probe", {"host": "127.0.0.1", "port": paths["proxy_port"], "server_name": SNI,
                                 "ca_cert": paths["ca"], "http_path": "/v1/sys/seal-status"})
    assert r["ok"] is True, r["msg"]
    assert r["http_status"] == 200


def test_check_mode_is_the_same_probe(paths):
    r = run_module("tls_probe", base_args(paths), check=True)
    assert r["ok"] is True and r["changed"] is False


# --- the lab: failure classes --------------------------------------------------------------


def test_no_client_cert_is_alert_certificate_required(paths):
    args = base_args(paths)
    del args["client_cert"], args["client_key"]
    r = run_module("tls_probe", args)
    assert r["failed"]
    assert r["failure_class"] == "tls_alert" and r["tls_alert"] == "certificate required"
    assert "client_cert" in r["hint"]
    assert r["serial"] == served_serial(paths["server_crt"])  # still shows what was served


def test_no_client_cert_with_http_path(paths):
    args = base_args(paths, http_path="/v1/sys/seal-status", fail_on_error=False)
    del args["client_cert"], args["client_key"]
    r = run_module("tls_probe", args)
    assert not r["failed"] and r["ok"] is False
    assert r["tls_alert"] == "certificate required"


def test_client_cert_from_unknown_ca(paths, stranger):
    r = run_module("tls_probe", base_args(paths, client_cert=stranger["crt"], client_key=stranger["key"],
                                          fail_on_error=False))
    assert r["ok"] is False
    assert r["failure_class"] == "tls_alert", r
    assert r["tls_alert"] == "unknown ca"


def test_server_cert_not_trusted(paths, stranger):
    r = run_module("tls_probe", base_args(paths, ca_cert=stranger["ca"]))
    assert r["failed"] and r["failure_class"] == "untrusted_server_cert"
    assert "unable to get local issuer" in r["verify_message"]
    assert r["serial"] == served_serial(paths["server_crt"])  # from the second, unverified handshake
    assert r["verified"] is False


def test_hostname_mismatch(paths):
    r = run_module("tls_probe", base_args(paths, server_name="wrong.prod.privsec.ch"))
    assert r["failed"] and r["failure_class"] == "hostname_mismatch"
    assert r["common_name"] == SNI


def test_hostname_check_off(paths):
    r = run_module("tls_probe", base_args(paths, server_name="wrong.prod.privsec.ch", check_hostname=False))
    assert r["ok"] is True


def test_missing_ca_file_fails_before_connecting(paths):
    r = run_module("tls_probe", base_args(paths, ca_cert="/nonexistent/ca.pem", wait_timeout=30))
    assert r["failed"] and r["failure_class"] == "missing_file" and r["attempts"] == 0


# --- local servers: what the lab cannot show on demand ------------------------------------------


def test_expired_server_cert(server, local_pki):
    s = server("tls", (local_pki["expired"], local_pki["key"]))
    r = run_module("tls_probe", {"host": "127.0.0.1", "port": s.port, "server_name": SNI, "ca_cert": local_pki["ca"]})
    assert r["failed"] and r["failure_class"] == "expired"
    assert r["serial"] == local_pki["expired_serial"] and r["days_left"] < 0


def test_refused_port():
    port = free_port()
    r = run_module("tls_probe", {"host": "127.0.0.1", "port": port, "fail_on_error": False})
    assert r["ok"] is False and r["failure_class"] == "refused"
    assert r["elapsed"] < 1


def test_reset_by_a_listener_that_accepts_and_resets(server):
    s = server("reset")
    r = run_module("tls_probe", {"host": "127.0.0.1", "port": s.port, "server_name": SNI})
    assert r["failed"] and r["failure_class"] == "reset"
    assert r["errno"] == 104
    assert "port forwarder" in r["hint"]


def test_timeout_on_a_listener_that_never_answers(server):
    s = server("silent")
    r = run_module("tls_probe", {"host": "127.0.0.1", "port": s.port, "server_name": SNI, "timeout": 1})
    assert r["failed"] and r["failure_class"] == "timeout" and r["phase"] == "handshake"
    assert 0.9 < r["elapsed"] < 3


def test_wait_timeout_is_bounded(server):
    s = server("reset")
    r = run_module("tls_probe", {"host": "127.0.0.1", "port": s.port, "wait_timeout": 2, "interval": 0.2,
                                 "fail_on_error": False})
    assert r["ok"] is False and r["failure_class"] == "reset"
    assert r["attempts"] > 3 and 1.9 < r["elapsed"] < 4


def test_wait_through_a_port_forwarder_until_the_server_listens(server, local_pki):
    """The seed incident: a restarted container resets connections until its server listens."""
    s = server("forwarder", (local_pki["good"], local_pki["key"]), ready_after=1.5)
    r = run_module("tls_probe", {"host": "127.0.0.1", "port": s.port, "server_name": SNI, "ca_cert": local_pki["ca"],
                                 "expect_serial": local_pki["good_serial"], "wait_timeout": 15, "interval": 0.2})
    assert not r["failed"], r["msg"]
    assert r["ok"] is True and r["attempts"] > 1 and s.resets >= 1
    assert r["observed"] == ["reset", "ok"]
    assert r["elapsed"] < 5
