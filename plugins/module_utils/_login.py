# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prove a client certificate: log in with it through cert auth, look the token up,
revoke it and compare its policies with the expected ones.

Used by the cert_login module and by the phase engine (the gates of admin and
agent_login). The token is never returned nor put in a message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import (
    HAS_CRYPTOGRAPHY,
    cert_info,
    format_serial,
    load_pem_bundle,
)

# What OpenBao answers (HTTP 400) when no mapping accepts the certificate.
_REFUSALS = {
    "invalid certificate or no client certificate supplied": (
        "the mapping does not exist, or its CA bundle does not hold the issuer of the certificate"),
    "no chain matching all constraints could be found": (
        "the certificate chains to a CA of the mapping but fails its constraints "
        "(allowed_common_names, allowed_dns_sans, allowed_uri_sans, required_extensions)"),
    "no client certificate found": (
        "no client certificate reached Vault: a TLS-terminating proxy in between, or client_cert not set"),
}


def describe_client_cert(path):
    """Subject/serial/not_after of the client cert file, or None when it cannot be read."""
    if not path or not HAS_CRYPTOGRAPHY:
        return None
    try:
        with open(path, "rb") as handle:
            info = cert_info(load_pem_bundle(handle.read(), what="client_cert")[0])
    except (IOError, OSError, RotateError):
        return None
    return {"subject": info["subject"], "serial": info["serial"], "not_after": info["not_after"],
            "common_name": info["common_name"]}


def classify_login_error(err, mapping, mount, cert):
    """Turn Vault's 400 refusals into permission_denied naming the mapping, the cert and what to check."""
    errors = err.details.get("errors") or []
    text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
    for needle, why in _REFUSALS.items():
        if needle in text:
            who = "certificate CN=%s serial %s" % (cert["common_name"], cert["serial"]) if cert else "the client certificate"
            target = "mapping '%s'" % mapping if mapping else "any mapping"
            return RotateError(
                "permission_denied",
                "cert login at auth/%s/login%s: %s does not accept %s (Vault: %s)" % (
                    mount, (" in namespace '%s'" % err.details["namespace"]) if err.details.get("namespace") else "",
                    target, who, text),
                "%s; check with: bao read %sauth/%s/certs/%s" % (
                    why, ("-namespace=%s " % err.details["namespace"]) if err.details.get("namespace") else "",
                    mount, mapping or "<name>"),
                dict(err.details, mapping=mapping),
            )
    return err


def compare_policies(expected, got, match):
    """(missing, unexpected) policy names; 'default' only counts when expected lists it."""
    expected = set(expected)
    got = set(got)
    if "default" not in expected:
        got.discard("default")
    missing = sorted(expected - got)
    unexpected = sorted(got - expected) if match == "exact" else []
    return missing, unexpected


def metadata_of(auth):
    meta = auth.get("metadata") or {}
    serial = meta.get("serial_number")
    try:  # cert auth reports the serial in decimal
        serial = format_serial(int(serial)) if serial is not None else None
    except (TypeError, ValueError):
        pass
    return {
        "cert_name": meta.get("cert_name"),
        "common_name": meta.get("common_name"),
        "serial": serial,
        "subject_key_id": meta.get("subject_key_id"),
        "authority_key_id": meta.get("authority_key_id"),
    }


def _no_token(text, token):
    return text.replace(token, "********") if token else text


def cert_login(client, mount, mapping, expected_policies=None, policies_match="exact", revoke=True, cert_path=None,
               warn=None):
    """Log in at auth/<mount>/login (as `mapping`, or any mapping when None) with the client cert of `client`.

    `client` is a VaultClient whose TLS context carries the certificate under
    test; any token it holds is dropped first (this proves the certificate,
    never a token from the environment) and, with `revoke`, the new token is
    revoked and dropped again. `cert_path` (the client cert file) only names
    the certificate in the result and in refusals. `warn(msg)` gets the
    non-fatal problems (lookup or revocation failed).

    Returns {policies, token_policies, display_name, metadata, lease_duration,
    renewable, revoked} plus client_certificate {subject, serial, not_after}
    when cert_path parses. Raises RotateError: permission_denied naming the
    mapping and certificate when Vault refuses the login (or the transport
    class), policy_mismatch when `expected_policies` is given and the token's
    policies differ (details: missing_policies, unexpected_policies and every
    result field). Every RotateError carries client_certificate in its
    details when known.
    """
    mount = (mount or "cert").strip("/")
    cert = describe_client_cert(cert_path)
    result = {}
    if cert:
        result["client_certificate"] = dict((k, cert[k]) for k in ("subject", "serial", "not_after"))

    client.token = None  # never a token from the environment: this proves the certificate
    try:
        auth = client.login_cert(mount, mapping)
    except RotateError as err:
        err = classify_login_error(err, mapping, mount, cert)
        err.details.update(result)
        raise err
    token = client.token

    def say(msg):
        if warn is not None:
            warn(_no_token(msg, token))

    try:
        display_name = client.lookup_self().get("display_name")
    except RotateError as err:
        say("token lookup after login failed: %s" % err)
        display_name = None
    result.update(
        policies=sorted(auth.get("policies") or []),
        token_policies=sorted(auth.get("token_policies") or []),
        display_name=display_name,
        metadata=metadata_of(auth),
        lease_duration=auth.get("lease_duration"),
        renewable=bool(auth.get("renewable")),
        revoked=False,
    )
    if revoke:
        try:
            client.revoke_self()
            result["revoked"] = True
        except RotateError as err:
            say("could not revoke the login token (it expires in %ss): %s" % (auth.get("lease_duration"), err))
        client.token = None

    if expected_policies is not None:
        missing, unexpected = compare_policies(expected_policies, result["token_policies"], policies_match)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append("missing %s" % ", ".join(missing))
            if unexpected:
                parts.append("unexpected %s" % ", ".join(unexpected))
            name = mapping or result["metadata"]["cert_name"]
            err = RotateError(
                "policy_mismatch",
                "cert login through mapping '%s' gave policies %s: %s" % (
                    name, ", ".join(result["token_policies"]), "; ".join(parts)),
                "fix token_policies of auth/%s/certs/%s (or expected_policies)" % (mount, name))
            # Set after construction: the result's null fields (display_name) stay in the failure.
            err.details.update(result, missing_policies=missing, unexpected_policies=unexpected)
            raise err
    return result
