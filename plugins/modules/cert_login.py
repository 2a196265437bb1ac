#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec.vault_rotate contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cert_login
short_description: Prove that a client certificate logs in through a cert-auth mapping and gets the right policies
description:
  - Logs in at C(auth/<cert_auth_mount>/login) with the client certificate of O(client_cert)/O(client_key)
    through the mapping O(cert_role), the way a Vault agent does, and returns what Vault granted.
  - O(client_cert) and O(client_key) are the identity to test (for example the new agent certificate);
    they are required, as options or from E(VAULT_CLIENT_CERT)/E(VAULT_CLIENT_KEY).
  - Exercises in one step the TLS trust (server certificate, listener's client CA), the mapping (CA
    bundle, allowed names) and the policies; it is the gate of the agent login certificate phase.
  - With O(expected_policies), fails with RV(failure_class=policy_mismatch) when the token's policies
    are not the expected ones.
  - Revokes the token it got (O(revoke)), so gates leave no tokens behind. The token and its accessor
    are never returned.
  - Never reports C(changed).
version_added: 0.1.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
  - privsec.vault_rotate.connection
attributes:
  check_mode:
    support: full
    details: The login runs in check mode too (it is a check); the token is revoked as usual.
  diff_mode:
    support: none
options:
  expected_policies:
    description:
      - Policies the token must have. V(default) is ignored on both sides unless listed here.
      - Not set means any policies are accepted.
    type: list
    elements: str
  policies_match:
    description:
      - V(exact) - the token's policies are exactly O(expected_policies).
      - V(superset) - the token has at least O(expected_policies) (more are fine).
    type: str
    choices: [exact, superset]
    default: exact
  revoke:
    description:
      - Revoke the token after the check. A failed revocation is a warning (the token expires with its TTL).
    type: bool
    default: true
notes:
  - Log in on the Vault listener directly, not through a TLS-terminating proxy, which replaces the
    client's identity with its own upstream certificate.
  - O(auth_method) and O(token) are ignored - this module always logs in with the certificate.
seealso:
  - module: privsec.vault_rotate.cert_auth_mapping
  - module: community.hashi_vault.vault_login
    description: Log in with any auth method (cert included) and keep the token for later tasks; this module proves
      the login and the policies, and revokes its token.
"""

EXAMPLES = r"""
- name: Gate - the new agent cert of ncprd1 logs in and gets the mapped policies
  privsec.vault_rotate.cert_login:
    url: https://127.0.0.1:22400
    tls_server_name: vault.prod.privsec.ch
    ca_cert: /home/ncprd1/vault/ca/ca.pem
    client_cert: /home/ncprd1/vault/mtls/agent.crt
    client_key: /home/ncprd1/vault/mtls/agent.key
    cert_role: agent-ncprd1
    expected_policies: [pki-issue-ncprd1, marker-cert-auth]
  register: agent_login

- name: The admin identity has at least the rotation policy
  privsec.vault_rotate.cert_login:
    cert_role: admin
    expected_policies: [vault-rotate-admin]
    policies_match: superset

- name: The same in a Vault Enterprise / OpenBao namespace, through the egress proxy
  privsec.vault_rotate.cert_login:
    cert_role: admin
    expected_policies: [vault-rotate-admin]
    policies_match: superset
    namespace: team-a/prod  # or VAULT_NAMESPACE
    proxy: http://proxy.internal:3128  # or VAULT_PROXY_ADDR; HTTPS_PROXY is not read
"""

RETURN = r"""
policies:
  description: All policies of the token (token, identity and V(default)), sorted.
  returned: success
  type: list
  elements: str
  sample: [default, marker-cert-auth, pki-issue-ncprd1]
token_policies:
  description: Policies that came from the mapping (plus V(default) unless the mapping excludes it), sorted.
  returned: success
  type: list
  elements: str
display_name:
  description: Display name of the token, as Vault shows it (C(cert-<mapping display name>)).
  returned: success
  type: str
  sample: cert-agent-ncprd1
metadata:
  description: What Vault saw of the login certificate.
  returned: success
  type: dict
  contains:
    cert_name:
      description: The mapping that accepted the certificate.
      type: str
    common_name:
      description: Common name of the client certificate.
      type: str
    serial:
      description: Serial of the client certificate, lowercase colon-separated hex.
      type: str
    subject_key_id:
      description: Subject key identifier of the client certificate.
      type: str
    authority_key_id:
      description: Authority key identifier (the issuing CA's key).
      type: str
lease_duration:
  description: TTL of the token in seconds.
  returned: success
  type: int
renewable:
  description: Whether the token is renewable.
  returned: success
  type: bool
revoked:
  description: Whether the token was revoked after the check.
  returned: success
  type: bool
client_certificate:
  description: The client certificate used (read on the host that runs the task), never PEM.
  returned: when the file parses
  type: dict
  contains:
    subject:
      description: Subject of the certificate.
      type: str
    serial:
      description: Serial, lowercase colon-separated hex.
      type: str
    not_after:
      description: End of validity, ISO 8601 UTC.
      type: str
missing_policies:
  description: With RV(failure_class=policy_mismatch), expected policies the token lacks.
  returned: failure
  type: list
  elements: str
unexpected_policies:
  description: With RV(failure_class=policy_mismatch) and O(policies_match=exact), policies the token has but should not.
  returned: failure
  type: list
  elements: str
failure_class:
  description:
    - On failure, the class of the error. V(permission_denied) when the mapping does not accept the
      certificate, V(policy_mismatch) when the policies differ, V(tls_alert) / V(reset) /
      V(untrusted_server_cert) when TLS fails.
  returned: failure
  type: str
hint:
  description: On failure, the next thing to check.
  returned: failure
  type: str
"""

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._login import cert_login
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultModule


def main():
    module = VaultModule(
        argument_spec=dict(
            expected_policies=dict(type="list", elements="str"),
            policies_match=dict(type="str", choices=["exact", "superset"], default="exact"),
            revoke=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    mapping = p.get("cert_role")
    if not p.get("client_cert"):
        module.fail_json(msg="cert_login needs the identity to test: client_cert and client_key (or VAULT_CLIENT_CERT/KEY)",
                         failure_class="bad_input")
    client = module.vault_client()
    try:
        result = cert_login(client, p.get("cert_auth_mount"), mapping, expected_policies=p.get("expected_policies"),
                            policies_match=p["policies_match"], revoke=p["revoke"], cert_path=p.get("client_cert"),
                            warn=module.warn)
    except RotateError as err:
        module.fail_from(err, changed=False)
    if client.token:  # revoke=false: the token lives on, keep it out of any output
        module.no_log_values.add(client.token)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
