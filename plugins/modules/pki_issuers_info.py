#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec.vault_rotate contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pki_issuers_info
short_description: List the issuers of a Vault/OpenBao PKI mount and build the trust bundle of a CA rollover
description:
  - Lists the issuers of a PKI mount (C(<mount>/issuers)) and reads each one (C(<mount>/issuer/<id>)).
  - Returns each issuer parsed (serial, subject, validity, whether it is the default).
  - Builds RV(ca_bundle), the PEM of every currently valid issuer, each once, followed by their parents
    up to the root where Vault knows them. During a CA rollover it holds the old and the new CA, which
    is what a cert-auth mapping, a listener's client CA file or a proxy's trust file must hold.
  - Returns RV(default_chain), the chain of the default issuer (issuer first, root last).
  - Read only; never reports C(changed).
version_added: 0.1.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
  - privsec.vault_rotate.connection
attributes:
  check_mode:
    support: full
    details: Read only, runs the same in check mode.
  diff_mode:
    support: none
options:
  mount:
    description:
      - Mount path of the PKI secrets engine, for example V(pki-prod).
    type: str
    required: true
  valid_only:
    description:
      - Return only issuers that are valid now (not expired, not yet valid or revoked ones).
      - RV(ca_bundle) always holds only valid issuers (and their parents).
    type: bool
    default: true
notes:
  - Needs C(list) on C(<mount>/issuers) and C(read) on C(<mount>/issuer/*).
  - Makes one request per issuer plus the list (and the login with O(auth_method=cert)).
seealso:
  - module: privsec.vault_rotate.cert_auth_mapping
  - module: privsec.vault_rotate.pki_cert
  - module: community.crypto.x509_certificate_info
    description: Inspect one certificate of the returned bundle (subject, validity, key usage).
"""

EXAMPLES = r"""
- name: Trust bundle of pki-prod (old + new intermediate during a rollover)
  privsec.vault_rotate.pki_issuers_info:
    mount: pki-prod
  register: pki_issuers

- name: Every agent mapping trusts every valid issuer
  privsec.vault_rotate.cert_auth_mapping:
    name: agent-ncprd1
    certificate: "{{ pki_issuers.ca_bundle }}"
    allowed_common_names: [agent-ncprd1.prod.privsec.ch]
    token_policies: [pki-issue-ncprd1, marker-cert-auth]
    token_ttl: 1h

- name: Warn about an issuer that expires soon
  ansible.builtin.debug:
    msg: "{{ item.issuer_name }} expires in {{ item.days_left | int }} days"
  loop: "{{ pki_issuers.issuers | selectattr('days_left', 'lt', 90) }}"
"""

RETURN = r"""
issuers:
  description: The issuers of the mount (only the valid ones with O(valid_only=true)), default first, then by not_after.
  returned: success
  type: list
  elements: dict
  contains:
    issuer_id:
      description: Vault's id of the issuer.
      type: str
    issuer_name:
      description: Name of the issuer (may be empty).
      type: str
    serial:
      description: Serial of the issuer certificate, lowercase colon-separated hex.
      type: str
    subject:
      description: Subject of the issuer certificate (RFC 4514).
      type: str
    fingerprint_sha256:
      description: SHA-256 fingerprint of the issuer certificate.
      type: str
    not_before:
      description: Start of validity, ISO 8601 UTC.
      type: str
    not_after:
      description: End of validity, ISO 8601 UTC.
      type: str
    days_left:
      description: Days until not_after (negative when expired).
      type: float
    is_default:
      description: Whether this is the mount's default issuer.
      type: bool
    revoked:
      description: Whether the issuer is revoked.
      type: bool
    valid:
      description: Whether the issuer is usable now (in its validity period and not revoked).
      type: bool
ca_bundle:
  description:
    - PEM of every valid issuer, each once, then their parents up to the root where Vault knows them
      (each certificate once). Empty string when there is none.
  returned: success
  type: str
ca_bundle_certs:
  description: RV(ca_bundle) described (subject, serial, not_after), in the same order; never PEM.
  returned: success
  type: list
  elements: dict
default_issuer_id:
  description: Id of the default issuer, V(null) when the mount has none.
  returned: success
  type: str
default_chain:
  description: PEM of the default issuer followed by its parents (issuer first, root last).
  returned: success
  type: str
failure_class:
  description: On failure, the class of the error, for example V(not_found) or V(permission_denied).
  returned: failure
  type: str
hint:
  description: On failure, the next thing to check.
  returned: failure
  type: str
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._pki import read_issuers
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultModule
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY


def main():
    module = VaultModule(
        argument_spec=dict(
            mount=dict(type="str", required=True),
            valid_only=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    mount = module.params["mount"].strip("/")
    client = module.authenticated_client()
    try:
        result = read_issuers(client, mount, valid_only=module.params["valid_only"])
    except RotateError as err:
        module.fail_from(err, mount=mount)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
