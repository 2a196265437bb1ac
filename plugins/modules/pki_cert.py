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
  - module: community.hashi_vault.vault_pki_generate_certificate
    description: Issue a certificate with a Vault PKI role through C(hvac), the private key made by Vault (no CSR).
  - module: community.crypto.openssl_csr
    description: Make the CSR this module signs, from a key that never leaves the host.
  - module: community.crypto.x509_certificate_info
    description: Read the issued certificate (serial, SANs, validity) from a file or PEM.
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

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._pki import load_csr, operation_path, sign_or_issue
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultModule
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY


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
    operation, path = operation_path(p["mount"], p["role"], p.get("csr"))
    base = dict(operation=operation, path=path)

    if p.get("csr"):
        try:
            load_csr(p["csr"])
        except RotateError as err:
            module.fail_from(err, **base)

    if module.check_mode:
        module.exit_json(changed=True, certificate=None, vault_requests=0, **base)

    client = module.authenticated_client()
    try:
        result = sign_or_issue(client, p["mount"], p["role"], csr=p.get("csr"), common_name=p.get("common_name"),
                               alt_names=p.get("alt_names"), ip_sans=p.get("ip_sans"), ttl=p.get("ttl"),
                               key_type=p.get("key_type"), key_bits=p.get("key_bits"),
                               exclude_cn_from_sans=p["exclude_cn_from_sans"])
    except RotateError as err:
        failure = err.as_failure(vault_requests=client.requests_made, **base)
        if err.failure_class == "server_error" and err.hint is None:
            del failure["hint"]  # "answered without a certificate" has always been reported without a hint
        module.fail_json(**failure)
    module.exit_json(changed=True, vault_requests=client.requests_made, **result)


if __name__ == "__main__":
    main()
