# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Vault/OpenBao PKI mount: sign a CSR or issue a pair (`<mount>/sign|issue/<role>`),
and read its issuers into the trust bundle of a CA rollover.

Used by the pki_cert and pki_issuers_info modules and by the phase engine; the
client is a `_vault.VaultClient` (already logged in). Failures are RotateError,
classified so the message names the mount, role or path to check.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import (
    bundle_to_pem,
    cert_info,
    cert_to_pem,
    dedupe,
    describe_bundle,
    is_self_signed,
    load_pem_bundle,
    parse_time,
    utcnow,
)

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
except ImportError:  # reported through _x509.HAS_CRYPTOGRAPHY
    pass


# ---------------------------------------------------------------- sign / issue

def load_csr(pem):
    """The CSR object, or RotateError('bad_pem') naming what is wrong."""
    try:
        csr = x509.load_pem_x509_csr(pem.strip().encode("utf-8") + b"\n")
    except (ValueError, TypeError) as exc:
        raise RotateError("bad_pem", "csr is not a PEM certificate signing request: %s" % exc,
                          "pass the PEM text of the CSR ('-----BEGIN CERTIFICATE REQUEST-----')")
    if not csr.is_signature_valid:
        raise RotateError("bad_pem", "the signature of the csr does not verify", "generate the CSR again")
    return csr


def request_body(params):
    """The JSON body of <mount>/sign|issue/<role>: only what the user set, so the role's defaults apply."""
    body = {"format": params["format"]}
    if params.get("csr"):
        body["csr"] = params["csr"].strip() + "\n"
    if params.get("common_name"):
        body["common_name"] = params["common_name"]
    if params.get("alt_names"):
        body["alt_names"] = ",".join(params["alt_names"])
    if params.get("ip_sans"):
        body["ip_sans"] = ",".join(params["ip_sans"])
    if params.get("ttl"):
        body["ttl"] = params["ttl"]
    if params.get("exclude_cn_from_sans"):
        body["exclude_cn_from_sans"] = True
    if not params.get("csr"):
        if params.get("key_type"):
            body["key_type"] = params["key_type"]
        if params.get("key_bits"):
            body["key_bits"] = params["key_bits"]
    return body


def classify_pki_error(err, mount, role, path):
    """Make Vault's PKI answers actionable: OpenBao answers an unknown role with HTTP 400
    'unknown role: x' and an unknown mount with 404 'no handler for route'."""
    errors = err.details.get("errors") or []
    text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
    details = dict(err.details, mount=mount, role=role, path=path)
    if "unknown role" in text:
        return RotateError(
            "not_found", "PKI role '%s' does not exist on mount '%s' (%s: %s)" % (role, mount, path, text),
            "check the role name; list the roles with: bao list %s/roles" % mount, details)
    if err.details.get("status") == 404 or "no handler for route" in text:
        return RotateError(
            "not_found", "PKI mount '%s' not found (no route for %s; role '%s')" % (mount, path, role),
            "check the mount path; list the mounts with: bao secrets list", details)
    if err.failure_class == "permission_denied":
        return RotateError(
            "permission_denied", "permission denied to write '%s' (role '%s' on mount '%s')" % (path, role, mount),
            "the identity's policies need 'update' on %s: check the mapping's token_policies" % path, details)
    if err.failure_class == "bad_input":
        return RotateError(
            "bad_input", "role '%s' on mount '%s' refused the request (%s): %s" % (role, mount, path, text or err.message),
            "compare the names and TTL asked for with the role: bao read %s/roles/%s "
            "(allowed_domains, allow_subdomains, allow_ip_sans, max_ttl)" % (mount, role), details)
    return err


def describe_issued(data, csr=None):
    """Module result fields for Vault's answer `data` (never the private key unless issued)."""
    leaf = load_pem_bundle(data.get("certificate"), what="certificate returned by Vault")[0]
    if csr is not None and leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise RotateError("key_mismatch", "Vault returned a certificate whose key is not the CSR's key",
                          "report this: the answer does not belong to the request")
    chain_pems = data.get("ca_chain") or ([data["issuing_ca"]] if data.get("issuing_ca") else [])
    chain = []
    for pem in chain_pems:
        chain.extend(load_pem_bundle(pem, what="ca_chain returned by Vault"))
    info = cert_info(leaf)
    leaf_pem = cert_to_pem(leaf)
    result = {
        "certificate": leaf_pem,
        "issuing_ca": (data.get("issuing_ca") or "").strip() + "\n" if data.get("issuing_ca") else None,
        "ca_chain": [cert_to_pem(c) for c in chain],
        "fullchain": leaf_pem + "".join(cert_to_pem(c) for c in chain if not is_self_signed(c)),
    }
    for key in ("serial", "fingerprint_sha256", "not_before", "not_after", "days_left",
                "common_name", "dns_names", "ip_addresses"):
        result[key] = info[key]
    if data.get("private_key"):
        result["private_key"] = data["private_key"].strip() + "\n"
        result["private_key_type"] = data.get("private_key_type")
    return result


def operation_path(mount, role, csr=None):
    """(operation, path): sign with a CSR, issue (Vault makes the key) without one."""
    operation = "sign" if csr else "issue"
    return operation, "%s/%s/%s" % (mount.strip("/"), operation, role.strip("/"))


def sign_or_issue(client, mount, role, csr=None, common_name=None, alt_names=None, ip_sans=None, ttl=None,
                  key_type=None, key_bits=None, exclude_cn_from_sans=False):
    """Sign `csr` (PEM) or issue a new pair with `role` of `mount`.

    Returns describe_issued() of Vault's answer plus `operation` and `path`.
    Raises RotateError: bad_pem for a bad CSR, the classify_pki_error() class
    for a refused request, server_error when Vault answers without a
    certificate, key_mismatch when the certificate is not for the CSR's key.
    """
    mount = mount.strip("/")
    role = role.strip("/")
    operation, path = operation_path(mount, role, csr)
    parsed = load_csr(csr) if csr else None
    body = request_body(dict(format="pem", csr=csr, common_name=common_name, alt_names=alt_names, ip_sans=ip_sans,
                             ttl=ttl, key_type=key_type, key_bits=key_bits, exclude_cn_from_sans=exclude_cn_from_sans))
    try:
        answer = client.write(path, body) or {}
    except RotateError as err:
        raise classify_pki_error(err, mount, role, path)
    data = answer.get("data") or {}
    if not data.get("certificate"):
        raise RotateError("server_error", "Vault answered %s without a certificate" % path)
    return dict(describe_issued(data, parsed), operation=operation, path=path)


# ---------------------------------------------------------------- issuers

def list_issuers(client, mount):
    """{issuer_id: key_info} of the mount; {} when it has none. An unknown mount is not_found."""
    path = "%s/issuers" % mount
    status, answer = client.request("LIST", path, expect=(200, 404))
    if status == 404:
        # OpenBao answers 404 both for "no issuers" (empty list) and "no such mount": tell them apart.
        errors = (answer or {}).get("errors") or []
        if any("no handler for route" in str(e) for e in errors):
            raise RotateError("not_found", "PKI mount '%s' not found (no route for %s)" % (mount, path),
                              "check the mount path; list the mounts with: bao secrets list",
                              {"path": path, "status": 404, "errors": errors})
        return {}
    data = (answer or {}).get("data") or {}
    info = data.get("key_info") or {}
    return dict((issuer_id, info.get(issuer_id) or {}) for issuer_id in data.get("keys") or [])


def describe_issuer(issuer_id, listed, data, now):
    """(description dict, [issuer cert] + parents as cryptography objects)."""
    cert = load_pem_bundle(data.get("certificate"), what="issuer %s certificate" % issuer_id)[0]
    chain = []
    for pem in data.get("ca_chain") or []:
        chain.extend(load_pem_bundle(pem, what="issuer %s ca_chain" % issuer_id))
    info = cert_info(cert, now=now)
    revoked = bool(data.get("revoked"))
    in_period = parse_time(info["not_before"]) <= now < parse_time(info["not_after"])
    return {
        "issuer_id": issuer_id,
        "issuer_name": data.get("issuer_name") or listed.get("issuer_name") or "",
        "serial": info["serial"],
        "subject": info["subject"],
        "fingerprint_sha256": info["fingerprint_sha256"],
        "not_before": info["not_before"],
        "not_after": info["not_after"],
        "days_left": info["days_left"],
        "is_default": bool(listed.get("is_default")),
        "revoked": revoked,
        "valid": in_period and not revoked,
    }, dedupe([cert] + chain)


def trust_bundle(described):
    """Valid issuers first (each once), then the parents of each, each once."""
    valid = [(d, chain) for d, chain in described if d["valid"]]
    return dedupe([chain[0] for _d, chain in valid] + [c for _d, chain in valid for c in chain[1:]])


def read_issuers(client, mount, valid_only=True, now=None, public=False):
    """Every issuer of `mount`, read and parsed, and the trust bundle of the valid ones.

    With `public`, only the endpoints that need no token are read (LIST
    <mount>/issuers and <mount>/issuer/<id>/json): no login, but no revocation
    state either (every issuer in its validity period counts as valid).

    Returns {issuers (default first, then by not_after; the valid ones only
    unless valid_only is false), ca_bundle (PEM), ca_bundle_certs,
    default_issuer_id (None without one), default_chain (PEM, "" without one)}.
    Raises RotateError (not_found for an unknown mount, bad_pem, transport).
    """
    mount = mount.strip("/")
    now = now or utcnow()
    described = []
    for issuer_id, listed in sorted(list_issuers(client, mount).items()):
        answer = client.read("%s/issuer/%s%s" % (mount, issuer_id, "/json" if public else "")) or {}
        described.append(describe_issuer(issuer_id, listed, answer.get("data") or {}, now))
    described.sort(key=lambda item: (not item[0]["is_default"], item[0]["not_after"], item[0]["serial"]))
    default = [chain for d, chain in described if d["is_default"]]
    bundle = trust_bundle(described)
    return dict(
        issuers=[d for d, _chain in described if d["valid"] or not valid_only],
        ca_bundle=bundle_to_pem(bundle),
        ca_bundle_certs=describe_bundle(bundle),
        default_issuer_id=next((d["issuer_id"] for d, _c in described if d["is_default"]), None),
        default_chain=bundle_to_pem(default[0]) if default else "",
    )
