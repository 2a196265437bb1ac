# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Failure classes: turn raw transport, TLS and HTTP errors into one class a
caller can branch on, plus a message that says what is wrong and what to check
next. Private to the collection (no stable API outside it).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import re
import socket
import ssl

try:
    import http.client as _http_client
except ImportError:  # pragma: no cover - Python 2 is not supported anyway
    _http_client = None


FAILURE_CLASSES = (
    "refused",
    "reset",
    "timeout",
    "dns",
    "unreachable",
    "tls_alert",
    "untrusted_server_cert",
    "hostname_mismatch",
    "expired",
    "not_yet_valid",
    "tls_error",
    "sealed",
    "standby",
    "uninitialized",
    "permission_denied",
    "not_found",
    "bad_input",
    "server_error",
    "serial_mismatch",
    "missing_file",
    "bad_pem",
    "key_mismatch",
    "write_failed",
    "policy_mismatch",
    # Classes of the phase gates and the run (plugins/module_utils/_engine.py, plugins/action/).
    "reload_failed",
    "client_ca_incomplete",
    "unit_not_active",
    "stale_token",
    "interlock",
    "locked",
    "unknown",
)


class RotateError(Exception):
    """A classified failure: `failure_class` is one of FAILURE_CLASSES."""

    def __init__(self, failure_class, message, hint=None, details=None):
        if failure_class not in FAILURE_CLASSES:
            raise ValueError("unknown failure class %r" % (failure_class,))
        super(RotateError, self).__init__(message)
        self.failure_class = failure_class
        self.message = message
        self.hint = hint
        self.details = dict((k, v) for k, v in (details or {}).items() if v is not None)

    def __str__(self):
        if self.hint:
            return "%s (%s)" % (self.message, self.hint)
        return self.message

    def as_result(self):
        result = dict(self.details)
        result.update(failure_class=self.failure_class, msg=self.message, hint=self.hint)
        return result

    def as_failure(self, prefix=None, **extra):
        """fail_json arguments: as_result() plus extra, msg as "[prefix: ]message. Next: hint"."""
        result = self.as_result()
        result.update(extra)
        msg = result.pop("msg")
        if prefix:
            msg = "%s: %s" % (prefix, msg)
        if self.hint:
            msg = "%s. Next: %s" % (msg.rstrip("."), self.hint)
        result["msg"] = msg
        return result


# --- transport and TLS -------------------------------------------------------

# OpenSSL X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code).
_VERIFY_EXPIRED = (10,)  # certificate has expired
_VERIFY_NOT_YET_VALID = (9,)  # certificate is not yet valid
_VERIFY_HOSTNAME = (62, 63, 64)  # hostname / email / IP address mismatch

_ALERT_RE = re.compile(r"^(?:SSLV3|TLSV1|TLSV1_1|TLSV1_2|TLSV13)_ALERT_([A-Z0-9_]+)$")
_REASON_IN_TEXT_RE = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")

# OpenSSL reason codes that are alerts without the _ALERT_ infix.
_ALERTS_WITHOUT_INFIX = {
    "TLSV1_UNRECOGNIZED_NAME": "unrecognized name",
    "TLSV1_BAD_CERTIFICATE_STATUS_RESPONSE": "bad certificate status response",
}

_ALERT_HINTS = {
    "certificate required": (
        "the server requires a client certificate and got none: pass client_cert/client_key "
        "(VAULT_CLIENT_CERT/VAULT_CLIENT_KEY)"
    ),
    "unknown ca": (
        "the server does not trust the issuer of the client certificate: check that its CA is in "
        "the listener's client CA file (tls_client_ca_file, read at start only) and that the client "
        "sends its intermediate"
    ),
    "bad certificate": (
        "the server rejected the client certificate (expired, wrong key usage, or its chain is "
        "incomplete): inspect the client cert and send leaf + intermediate"
    ),
    "certificate expired": "the server says the client certificate has expired: rotate the client cert",
    "certificate unknown": "the server could not verify the client certificate: check its chain and key usage",
    "certificate revoked": "the client certificate is revoked: issue a new one",
    "unsupported certificate": "the client certificate has the wrong type or key usage (clientAuth needed)",
    "handshake failure": "no common TLS parameters, or the server rejected the client certificate",
    "protocol version": "client and server share no TLS version",
    "unrecognized name": "the server knows no certificate for this SNI name: check server_name / tls_server_name",
    "access denied": "the server refused this client: check the client certificate and the server's access rules",
    "decrypt error": "signature check failed: the client key may not match the client certificate",
}


def _alert_name(reason):
    if not reason:
        return None
    if reason in _ALERTS_WITHOUT_INFIX:
        return _ALERTS_WITHOUT_INFIX[reason]
    match = _ALERT_RE.match(reason)
    if match:
        return match.group(1).replace("_", " ").lower()
    return None


def _ssl_reason(exc):
    reason = getattr(exc, "reason", None)
    if reason:
        return reason
    match = _REASON_IN_TEXT_RE.search(str(exc))
    return match.group(1) if match else None


def _where(target, server_name):
    if not target:
        return "the server"
    if server_name and server_name not in str(target):
        return "%s (TLS name %s)" % (target, server_name)
    return str(target)


def _is_timeout(exc):
    if isinstance(exc, socket.timeout):
        return True
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT


def classify_exception(exc, target=None, server_name=None, phase=None):
    """Return a RotateError for a raw exception (socket, ssl, OSError, http.client).

    `target` is "host:port", `server_name` the TLS name (SNI) that was used,
    `phase` one of connect/handshake/request when the caller knows it. An
    existing RotateError is returned unchanged.
    """
    if isinstance(exc, RotateError):
        return exc
    where = _where(target, server_name)
    details = {"target": target, "server_name": server_name, "phase": phase, "error": str(exc) or type(exc).__name__}
    err_no = getattr(exc, "errno", None)
    if isinstance(err_no, int) and not isinstance(exc, ssl.SSLError):  # SSLError.errno is OpenSSL's, not the OS's
        details["errno"] = err_no

    # Order matters: SSLCertVerificationError is an SSLError is an OSError, and
    # socket.timeout is an OSError too.
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _classify_verify(exc, where, details)
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return _reset(where, details, closed=True)
    if isinstance(exc, ssl.SSLError):
        return _classify_ssl(exc, where, details)
    if isinstance(exc, socket.gaierror):
        return RotateError(
            "dns",
            "cannot resolve the host of %s: %s" % (where, exc),
            "check the address (url/host) and the resolver of the host running the task",
            details,
        )
    if _is_timeout(exc):
        what = {
            "connect": "TCP connect to %s timed out" % where,
            "handshake": "%s accepted the TCP connection but did not answer the TLS handshake in time" % where,
            "request": "%s did not answer the request in time" % where,
        }.get(phase, "no answer from %s in time" % where)
        return RotateError(
            "timeout",
            what,
            "a firewall dropping packets, a server that is stuck or still starting, or a plain-TCP "
            "service on that port; raise timeout or use wait_timeout to wait for readiness",
            details,
        )
    if isinstance(exc, ConnectionRefusedError) or err_no == errno.ECONNREFUSED:
        return RotateError(
            "refused",
            "connection to %s refused: nothing listens on that port" % where,
            "the service is down or still starting, or the port is wrong: check the unit and the "
            "listener address; use wait_timeout to wait for it",
            details,
        )
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) or err_no in (
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ECONNABORTED,
    ):
        return _reset(where, details)
    if _http_client is not None and isinstance(exc, _http_client.HTTPException):
        return RotateError(
            "server_error",
            "%s sent an invalid HTTP answer: %s" % (where, type(exc).__name__),
            "is this the Vault API port and does it speak HTTPS?",
            details,
        )
    if err_no in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.EADDRNOTAVAIL, errno.ENETDOWN):
        return RotateError(
            "unreachable",
            "%s is unreachable: %s" % (where, exc),
            "check routing/firewall between this host and the server, and the address",
            details,
        )
    return RotateError(
        "tls_error",
        "connection to %s failed: %s" % (where, exc or type(exc).__name__),
        None,
        details,
    )


def _reset(where, details, closed=False):
    if closed:
        message = "%s closed the connection during the TLS exchange (EOF)" % where
    else:
        message = "%s accepted and reset the connection (errno 104)" % where
    return RotateError(
        "reset",
        message,
        "a container port forwarder whose server is not listening yet, or a listener that rejected "
        "the client certificate (Go servers often reset instead of sending an alert): wait for "
        "readiness (wait_timeout) / check the client cert and that its CA is trusted by the listener",
        details,
    )


def _classify_verify(exc, where, details):
    code = getattr(exc, "verify_code", None)
    text = getattr(exc, "verify_message", None) or str(exc)
    details.update(verify_code=code, verify_message=text)
    if code in _VERIFY_HOSTNAME:
        return RotateError(
            "hostname_mismatch",
            "the certificate served by %s does not match the expected name: %s" % (where, text),
            "set server_name / tls_server_name to a name in the certificate's SANs (the address may be "
            "an IP while the cert names the service), or reissue the cert with that name",
            details,
        )
    if code in _VERIFY_EXPIRED:
        return RotateError(
            "expired",
            "the certificate served by %s has expired" % where,
            "rotate the server certificate and reload the service (SIGHUP / nginx reload)",
            details,
        )
    if code in _VERIFY_NOT_YET_VALID:
        return RotateError(
            "not_yet_valid",
            "the certificate served by %s is not valid yet" % where,
            "check the clock of the server and of this host, or the not_before of the new cert",
            details,
        )
    return RotateError(
        "untrusted_server_cert",
        "the certificate served by %s is not trusted: %s" % (where, text),
        "the CA bundle (ca_cert / VAULT_CACERT) does not hold the issuer of the served chain, or the "
        "server sends its leaf without the intermediate: check the bundle (old + new CA during a "
        "rollover) and that the server's cert file is leaf + intermediate",
        details,
    )


def _classify_ssl(exc, where, details):
    reason = _ssl_reason(exc)
    details["ssl_reason"] = reason
    alert = _alert_name(reason)
    if alert:
        details["tls_alert"] = alert
        return RotateError(
            "tls_alert",
            "%s sent the TLS alert '%s'" % (where, alert),
            _ALERT_HINTS.get(alert, "see the server log for why it aborted the handshake"),
            details,
        )
    if reason == "UNEXPECTED_EOF_WHILE_READING":
        return _reset(where, details, closed=True)
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"):
        hint = "the port does not speak TLS (plain HTTP or another protocol?): check the port and the scheme"
    elif reason in ("KEY_VALUES_MISMATCH",):
        hint = "the client key does not belong to the client certificate"
    else:
        hint = None
    return RotateError("tls_error", "TLS with %s failed: %s" % (where, reason or exc), hint, details)


# --- HTTP (Vault API) ---------------------------------------------------------

def _join_errors(errors):
    if not errors:
        return ""
    if isinstance(errors, str):
        return errors
    return "; ".join(str(e) for e in errors if e)


def classify_http(status, errors, path):
    """Return a RotateError for a Vault HTTP error status on `path`."""
    text = _join_errors(errors)
    suffix = (": " + text) if text else ""
    details = {"status": status, "path": path, "errors": list(errors) if isinstance(errors, (list, tuple)) else errors}
    if status in (401, 403):
        return RotateError(
            "permission_denied",
            "permission denied on path '%s' (HTTP %s)%s" % (path, status, suffix),
            "the token's policies do not allow this operation on this path: check the cert-auth mapping "
            "(token_policies) or the token, and the policy's capabilities",
            details,
        )
    if status == 404:
        return RotateError(
            "not_found",
            "path '%s' not found (HTTP 404)%s" % (path, suffix),
            "check the mount name and the object name (PKI mount, role, cert-auth mapping)",
            details,
        )
    if status in (400, 405, 409, 412, 422):
        return RotateError(
            "bad_input",
            "Vault rejected the request to '%s' (HTTP %s)%s" % (path, status, suffix),
            "check the parameters sent (role settings, SAN allowed by the role, TTL within max_ttl)",
            details,
        )
    if status in (429, 472, 473):
        return RotateError(
            "standby",
            "the node answered '%s' as a standby (HTTP %s)%s" % (path, status, suffix),
            "the server is unsealed but not active yet (it answers 429 for a moment after unseal): wait and retry",
            details,
        )
    if status == 501:
        return RotateError(
            "uninitialized",
            "Vault is not initialized (HTTP 501 on '%s')" % path,
            "initialize it (bao operator init) before using it",
            details,
        )
    if status == 503 and "sealed" in text.lower():
        return RotateError(
            "sealed",
            "Vault is sealed (HTTP 503 on '%s')" % path,
            "unseal it (vault_health with unseal_keys, or bao operator unseal); a restart seals it unless it auto-unseals",
            details,
        )
    if status >= 500:
        return RotateError(
            "server_error",
            "Vault failed on '%s' (HTTP %s)%s" % (path, status, suffix),
            "see the server log",
            details,
        )
    return RotateError(
        "bad_input",
        "unexpected HTTP %s from '%s'%s" % (status, path, suffix),
        None,
        details,
    )
