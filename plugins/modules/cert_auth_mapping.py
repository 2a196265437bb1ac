#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec.vault_rotate contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cert_auth_mapping
short_description: Keep a Vault/OpenBao cert-auth mapping (auth/cert/certs/<name>) in a desired state
description:
  - Reads C(auth/<mount>/certs/<name>), normalises both the current and the desired state, and
    writes only when they differ.
  - Normalising means policies and name lists compare order- and duplicate-insensitive, TTLs compare
    in seconds (V(1h) equals V(3600)), and the CA bundle compares as a set of certificates (by SHA-256
    fingerprint), not as text.
  - The write always sends the FULL desired state of every option below. An option left out means its
    empty value (no names, no policies, TTL 0 = the mount's default), so a value removed from the task is
    removed from Vault too. Fields this module does not manage (for example C(allowed_email_sans),
    C(required_extensions), OCSP settings) are not sent and keep what Vault has.
  - O(certificate) may hold several CA certificates, so one mapping trusts the old and the new CA
    during a CA rollover.
  - After a write the mapping is read back and compared again; a field Vault did not store fails the task.
version_added: 0.1.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
  - privsec.vault_rotate.connection
attributes:
  check_mode:
    support: full
    details: Reads the mapping (one request plus the login) and reports what would change; writes nothing.
  diff_mode:
    support: full
    details: The CA bundle is shown as a list of O(certificate) subject, serial and not_after, never as PEM.
options:
  mount:
    description:
      - Mount path of the cert auth method.
    type: str
    default: cert
  name:
    description:
      - Name of the mapping, for example V(agent-ncprd1). Agents log in with it (C(name) of the cert login).
    type: str
    required: true
  state:
    description:
      - V(present) makes the mapping match the options; V(absent) deletes it.
    type: str
    choices: [present, absent]
    default: present
  certificate:
    description:
      - PEM bundle of the CA certificate(s) a client certificate must chain to (or a pinned leaf).
      - Several certificates are allowed (old + new CA for a rollover); duplicates are written once.
      - Required with O(state=present).
    type: str
  allowed_common_names:
    description:
      - Common names (globs allowed) a client certificate may have. Empty means any name the CA signed.
    type: list
    elements: str
  allowed_dns_sans:
    description:
      - DNS subject alternative names (globs allowed) a client certificate may have.
    type: list
    elements: str
  allowed_uri_sans:
    description:
      - URI subject alternative names (globs allowed) a client certificate may have.
    type: list
    elements: str
  display_name:
    description:
      - Display name of the tokens. Default is the mapping O(name) (as Vault does).
    type: str
  token_policies:
    description:
      - Policies attached to the tokens of this mapping. Order does not matter.
    type: list
    elements: str
  token_ttl:
    description:
      - Initial TTL of the tokens, as seconds or a duration (V(1h), V(90m), V(2d)). V(0) or unset means the mount default.
    type: raw
  token_max_ttl:
    description:
      - Maximum TTL of the tokens, same forms as O(token_ttl).
    type: raw
  token_period:
    description:
      - Make the tokens periodic with this period, same forms as O(token_ttl). V(0) or unset means not periodic.
    type: raw
  token_bound_cidrs:
    description:
      - Source addresses or CIDR blocks the tokens may be used from.
    type: list
    elements: str
notes:
  - Needs C(read) and C(update) (C(delete) for O(state=absent)) on C(auth/<mount>/certs/<name>).
  - Changing the CA bundle does not affect tokens already issued; agents pick it up at their next login.
seealso:
  - module: privsec.vault_rotate.cert_login
  - module: privsec.vault_rotate.pki_issuers_info
  - module: community.hashi_vault.vault_write
    description: Write any Vault path once, without the comparison, the CA bundle check and the diff of this module.
"""

EXAMPLES = r"""
- name: Let agent-ncprd1 log in with certs of the old or the new CA (rollover overlap)
  privsec.vault_rotate.cert_auth_mapping:
    name: agent-ncprd1
    certificate: "{{ pki_issuers.ca_bundle }}"
    allowed_common_names: [agent-ncprd1.prod.privsec.ch]
    token_policies: [pki-issue-ncprd1, marker-cert-auth]
    token_ttl: 1h
    token_max_ttl: 4h
  register: mapping

- name: Remove a mapping nobody uses any more
  privsec.vault_rotate.cert_auth_mapping:
    name: agent-retired
    state: absent
"""

RETURN = r"""
mapping:
  description:
    - The mapping after the run (normalised), or the mapping it would be in check mode; V(null) when absent.
    - C(certificate) is a list of {subject, serial, not_after} of the trusted CAs, never PEM.
    - TTLs are in seconds; lists are sorted.
  returned: always
  type: dict
  sample:
    certificate:
      - subject: CN=pki-prod intermediate
        serial: "4f:0a:33"
        not_after: "2027-11-25T17:50:00Z"
    allowed_common_names: [agent-ncprd1.prod.privsec.ch]
    allowed_dns_sans: []
    allowed_uri_sans: []
    display_name: agent-ncprd1
    token_policies: [marker-cert-auth, pki-issue-ncprd1]
    token_ttl: 3600
    token_max_ttl: 14400
    token_period: 0
    token_bound_cidrs: []
changed_fields:
  description: Names of the fields that differed (all of them when the mapping is created or deleted).
  returned: always
  type: list
  elements: str
  sample: [certificate, token_ttl]
path:
  description: The Vault API path of the mapping.
  returned: always
  type: str
  sample: auth/cert/certs/agent-ncprd1
diff:
  description: Before and after (normalised, no PEM), in diff mode.
  returned: diff mode
  type: dict
failure_class:
  description: On failure, the class of the error, for example V(permission_denied) or V(bad_pem).
  returned: failure
  type: str
hint:
  description: On failure, the next thing to check.
  returned: failure
  type: str
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._mapping import (
    desired_mapping,
    ensure_mapping,
    mapping_path,
    render_diff,
)
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultModule
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
)


def main():
    module = VaultModule(
        argument_spec=dict(
            mount=dict(type="str", default="cert"),
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            certificate=dict(type="str"),
            allowed_common_names=dict(type="list", elements="str"),
            allowed_dns_sans=dict(type="list", elements="str"),
            allowed_uri_sans=dict(type="list", elements="str"),
            display_name=dict(type="str"),
            token_policies=dict(type="list", elements="str", no_log=False),
            token_ttl=dict(type="raw", no_log=False),
            token_max_ttl=dict(type="raw", no_log=False),
            token_period=dict(type="raw", no_log=False),
            token_bound_cidrs=dict(type="list", elements="str", no_log=False),
        ),
        required_if=[("state", "present", ("certificate",))],
        supports_check_mode=True,
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    p = module.params
    name = p["name"].strip("/")
    path = mapping_path(p["mount"], name)
    if p["state"] == "present":
        try:  # validate the desired state before any network call
            desired_mapping(p, name, path)
        except RotateError as err:
            failure = err.as_failure(path=path, changed=False, changed_fields=[], mapping=None)
            if failure["hint"] is None:
                del failure["hint"]  # a TTL that is not a duration has always been reported without a hint
            module.fail_json(**failure)

    client = module.authenticated_client()
    try:
        result, current, desired = ensure_mapping(client, p["mount"], name, p, state=p["state"],
                                                  check_mode=module.check_mode)
    except RotateError as err:
        module.fail_from(err)
    if module._diff:
        result["diff"] = render_diff(path, current, desired)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
