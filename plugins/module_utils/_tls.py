# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TLS client side: one place that builds the SSL context (trust, client cert)
and opens a connection with an SNI name distinct from the address. Every
failure comes out as a classified RotateError.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import socket
import ssl
import time

from urllib.parse import urlsplit

from ansible_collections.privsec.vault_rotate.plugins.module_utils._timing import MAX_PAUSE, Deadline
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import (
    RotateError,
    classify_exception,
)


def _no_passphrase(*_args):
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise RotateError(
        "bad_pem",
        "the client key is encrypted with a passphrase",
        "use an unencrypted key file (0600), as the Vault CLI and agents do",
    )


def _require_file(path, what):
    if not os.path.isfile(path):
        raise RotateError(
            "missing_file",
            "%s %s does not exist or is not a file" % (what, path),
            "check the path on the host that runs the task (controller or target)",
            {"path": path},
        )
    if not os.access(path, os.R_OK):
        raise RotateError(
            "missing_file",
            "%s %s is not readable by this user" % (what, path),
            "run the task as a user that may read it (become) or fix the file mode",
            {"path": path},
        )


def make_context(ca_cert=None, ca_pem=None, client_cert=None, client_key=None, verify=True, check_hostname=True):
    """Return an ssl.SSLContext for a client.

    `ca_cert` is a path to a PEM bundle, `ca_pem` the bundle itself; without
    either the system trust store is used. `client_cert`/`client_key` are
    paths (the key may be inside the cert file when `client_key` is None).
    `verify=False` disables chain and hostname verification (the served cert
    can still be read).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        context.check_hostname = bool(check_hostname)
        context.verify_mode = ssl.CERT_REQUIRED
        if ca_cert or ca_pem:
            if ca_cert:
                _require_file(ca_cert, "CA bundle")
            try:
                context.load_verify_locations(cafile=ca_cert or None, cadata=ca_pem or None)
            except (ssl.SSLError, ValueError) as exc:
                raise RotateError(
                    "bad_pem",
                    "the CA bundle %s holds no usable PEM certificate: %s" % (ca_cert or "(ca_pem)", exc),
                    "pass a file of one or more '-----BEGIN CERTIFICATE-----' blocks",
                    {"path": ca_cert},
                )
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_key and not client_cert:
        raise RotateError("bad_input", "client_key is set without client_cert", "pass both or neither")
    if client_cert:
        _require_file(client_cert, "client certificate")
        if client_key:
            _require_file(client_key, "client key")
        try:
            context.load_cert_chain(client_cert, client_key or None, password=_no_passphrase)
        except RotateError:
            raise
        except ssl.SSLError as exc:
            reason = getattr(exc, "reason", None) or ""
            if "KEY_VALUES_MISMATCH" in reason or "KEY_VALUES_MISMATCH" in str(exc):
                raise RotateError(
                    "key_mismatch",
                    "the client key %s does not belong to the client certificate %s" % (client_key, client_cert),
                    "install the key and the cert of the same generation together",
                    {"path": client_cert},
                )
            raise RotateError(
                "bad_pem",
                "cannot load the client certificate %s / key %s: %s" % (client_cert, client_key, exc),
                "both must be PEM; the key unencrypted",
                {"path": client_cert},
            )
    return context


def tcp_connection(host, port, timeout):
    """A TCP connection with Nagle's algorithm off (TCP_NODELAY), as http.client's own
    connect() makes it. An HTTP request with a body leaves in two writes (the headers, then
    the body); with Nagle on, the body waits for the server to acknowledge the headers, and
    the server delays that acknowledgement: about 40 ms on every POST (each login, sign and
    mapping write), measured against OpenBao (docs/performance.md, seventh round)."""
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # a platform without it: slower, not wrong
        pass
    return sock


def connect(host, port, server_name=None, context=None, timeout=10.0, proxy=None):
    """Open a TLS connection to host:port and finish the handshake.

    SNI and the hostname check use `server_name` (default: `host`). Python sends
    no SNI for an IP address, so pass server_name whenever the address is an IP
    and the server picks its certificate by name. With `proxy` (a Proxy), the
    TCP connection is a CONNECT tunnel through it and the TLS session runs end
    to end inside: SNI, verification and the client certificate are the same as
    without it, the proxy sees neither. Raises a classified RotateError.
    """
    if context is None:
        context = make_context()
    target = "%s:%s" % (host, port)
    name = server_name or host
    phase = "connect"
    sock = None
    try:
        if proxy is not None:
            sock = proxy.tunnel(host, port, timeout)
        else:
            sock = tcp_connection(host, port, timeout)
        phase = "handshake"
        tls = context.wrap_socket(sock, server_hostname=name)
        return tls
    except Exception as exc:  # classify every failure, socket included
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        err = classify_exception(exc, target=target, server_name=name, phase=phase)
        if proxy is not None and "proxy" not in err.details:
            err.details["proxy"] = proxy.display
        raise err


# --- HTTP proxy (CONNECT) ------------------------------------------------------------

_PROXY_HEAD_MAX = 16384


class Proxy(object):
    """An HTTP proxy reached with CONNECT: ``http://host:port`` (no credentials, no path).

    Only the tunnel request crosses the proxy in clear (``CONNECT host:port``);
    whatever is sent through the tunnel afterwards (TLS with SNI, the client
    certificate, the token) is end to end with the server.
    """

    def __init__(self, url):
        text = str(url or "").strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise RotateError("bad_input", "invalid proxy address %r: %s" % (url, exc),
                              "use http://host:port (an HTTP proxy that supports CONNECT)")
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise RotateError(
                "bad_input", "invalid proxy address %r" % (_without_userinfo(url),),
                "use http://host:port: an HTTP proxy that supports CONNECT (TLS to the proxy itself, "
                "https://, is not supported; the TLS session to Vault runs through the tunnel)")
        if parts.username is not None or parts.password is not None:
            raise RotateError(
                "bad_input", "the proxy address %s carries credentials" % (_without_userinfo(url),),
                "proxy credentials are not supported (they would show in task arguments and logs): let the "
                "proxy admit this host by its address, or reach Vault without the proxy")
        self.host = parts.hostname
        self.port = port or 3128
        self.target = "%s:%s" % (self.host, self.port)
        self.display = "http://%s" % (self.target if ":" not in self.host else "[%s]:%s" % (self.host, self.port))

    def __repr__(self):
        return "<Proxy %s>" % self.display

    def tunnel(self, host, port, timeout):
        """A TCP socket tunnelled through the proxy to host:port (RotateError otherwise)."""
        dest = "%s:%s" % (("[%s]" % host) if ":" in host and not host.startswith("[") else host, port)
        try:
            sock = tcp_connection(self.host, self.port, timeout)
        except Exception as exc:  # pylint: disable=broad-except
            err = classify_exception(exc, target=self.target, phase="connect")
            raise RotateError(
                err.failure_class,
                "cannot reach the proxy %s: %s" % (self.display, err.message),
                "check the proxy option (vault_rotate_vault_proxy, VAULT_PROXY_ADDR): its host and port, "
                "that it runs, and that this host may reach it",
                dict(err.details, proxy=self.display, phase="proxy"))
        try:
            status, reason = self._connect_request(sock, dest, timeout)
        except RotateError:
            sock.close()
            raise
        except Exception as exc:  # pylint: disable=broad-except
            sock.close()
            err = classify_exception(exc, target=self.target, phase="request")
            raise RotateError(
                err.failure_class,
                "the proxy %s did not answer CONNECT %s: %s" % (self.display, dest, err.message),
                "is %s an HTTP proxy (not the Vault address, not a SOCKS proxy)?" % self.display,
                dict(err.details, proxy=self.display, phase="proxy"))
        if 200 <= status < 300:
            return sock
        sock.close()
        raise _refused(self.display, dest, status, reason)

    def _connect_request(self, sock, dest, timeout):
        request = ("CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: privsec.vault_rotate\r\n"
                   "Proxy-Connection: keep-alive\r\n\r\n" % (dest, dest))
        sock.settimeout(timeout)
        sock.sendall(request.encode("ascii"))
        head = b""
        # Byte by byte up to the blank line: nothing of the tunnel's first bytes may be read here.
        while not head.endswith(b"\r\n\r\n"):
            chunk = sock.recv(1)
            if not chunk:
                raise RotateError(
                    "reset", "the proxy %s closed the connection instead of answering CONNECT %s" % (self.display, dest),
                    "is %s an HTTP proxy that supports CONNECT? Its log says why it closed" % self.display,
                    {"proxy": self.display, "target": dest, "phase": "proxy"})
            head += chunk
            if len(head) > _PROXY_HEAD_MAX:
                break
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise RotateError(
                "server_error", "the proxy %s answered CONNECT %s with %r, not HTTP" % (self.display, dest, line[:80]),
                "is %s an HTTP proxy (not the Vault address, not a SOCKS proxy)?" % self.display,
                {"proxy": self.display, "target": dest, "phase": "proxy"})
        return int(parts[1]), (parts[2] if len(parts) > 2 else "").strip()


def _without_userinfo(url):
    text = str(url or "")
    scheme, sep, rest = text.rpartition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def _refused(display, dest, status, reason):
    details = {"proxy": display, "target": dest, "status": status, "phase": "proxy"}
    said = "HTTP %s%s" % (status, (" " + reason) if reason else "")
    if status == 407:
        return RotateError(
            "permission_denied",
            "the proxy %s requires authentication for CONNECT %s (%s)" % (display, dest, said),
            "this collection sends no proxy credentials: let the proxy admit this host for CONNECT to %s "
            "(an ACL by source address), or reach Vault without the proxy" % dest, details)
    if status in (401, 403, 405):
        return RotateError(
            "permission_denied",
            "the proxy %s refused CONNECT %s (%s)" % (display, dest, said),
            "its access rules do not allow a tunnel to this host and port (squid allows CONNECT only to "
            "SSL_ports, 443, by default): allow %s on the proxy, or reach Vault without it" % dest, details)
    if status in (502, 503, 504):
        return RotateError(
            "unreachable",
            "the proxy %s could not reach %s (%s)" % (display, dest, said),
            "check the Vault address as the proxy resolves and reaches it (url / vault_rotate_vault_url) and "
            "that Vault listens there; the proxy's log names the cause", details)
    return RotateError(
        "server_error",
        "the proxy %s answered CONNECT %s with %s" % (display, dest, said),
        "is %s an HTTP proxy that supports CONNECT? Its log says why it refused" % display, details)


def pending_alert(tls_sock, wait=0.2):
    """The TLS alert a server sent before closing, if it is still in our receive
    buffer (a write that failed with EPIPE/ECONNRESET hides it). None otherwise."""
    try:
        tls_sock.settimeout(wait)
        tls_sock.recv(1)
    except ssl.SSLError as exc:
        if not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return exc
    except (OSError, ValueError, AttributeError):
        pass
    return None


def peer_chain_der(tls_sock):
    """DER certificates the peer sent, leaf first (best effort before Python 3.13)."""
    getter = getattr(tls_sock, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(tls_sock, "_sslobj", None), "get_unverified_chain", None)
    chain = []
    if getter is not None:
        try:
            for cert in getter() or []:
                if isinstance(cert, bytes):
                    chain.append(cert)
                else:  # _ssl.Certificate (3.10 - 3.12)
                    chain.append(cert.public_bytes(ssl._ssl.ENCODING_DER))  # pylint: disable=protected-access
        except Exception:  # pragma: no cover - private API differences
            chain = []
    if not chain:
        leaf = tls_sock.getpeercert(binary_form=True)
        if leaf:
            chain = [leaf]
    return chain


# --- probe: the s_client of every gate ------------------------------------------

# TLS 1.3 servers check the client certificate after the client has finished
# its handshake, and send their verdict (an alert, or a session ticket) after
# it. Read for up to this long to see which one comes.
POST_HANDSHAKE_WAIT = 1.0
_POLL = 0.05
_HTTP_MAX = 65536


def _post_handshake_check(tls_sock, wait=POST_HANDSHAKE_WAIT):
    """Wait (bounded) for the server's verdict on our client certificate.

    Returns when a session ticket arrived (the server accepted us) or the wait
    is over with no alert; raises the ssl error when an alert arrives, or an
    EOF error when the server closed the connection.
    """
    if tls_sock.version() != "TLSv1.3":
        return  # TLS 1.2 rejects the client cert inside the handshake
    deadline = time.monotonic() + wait
    poll = 0.005  # the verdict usually comes within a millisecond or two on a LAN
    while time.monotonic() < deadline:
        tls_sock.settimeout(poll)
        poll = min(poll * 2, _POLL)
        try:
            data = tls_sock.recv(1)
        except (socket.timeout, ssl.SSLWantReadError):
            data = None
        if data == b"":
            raise ssl.SSLEOFError("the server closed the connection right after the handshake")
        session = tls_sock.session
        if data or (session is not None and session.has_ticket):
            return


def _http_get(tls_sock, path, host_header, timeout):
    request = (
        "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: privsec.vault_rotate.tls_probe\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n" % (path, host_header)
    )
    tls_sock.settimeout(timeout)
    try:
        tls_sock.sendall(request.encode("ascii"))
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise pending_alert(tls_sock) or exc
    data = b""
    while len(data) < _HTTP_MAX:
        try:
            chunk = tls_sock.recv(16384)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            if data:
                break
            raise
        if not chunk:
            break
        data += chunk
    if not data:
        raise ssl.SSLEOFError("the server closed the connection without an HTTP answer")
    head, _sep, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise RotateError("tls_error", "the server answered %r, not HTTP" % status_line[:80],
                          "is this an HTTPS port?")
    if b"chunked" in head.lower():
        body = _dechunk(body)
    return int(parts[1]), body


def _dechunk(body):
    out = b""
    while body:
        size_line, _sep, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            return out
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
                "localityName": "L", "stateOrProvinceName": "ST", "domainComponent": "DC", "emailAddress": "E"}


def _rfc4514(name_tuple):
    rdns = []
    for rdn in name_tuple or ():
        rdns.append("+".join("%s=%s" % (_SHORT_NAMES.get(k, k), v.replace(",", "\\,")) for k, v in rdn))
    return ",".join(reversed(rdns))


def _describe_without_cryptography(chain_der, peer):
    """Fallback on hosts without cryptography: the fingerprint always, the rest
    from ssl's parsed view (only available when the chain was verified)."""
    info = {"fingerprint_sha256": ":".join("%02x" % b for b in bytearray(hashlib.sha256(chain_der[0]).digest()))}
    if not peer:
        return info
    from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import format_serial

    sans = peer.get("subjectAltName", ())
    not_after = ssl.cert_time_to_seconds(peer["notAfter"])
    subject = dict(kv for rdn in peer.get("subject", ()) for kv in rdn)
    info.update(
        serial=format_serial(int(peer["serialNumber"], 16)),
        subject=_rfc4514(peer.get("subject")),
        issuer=_rfc4514(peer.get("issuer")),
        common_name=subject.get("commonName"),
        dns_names=[v for k, v in sans if k == "DNS"],
        ip_addresses=[v.lower() for k, v in sans if k == "IP Address"],
        not_before=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ssl.cert_time_to_seconds(peer["notBefore"]))),
        not_after=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after)),
        days_left=round((not_after - time.time()) / 86400.0, 4),
    )
    return info


def _describe_chain(chain_der, peer=None, now=None):
    """cert_info of the leaf plus a short chain list (canonical formats)."""
    # Imported here: cryptography is needed only to describe, not to connect.
    from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509

    if not chain_der:
        return {}
    if not _x509.HAS_CRYPTOGRAPHY:
        return _describe_without_cryptography(chain_der, peer)
    from cryptography import x509 as _cx509

    certs = [_cx509.load_der_x509_certificate(der) for der in chain_der]
    info = _x509.cert_info(certs[0], now=now)
    info["chain"] = [
        {"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
         "serial": _x509.format_serial(c.serial_number)}
        for c in certs
    ]
    return info


def _host_header(name, port):
    if ":" in name and not name.startswith("["):
        name = "[%s]" % name
    return name if int(port) == 443 else "%s:%s" % (name, port)


def probe(host, port, server_name=None, context=None, timeout=10.0, http_path=None,
          unverified_context=None, post_handshake_wait=POST_HANDSHAKE_WAIT):
    """One TLS probe. Never raises for network/TLS failures: returns a dict
    with ok, failure_class, msg, hint, tls_alert and, whenever the server
    served a certificate, its description (from a second, unverified
    handshake when verification failed)."""
    name = server_name or host
    target = "%s:%s" % (host, port)
    result = {"ok": False, "failure_class": None, "tls_alert": None, "msg": None, "hint": None,
              "target": target, "server_name": name, "verified": False}
    chain = []
    peer = None
    tls_sock = None
    try:
        tls_sock = connect(host, port, server_name=server_name, context=context, timeout=timeout)
        chain = peer_chain_der(tls_sock)
        peer = tls_sock.getpeercert()  # {} unless verified
        result["tls_version"] = tls_sock.version()
        result["cipher"] = (tls_sock.cipher() or (None,))[0]
        result["verified"] = context is not None and context.verify_mode == ssl.CERT_REQUIRED
        try:
            _post_handshake_check(tls_sock, min(post_handshake_wait, timeout))
            if http_path:
                status, body = _http_get(tls_sock, http_path, _host_header(name, port), timeout)
                result["http_status"] = status
                result["http_body"] = body[:4096].decode("utf-8", "replace")
        except Exception as exc:  # pylint: disable=broad-except
            raise classify_exception(exc, target=target, server_name=name, phase="request")
        result.update(ok=True, msg="TLS handshake with %s ok" % target)
    except RotateError as err:
        result.update(ok=False, failure_class=err.failure_class, msg=err.message, hint=err.hint,
                      tls_alert=err.details.get("tls_alert"))
        for key in ("verify_message", "errno", "phase"):
            if key in err.details:
                result[key] = err.details[key]
        if not chain and unverified_context is not None and err.failure_class in (
            "untrusted_server_cert", "hostname_mismatch", "expired", "not_yet_valid"
        ):
            chain = _served_chain_unverified(host, port, server_name, unverified_context, timeout)
    finally:
        if tls_sock is not None:
            try:
                tls_sock.close()
            except OSError:
                pass
    result.update(_describe_chain(chain, peer))
    return result


def _served_chain_unverified(host, port, server_name, context, timeout):
    """What the server serves, without verifying it (for the operator to see)."""
    try:
        tls_sock = connect(host, port, server_name=server_name, context=context, timeout=timeout)
    except RotateError:
        return []
    try:
        return peer_chain_der(tls_sock)
    finally:
        tls_sock.close()


# ---------------------------------------------------------------- probe until ok


def _expectation_problem(result, expect_serial, expect_fingerprint):
    from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509

    if expect_serial:
        wanted = _x509.normalize_serial(expect_serial)
        if result.get("serial") != wanted:
            return "serves serial %s, expected %s" % (result.get("serial"), wanted)
    if expect_fingerprint:
        wanted = _x509.normalize_fingerprint(expect_fingerprint)
        if result.get("fingerprint_sha256") != wanted:
            return "serves fingerprint %s, expected %s" % (result.get("fingerprint_sha256"), wanted)
    return None


def _probe_expecting(host, port, server_name, context, unverified_context, timeout, http_path, expect_serial,
                     expect_fingerprint):
    result = probe(host, port, server_name=server_name, context=context, timeout=timeout,
                   http_path=http_path, unverified_context=unverified_context)
    if result["ok"]:
        problem = _expectation_problem(result, expect_serial, expect_fingerprint)
        if problem:
            result.update(
                ok=False, failure_class="serial_mismatch",
                msg="%s (TLS name %s) %s" % (result["target"], result["server_name"], problem),
                hint="the service still serves the previous certificate: was it reloaded (SIGHUP / nginx reload)? "
                     "Does the new key match the new cert (a mismatched pair keeps the old cert serving)?",
            )
    return result


def probe_until(host, port, server_name=None, context=None, unverified_context=None, timeout=10, http_path=None,
                expect_serial=None, expect_fingerprint=None, wait_timeout=0, interval=1, first_pause=None):
    """probe() again, with a growing pause, until it is ok (and serves `expect_serial` /
    `expect_fingerprint` when given) or `wait_timeout` seconds have passed.

    Returns the last probe()'s result (a missing serial/fingerprint is
    ok=False, failure_class serial_mismatch) plus attempts, elapsed (s) and
    observed (the outcomes seen, consecutive repeats folded, e.g. [reset, ok]);
    target, verify_message, errno and phase are always present. A failed
    probe is a result, not an exception; only bad arguments raise RotateError
    (bad_input). ``first_pause`` (below ``interval``): the pauses start there and grow, for a
    service that was just reloaded and serves the new certificate a few milliseconds later.
    """
    if timeout <= 0 or wait_timeout < 0 or interval <= 0:
        raise RotateError("bad_input", "timeout and interval must be > 0, wait_timeout >= 0")
    deadline = Deadline(wait_timeout, interval, cap=MAX_PAUSE)
    if first_pause and 0 < first_pause < interval:
        deadline.restart_pauses(first_pause)
    attempts = 0
    observed = []
    while True:
        attempts += 1
        result = _probe_expecting(host, port, server_name, context, unverified_context, timeout, http_path,
                                  expect_serial, expect_fingerprint)
        label = result["failure_class"] or "ok"
        if not observed or observed[-1] != label:
            observed.append(label)
        if result["ok"] or not deadline.wait():
            break

    result.update(attempts=attempts, elapsed=deadline.elapsed(), observed=observed)
    for key in ("target", "verify_message", "errno", "phase"):
        result.setdefault(key, None)
    return result
