#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: trust_bundle
short_description: Keep a PEM file of CA certificates equal to a wanted set, atomically and with a backup
description:
  - Writes a CA bundle file (a client CA file, an agent's C(ca.pem), a proxy's C(current-ca-chain.pem)) so that it
    holds exactly the wanted certificates.
  - Compares as a SET of certificates (by SHA-256 fingerprint) - order, duplicates, whitespace and text between the
    PEM blocks do not count. The file is rewritten only when the set differs, so a second identical task reports
    C(changed=false).
  - The file is replaced atomically and the previous one is kept as C(<path>.prev); O(state=restored) puts it back.
  - Diff and return values list the certificates (subject, serial, not_after), never PEM.
version_added: 0.1.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
  - privsec.vault_rotate.files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: One line per certificate (subject, serial, not_after) before and after, sorted.
options:
  path:
    description:
      - Path of the bundle file on the host running the task.
    type: path
    required: true
  certificates:
    description:
      - The wanted certificates, as one PEM text (a bundle) or a list of PEM texts (each may hold several).
      - Duplicates are written once, in the order first seen.
      - Required with O(state=present).
    type: raw
  mode:
    description:
      - Mode of the file.
    type: str
    default: '0644'
  state:
    description:
      - V(present) makes the file hold the wanted set.
      - V(restored) puts the C(.prev) file back (the generation before the last change); fails when there is none.
    type: str
    choices: [present, restored]
    default: present
notes:
  - During a CA rollover pass the old and the new CA together; clients keep trusting servers of either generation.
  - Certificates that are expired at run time are still written (a bundle may be staged ahead) but named in
    RV(expired) and in a warning.
  - Requires the Python C(cryptography) library on the host that runs the task.
seealso:
  - module: privsec.vault_rotate.cert_material
  - module: privsec.vault_rotate.pki_issuers_info
  - module: community.crypto.x509_certificate_info
    description: Inspect one certificate of a bundle.
requirements:
  - cryptography >= 3.1
"""

EXAMPLES = r"""
- name: The agent's CA file holds every valid issuer and the root
  privsec.vault_rotate.trust_bundle:
    path: /home/ncprd1/vault/ca/ca.pem
    certificates: "{{ issuers.ca_bundle }}"
    owner: ncprd1
    group: ncprd1
    mode: "0644"
  register: agent_ca

- name: Old and new root during a CA rollover, as a list
  privsec.vault_rotate.trust_bundle:
    path: /home/proxyprod/nginx/ca/current-ca-chain.pem
    certificates:
      - "{{ lookup('ansible.builtin.file', 'old-root.pem') }}"
      - "{{ new_chain }}"

- name: Put the previous CA file back (rollback)
  privsec.vault_rotate.trust_bundle:
    path: /home/ncprd1/vault/ca/ca.pem
    state: restored
  when: agent_ca is changed
"""

RETURN = r"""
before:
  description: Certificates in the file before (subject, serial, not_after), in file order. Empty when the file was missing.
  returned: always
  type: list
  elements: dict
  sample: [{subject: "CN=privsec root,O=privsec", serial: "1f:02", not_after: "2036-11-25T17:50:00Z"}]
after:
  description: Certificates in the file after the task (or that would be, in check mode).
  returned: always
  type: list
  elements: dict
added:
  description: Certificates that were not in the file before.
  returned: state=present
  type: list
  elements: dict
removed:
  description: Certificates that are no longer in the file.
  returned: state=present
  type: list
  elements: dict
expired:
  description: Certificates of the wanted set that are expired now.
  returned: state=present
  type: list
  elements: dict
before_unparsable:
  description: Why the file found did not parse (it is then replaced as a whole).
  returned: when the file did not parse
  type: str
backup_file:
  description: The C(.prev) file written, when the file was replaced and O(backup=true).
  returned: when changed with O(state=present)
  type: str
failure_class:
  description: On failure, the class of the error, for example V(bad_pem), V(missing_file).
  returned: failure
  type: str
hint:
  description: On failure, the next thing to check.
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _files
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509
from ansible_collections.privsec.vault_rotate.plugins.module_utils._bundle import diff_lines, ensure_bundle, restore_bundle
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            certificates=dict(type="raw"),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="str", default="0644"),
            backup=dict(type="bool", default=True),
            state=dict(type="str", choices=["present", "restored"], default="present"),
        ),
        supports_check_mode=True,
    )
    if not _x509.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=_x509.CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        _files.parse_mode(module.params["mode"])
        p = module.params
        if p["state"] == "present":
            result = ensure_bundle(p["path"], p.get("certificates"), owner=p.get("owner"), group=p.get("group"),
                                   mode=p["mode"], backup=p["backup"], check_mode=module.check_mode, warn=module.warn)
        else:
            result = restore_bundle(p["path"], check_mode=module.check_mode)
    except RotateError as err:
        output = err.as_failure()
        output.setdefault("path", module.params["path"])
        module.fail_json(**output)
    result["path"] = module.params["path"]
    if module._diff:
        result["diff"] = {"before": diff_lines(result["before"]), "after": diff_lines(result["after"]),
                          "before_header": module.params["path"], "after_header": module.params["path"]}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
