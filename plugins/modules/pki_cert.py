#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec.vault_rotate contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pki_cert
short_description: Sign a CSR or issue a certificate with a Vault/OpenBao PKI role
description:
  - Signs a certificate signing request with C(<mount>/sign/<role>) when O(csr) is given, so the
    private key never leaves the host that made it (the default flow of this collection).
  - Issues a new key and certificate with C(<mount>/issue/<role>) when O(csr) is not given; Vault
    generates the private key then and the module returns it (see RV(private_key)).
  - Makes exactly one Vault request per run, plus the login when O(auth_method=cert).
  - Always reports C(changed) (every run makes a new certificate); whether a rotation is due is
    decided before, from the files on the target (module C(privsec.vault_rotate.cert_material)).
  - Failures come back with a RV(failure_class), V(not_found) for an unknown mount or role,
    V(bad_input) with Vault's own message when the role refuses a name or TTL,
    V(permission_denied) with the path the token may not write.
version_added: 0.1.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
  - privsec.vault_rotate.connection
attributes:
  check_mode:
    support: full
    details: Nothing is issued and Vault is not contacted; the result has C(changed=true) and RV(certificate=null).
  diff_mode:
    support: none
options:
  mount:
    description:
      - Mount path of the PKI secrets engine, for example V(pki-prod).
    type: str
    required: true
  role:
    description:
      - Name of the PKI role, for example V(nginx-ncprd1) or V(agent-mtls-ncprd1).
    type: str
    required: true
  csr:
    description:
      - PEM text of a certificate signing request.
      - When set, the CSR is signed with C(<mount>/sign/<role>); when not, C(<mount>/issue/<role>) makes a new key.
      - The CSR is checked locally before anything is sent.
    type: str
  common_name:
    description:
      - Common name of the certificate. Required by Vault for C(issue); for C(sign), Vault uses the
        CSR's name unless this is given (and the role allows it).
    type: str
  alt_names:
    description:
      - DNS subject alternative names.
    type: list
    elements: str
    default: []
  ip_sans:
    description:
      - IP address subject alternative names.
    type: list
    elements: str
    default: []
  ttl:
    description:
      - Requested lifetime, for example V(720h) or V(30d). Vault caps it at the role's C(max_ttl).
      - Default is the role's C(ttl).
    type: str
  key_type:
    description:
      - Key type Vault generates (issue only). Vault honours it only when the role's C(key_type) is C(any).
      - Default is the role's key type.
    type: str
    choices: [ec, rsa, ed25519]
  key_bits:
    description:
      - Key size (issue only), for example V(256) for EC P-256, V(2048) for RSA.
      - Default is Vault's default for O(key_type).
    type: int
  exclude_cn_from_sans:
    description:
      - Do not copy the common name into the DNS subject alternative names.
    type: bool
    default: false
  format:
    description:
      - Encoding of the returned certificates. Only PEM is supported.
    type: str
    choices: [pem]
    default: pem
notes:
  - "RV(private_key) is a secret. Tasks that issue (no O(csr)) should set C(no_log: true); the roles of this
    collection do. Ansible masks registered secrets in a module's own return as well, so the module cannot
    hide the key by itself without making it useless to the next task."
  - The issued certificate is not revoked or tidied by this module; old certificates expire.
seealso:
  - module: privsec.vault_rotate.cert_auth_mapping
  - module: privsec.vault_rotate.pki_issuers_info
"""

EXAMPLES = r"""
- name: Sign the CSR made on the app host (the key never leaves it)
  privsec.vault_rotate.pki_cert:
    url: https://127.0.0.1:22400
    tls_server_name: vault.prod.privsec.ch
    ca_cert: /root/vault/tls-admin/prod/issuing_ca.pem
    client_cert: /root/vault/tls-admin/prod/admin.crt
    client_key: /root/vault/tls-admin/prod/admin.key
    cert_role: admin
    mount: pki-prod
    role: nginx-ncprd1
    csr: "{{ frontend_csr.csr }}"
    common_name: ncprd1.prod.privsec.ch
    alt_names: [ncprd1.prod.privsec.ch]
    ttl: 720h
  register: frontend_cert

- name: Issue key and certificate in Vault (when the target cannot make a key)
  privsec.vault_rotate.pki_cert:
    mount: pki-prod
    role: agent-mtls-ncprd1
    common_name: agent-ncprd1.prod.privsec.ch
    key_type: ec
    key_bits: 256
    ttl: 72h
  register: agent_cert
  no_log: true  # the result holds the private key
"""

RETURN = r"""
certificate:
  description: PEM of the new certificate (the leaf). V(null) in check mode.
  returned: always
  type: str
issuing_ca:
  description: PEM of the CA certificate that signed it.
  returned: success, not in check mode
  type: str
ca_chain:
  description: PEM of each CA certificate from the issuer up to the root, as Vault knows them.
  returned: success, not in check mode
  type: list
  elements: str
fullchain:
  description:
    - The leaf followed by its intermediate CA certificates (every CA of RV(ca_chain) that is not
      self-signed), the content of a C(fullchain) file for a TLS server or client.
  returned: success, not in check mode
  type: str
serial:
  description: Serial number, lowercase colon-separated hex as Vault prints it.
  returned: success, not in check mode
  type: str
  sample: 3a:1f:00:9c
fingerprint_sha256:
  description: SHA-256 fingerprint of the DER certificate, lowercase colon-separated hex.
  returned: success, not in check mode
  type: str
not_before:
  description: Start of validity, ISO 8601 UTC.
  returned: success, not in check mode
  type: str
  sample: "2026-11-25T17:50:00Z"
not_after:
  description: End of validity, ISO 8601 UTC.
  returned: success, not in check mode
  type: str
days_left:
  description: Days until RV(not_after), as a float.
  returned: success, not in check mode
  type: float
common_name:
  description: Common name in the certificate's subject.
  returned: success, not in check mode
  type: str
dns_names:
  description: DNS subject alternative names in the certificate.
  returned: success, not in check mode
  type: list
  elements: str
ip_addresses:
  description: IP subject alternative names in the certificate.
  returned: success, not in check mode
  type: list
  elements: str
private_key:
  description:
    - SECRET. PEM of the private key Vault generated. Only for issue (no O(csr)); use C(no_log) on the task.
  returned: success, issue only, not in check mode
  type: str
private_key_type:
  description: Type of RV(private_key) as Vault reports it (V(ec), V(rsa), V(ed25519)).
  returned: success, issue only, not in check mode
  type: str
operation:
  description: V(sign) or V(issue).
  returned: always
  type: str
path:
  description: The Vault API path written (or that would be written in check mode).
  returned: always
  type: str
  sample: pki-prod/sign/nginx-ncprd1
vault_requests:
  description: Number of HTTP requests made to Vault (the login included).
  returned: always
  type: int
failure_class:
  description: On failure, the class of the error (see the collection's development guide), for example V(not_found).
  returned: failure
  type: str
hint:
  description: On failure, the next thing to check.
  returned: failure
  type: str
"""

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultModule
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import (
    HAS_CRYPTOGRAPHY,
    CRYPTOGRAPHY_IMPORT_ERROR,
    cert_info,
    cert_to_pem,
    is_self_signed,
    load_pem_bundle,
)

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
except ImportError:  # reported through HAS_CRYPTOGRAPHY
    pass

from ansible.module_utils.basic import missing_required_lib


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


def main():
    module = VaultModule(
        argument_spec=dict(
            mount=dict(type="str", required=True),
            role=dict(type="str", required=True),
            csr=dict(type="str"),
            common_name=dict(type="str"),
            alt_names=dict(type="list", elements="str", default=[]),
            ip_sans=dict(type="list", elements="str", default=[]),
            ttl=dict(type="str"),
            key_type=dict(type="str", choices=["ec", "rsa", "ed25519"]),
            key_bits=dict(type="int"),
            exclude_cn_from_sans=dict(type="bool", default=False),
            format=dict(type="str", choices=["pem"], default="pem"),
        ),
        mutually_exclusive=[("csr", "key_type"), ("csr", "key_bits")],
        supports_check_mode=True,
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    p = module.params
    mount = p["mount"].strip("/")
    role = p["role"].strip("/")
    operation = "sign" if p.get("csr") else "issue"
    path = "%s/%s/%s" % (mount, operation, role)
    base = dict(operation=operation, path=path)

    csr = None
    if p.get("csr"):
        try:
            csr = load_csr(p["csr"])
        except RotateError as err:
            module.fail_from(err, **base)

    if module.check_mode:
        module.exit_json(changed=True, certificate=None, vault_requests=0, **base)

    client = module.authenticated_client()
    try:
        answer = client.write(path, request_body(p)) or {}
    except RotateError as err:
        module.fail_from(classify_pki_error(err, mount, role, path), vault_requests=client.requests_made, **base)
    data = answer.get("data") or {}
    if not data.get("certificate"):
        module.fail_json(msg="Vault answered %s without a certificate" % path, failure_class="server_error",
                         vault_requests=client.requests_made, **base)
    try:
        result = describe_issued(data, csr)
    except RotateError as err:
        module.fail_from(err, vault_requests=client.requests_made, **base)
    module.exit_json(changed=True, vault_requests=client.requests_made, **dict(base, **result))


if __name__ == "__main__":
    main()
