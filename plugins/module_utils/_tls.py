# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TLS client side: one place that builds the SSL context (trust, client cert)
and opens a connection with an SNI name distinct from the address. Every
failure comes out as a classified RotateError.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import ssl

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


def connect(host, port, server_name=None, context=None, timeout=10.0):
    """Open a TLS connection to host:port and finish the handshake.

    SNI and the hostname check use `server_name` (default: `host`). Python sends
    no SNI for an IP address, so pass server_name whenever the address is an IP
    and the server picks its certificate by name. Raises a classified RotateError.
    """
    if context is None:
        context = make_context()
    target = "%s:%s" % (host, port)
    name = server_name or host
    phase = "connect"
    sock = None
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        phase = "handshake"
        tls = context.wrap_socket(sock, server_hostname=name)
        return tls
    except Exception as exc:  # classify every failure, socket included
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        raise classify_exception(exc, target=target, server_name=name, phase=phase)


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
