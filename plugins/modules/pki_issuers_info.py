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
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultModule
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    bundle_to_pem,
    cert_info,
    dedupe,
    describe_bundle,
    load_pem_bundle,
    parse_time,
    utcnow,
)


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
    now = utcnow()
    described = []
    try:
        for issuer_id, listed in sorted(list_issuers(client, mount).items()):
            answer = client.read("%s/issuer/%s" % (mount, issuer_id)) or {}
            described.append(describe_issuer(issuer_id, listed, answer.get("data") or {}, now))
    except RotateError as err:
        module.fail_from(err, mount=mount)

    described.sort(key=lambda item: (not item[0]["is_default"], item[0]["not_after"], item[0]["serial"]))
    default = [chain for d, chain in described if d["is_default"]]
    bundle = trust_bundle(described)
    issuers = [d for d, _chain in described if d["valid"] or not module.params["valid_only"]]
    module.exit_json(
        changed=False,
        issuers=issuers,
        ca_bundle=bundle_to_pem(bundle),
        ca_bundle_certs=describe_bundle(bundle),
        default_issuer_id=next((d["issuer_id"] for d, _c in described if d["is_default"]), None),
        default_chain=bundle_to_pem(default[0]) if default else "",
    )


if __name__ == "__main__":
    main()
