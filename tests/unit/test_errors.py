"""Failure classification: real exception objects in, one class + an actionable message out.

TLS failures are produced for real, with OpenSSL on both ends of a socketpair
(no network, no port); only errors a local pair cannot produce (a reset, DNS,
unreachable networks) are constructed exactly as Python raises them.
"""
import datetime
import errno
import http.client
import socket
import ssl
import threading

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import (
    FAILURE_CLASSES,
    RotateError,
    classify_exception,
    classify_http,
)

from pki_fixtures import PKI, key_pem, make_cert, new_key, now, pem

TARGET = "127.0.0.1:22400"
SNI = "vault.prod.privsec.ch"


# --- a real TLS pair over socketpair -------------------------------------------------


@pytest.fixture(scope="module")
def pki():
    return PKI("errors")


@pytest.fixture(scope="module")
def files(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")

    def write(name, text):
        p = d / name
        p.write_text(text)
        return str(p)

    server_key, server_cert = pki.leaf(SNI, dns=[SNI], ips=["127.0.0.1"])
    client_key, client_cert = pki.leaf("vault-admin-prod")
    other = PKI("other")
    stranger_key, stranger_cert = other.leaf("vault-admin-prod")
    expired_key = new_key()
    expired = make_cert(SNI, expired_key, pki.intermediate, pki.int_key, dns=[SNI],
                        not_before=now() - datetime.timedelta(days=10), days=1)
    future = make_cert(SNI, expired_key, pki.intermediate, pki.int_key, dns=[SNI],
                       not_before=now() + datetime.timedelta(days=10), days=10)
    return {
        "ca": write("ca.pem", pem(pki.root)),
        "other_ca": write("other_ca.pem", pem(other.root)),
        "server": (write("server.crt", pem(server_cert) + pem(pki.intermediate)), write("server.key", key_pem(server_key))),
        "expired": (write("expired.crt", pem(expired) + pem(pki.intermediate)), write("expired.key", key_pem(expired_key))),
        "future": (write("future.crt", pem(future) + pem(pki.intermediate)), write("future.key", key_pem(expired_key))),
        "client": (write("client.crt", pem(client_cert) + pem(pki.intermediate)), write("client.key", key_pem(client_key))),
        "stranger": (write("stranger.crt", pem(stranger_cert) + pem(other.intermediate)),
                     write("stranger.key", key_pem(stranger_key))),
        "client_ca": write("client_ca.pem", pem(pki.root) + pem(pki.intermediate)),
    }


def _server(sock, files, serve="server", require_client=True, max_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*files[serve])
    if max_version:
        ctx.maximum_version = max_version
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(files["client_ca"])
    try:
        tls = ctx.wrap_socket(sock, server_side=True)
        tls.recv(1)
        tls.close()
    except (ssl.SSLError, OSError):
        pass
    finally:
        sock.close()


def tls_failure(files, serve="server", client="client", ca="ca", server_name=SNI, require_client=True,
                max_version=None, check_hostname=True):
    """Run a real handshake (plus one read, as the probe does); return the raised exception."""
    a, b = socket.socketpair()
    t = threading.Thread(target=_server, args=(b, files, serve, require_client, max_version), daemon=True)
    t.start()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ctx.load_verify_locations(files[ca])
    if client:
        ctx.load_cert_chain(*files[client])
    a.settimeout(5)
    try:
        tls = ctx.wrap_socket(a, server_hostname=server_name)
        tls.recv(1)  # TLS 1.3: the verdict on the client cert comes after the handshake
    except Exception as exc:  # the exception is what we test
        return exc
    finally:
        a.close()
        t.join(5)
    raise AssertionError("the handshake succeeded")


# --- TLS: real exceptions ---------------------------------------------------------------


def test_no_client_cert_is_alert_certificate_required(files):
    exc = tls_failure(files, client=None)
    err = classify_exception(exc, target=TARGET, server_name=SNI)
    assert err.failure_class == "tls_alert"
    assert err.details["tls_alert"] == "certificate required"
    assert "certificate required" in err.message and TARGET in err.message
    assert "client_cert" in err.hint


def test_no_client_cert_tls12_is_handshake_failure_alert(files):
    exc = tls_failure(files, client=None, max_version=ssl.TLSVersion.TLSv1_2)
    err = classify_exception(exc, target=TARGET)
    assert err.failure_class == "tls_alert"
    assert err.details["tls_alert"] in ("handshake failure", "certificate required")


def test_client_cert_from_unknown_ca_is_alert_unknown_ca(files):
    exc = tls_failure(files, client="stranger")
    err = classify_exception(exc, target=TARGET)
    assert err.failure_class == "tls_alert"
    assert err.details["tls_alert"] == "unknown ca"
    assert "client CA" in err.hint


def test_untrusted_server_cert(files):
    exc = tls_failure(files, ca="other_ca")
    assert isinstance(exc, ssl.SSLCertVerificationError)
    err = classify_exception(exc, target=TARGET, server_name=SNI)
    assert err.failure_class == "untrusted_server_cert"
    assert err.details["verify_code"] == 20
    assert "ca_cert" in err.hint
    assert "errno" not in err.details  # SSLError.errno is OpenSSL's, not an OS errno


def test_hostname_mismatch(files):
    exc = tls_failure(files, server_name="wrong.prod.privsec.ch")
    err = classify_exception(exc, target=TARGET, server_name="wrong.prod.privsec.ch")
    assert err.failure_class == "hostname_mismatch"
    assert "wrong.prod.privsec.ch" in err.message
    assert "tls_server_name" in err.hint


def test_expired_server_cert(files):
    err = classify_exception(tls_failure(files, serve="expired"), target=TARGET)
    assert err.failure_class == "expired"


def test_not_yet_valid_server_cert(files):
    err = classify_exception(tls_failure(files, serve="future"), target=TARGET)
    assert err.failure_class == "not_yet_valid"


def test_plain_tcp_peer_is_tls_error_with_hint():
    a, b = socket.socketpair()
    b.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    a.settimeout(5)
    with pytest.raises(ssl.SSLError) as info:
        ctx.wrap_socket(a, server_hostname="x")
    a.close()
    b.close()
    err = classify_exception(info.value, target=TARGET)
    assert err.failure_class == "tls_error"
    assert "does not speak TLS" in err.hint


def test_server_closing_during_handshake_is_reset():
    a, b = socket.socketpair()
    b.close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    a.settimeout(5)
    with pytest.raises(OSError) as info:
        ctx.wrap_socket(a, server_hostname="x")
    a.close()
    err = classify_exception(info.value, target=TARGET)
    assert err.failure_class == "reset"


# --- TLS: constructed as Python raises them -----------------------------------------------


def _ssl_error(reason, text):
    exc = ssl.SSLError(1, "[SSL: %s] %s (_ssl.c:2599)" % (reason, text))
    exc.reason = reason
    exc.library = "SSL"
    return exc


@pytest.mark.parametrize("reason,alert", [
    ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate required"),
    ("SSLV3_ALERT_BAD_CERTIFICATE", "bad certificate"),
    ("TLSV1_ALERT_UNKNOWN_CA", "unknown ca"),
    ("SSLV3_ALERT_HANDSHAKE_FAILURE", "handshake failure"),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate expired"),
    ("TLSV1_ALERT_PROTOCOL_VERSION", "protocol version"),
    ("TLSV1_UNRECOGNIZED_NAME", "unrecognized name"),
    ("TLSV1_ALERT_DECRYPT_ERROR", "decrypt error"),
])
def test_openssl_alert_reasons(reason, alert):
    err = classify_exception(_ssl_error(reason, alert), target=TARGET)
    assert err.failure_class == "tls_alert"
    assert err.details["tls_alert"] == alert
    assert err.hint


def test_alert_reason_parsed_from_text_when_attribute_missing():
    exc = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2599)")
    err = classify_exception(exc)
    assert err.failure_class == "tls_alert" and err.details["tls_alert"] == "unknown ca"


def test_unexpected_eof_is_reset():
    exc = ssl.SSLEOFError(8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol (_ssl.c:1000)")
    err = classify_exception(exc, target=TARGET, phase="handshake")
    assert err.failure_class == "reset"
    assert "EOF" in err.message


def test_connection_reset_errno_104():
    exc = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    err = classify_exception(exc, target=TARGET, server_name=SNI, phase="handshake")
    assert err.failure_class == "reset"
    assert err.details["errno"] == 104
    assert "104" in err.message
    assert "port forwarder" in err.hint and "client cert" in err.hint


def test_remote_disconnected_is_reset():
    err = classify_exception(http.client.RemoteDisconnected("Remote end closed connection without response"))
    assert err.failure_class == "reset"


def test_broken_pipe_is_reset():
    assert classify_exception(BrokenPipeError(errno.EPIPE, "Broken pipe")).failure_class == "reset"


def test_refused_real():
    # A socket bound but not listening refuses connections: no port range needed.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        holder.close()
    err = classify_exception(info.value, target="127.0.0.1:%s" % port, phase="connect")
    assert err.failure_class == "refused"
    assert "nothing listens" in err.message


@pytest.mark.parametrize("exc", [
    socket.timeout("timed out"),
    TimeoutError("_ssl.c:983: The handshake operation timed out"),
    OSError(errno.ETIMEDOUT, "Connection timed out"),
])
def test_timeouts(exc):
    err = classify_exception(exc, target=TARGET, phase="handshake")
    assert err.failure_class == "timeout"
    assert "handshake" in err.message


def test_dns():
    err = classify_exception(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), target="nope.invalid:443")
    assert err.failure_class == "dns"


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH])
def test_unreachable(code):
    assert classify_exception(OSError(code, "No route")).failure_class == "unreachable"


def test_bad_http_answer_is_server_error():
    err = classify_exception(http.client.BadStatusLine("garbage"), target=TARGET)
    assert err.failure_class == "server_error"


def test_rotate_error_passes_through():
    original = RotateError("sealed", "Vault is sealed")
    assert classify_exception(original) is original


def test_unknown_exception_is_tls_error_not_a_crash():
    assert classify_exception(ValueError("odd")).failure_class == "tls_error"


# --- RotateError -----------------------------------------------------------------------------


def test_as_result_has_class_msg_hint_and_details_without_none():
    err = RotateError("reset", "reset by peer", "wait", {"errno": 104, "target": TARGET, "server_name": None})
    assert err.as_result() == {"failure_class": "reset", "msg": "reset by peer", "hint": "wait",
                               "errno": 104, "target": TARGET}
    assert "wait" in str(err)


def test_unknown_failure_class_is_a_programming_error():
    with pytest.raises(ValueError):
        RotateError("oops", "x")


def test_failure_classes_match_the_contract():
    assert set(FAILURE_CLASSES) == {
        "refused", "reset", "timeout", "dns", "unreachable", "tls_alert", "untrusted_server_cert",
        "hostname_mismatch", "expired", "not_yet_valid", "tls_error", "sealed", "standby", "uninitialized",
        "permission_denied", "not_found", "bad_input", "server_error", "serial_mismatch", "missing_file",
        "bad_pem", "key_mismatch", "write_failed", "policy_mismatch",
        # the phase gates and the run (issue 11: the classes once invented in YAML join the list)
        "reload_failed", "client_ca_incomplete", "unit_not_active", "stale_token", "interlock", "locked", "unknown",
    }


# --- HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status,errors,klass", [
    (403, ["permission denied"], "permission_denied"),
    (401, [], "permission_denied"),
    (404, [], "not_found"),
    (400, ["common name x not allowed by this role"], "bad_input"),
    (405, ["unsupported operation"], "bad_input"),
    (503, ["Vault is sealed"], "sealed"),
    (503, ["upstream unavailable"], "server_error"),
    (429, [], "standby"),
    (472, [], "standby"),
    (473, [], "standby"),
    (501, [], "uninitialized"),
    (500, ["internal error"], "server_error"),
    (502, [], "server_error"),
])
def test_classify_http(status, errors, klass):
    err = classify_http(status, errors, "pki-prod/sign/vault-server")
    assert err.failure_class == klass
    assert err.details["status"] == status
    assert err.hint


def test_permission_denied_names_the_path():
    err = classify_http(403, ["1 error occurred:\n\t* permission denied\n\n"], "auth/cert/certs/agent-ncprd1")
    assert "auth/cert/certs/agent-ncprd1" in err.message
    assert err.details["path"] == "auth/cert/certs/agent-ncprd1"
    assert "token_policies" in err.hint


def test_bad_input_carries_vault_errors():
    err = classify_http(400, ["common name foo is not allowed by this role"], "pki-prod/issue/nginx-ncprd1")
    assert "not allowed by this role" in err.message
