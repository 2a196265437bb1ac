#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cert_material
short_description: Inspect, key and CSR, install and restore the certificate files of a slot on its host
description:
  - Runs on the host that owns the files of one certificate (a slot), that is its private key, certificate,
    fullchain (leaf + intermediates) and CA chain file.
  - O(step=inspect) parses what is on disk and decides keep or rotate, with the reasons
    (V(missing), V(unparsable), V(key_missing), V(key_mismatch), V(expired), V(due), V(cn_differs),
    V(san_differs), V(issuer_untrusted), V(fullchain_mismatch), V(forced)). A broken or missing file is
    data (RV(rotate=true)), not a failure. Never changes anything.
  - O(step=inspect) with O(slots) inspects several slots of this host in one call (one result per slot in
    RV(slots)), for a plan of every slot without one module call per slot.
  - O(step=prepare) is O(step=inspect) followed, only when the slot is due (RV(rotate=true)), by what
    O(step=csr) does, in the same call - one module call less per rotated slot. The key handling is that
    of O(step=csr), except that O(force) only forces the decision; an existing valid staged key of the
    wanted type is reused even then.
  - O(step=csr) generates a new private key on this host, staged as C(<key_path>.next) (mode O(key_mode)),
    and returns a certificate signing request. The key never leaves the host. An existing valid staged
    key of the wanted type is reused.
  - O(step=install) checks that the new certificate matches the staged key (or O(private_key)), that it is
    valid now, carries the wanted names and chains to O(ca_bundle), then writes key, certificate, fullchain and
    chain as ONE group (all prepared first, then renamed back to back) keeping the previous generation as
    C(.prev) backups, and removes the staged key. Installing the certificate that is already installed
    changes nothing.
  - O(step=restore) puts the C(.prev) generation back, again as one group.
version_added: 0.1.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
  - privsec.vault_rotate.files
attributes:
  check_mode:
    support: full
    details:
      - O(step=csr) and O(step=prepare) write no key and return RV(csr=null) when a new key would be generated.
      - O(step=inspect) and the decision of O(step=prepare) are the same as outside check mode.
      - O(step=install) and O(step=restore) check everything and write nothing.
  diff_mode:
    support: full
    details: The parsed certificate fields before and after (subject, serial, dates, names), never PEM.
options:
  step:
    description:
      - What to do, see the description.
    type: str
    required: true
    choices: [inspect, prepare, csr, install, restore]
  cert_path:
    description:
      - Path of the certificate file (the leaf alone, PEM), for example C(/home/vaultprod/tls-prod/server.crt).
      - O(cert_path), O(fullchain_path) or both are required, except with O(slots) (which must not be given with
        them). Without O(cert_path), or when it does not exist while O(fullchain_path) does (an nginx site that reads
        only C(<name>.fullchain.pem) and C(<name>.key)), the leaf is read from the fullchain's first certificate and
        no leaf file is written.
    type: path
  key_path:
    description:
      - Path of the private key file (PEM). The staged key of O(step=csr) is C(<key_path>.next).
      - Required, except with O(slots) (which must not be given with it).
    type: path
  slots:
    description:
      - With O(step=inspect) only - several slots of this host inspected in one call, each as a dict of the
        inspect options below. The result is RV(slots), one inspect result per slot, in the same order.
      - Mutually exclusive with O(cert_path) and O(key_path).
    type: list
    elements: dict
    version_added: 1.0.0
    suboptions:
      name:
        description: Id of the slot, returned as is in its result (for example C(app_leaf/ncprd1)).
        type: str
        required: true
      cert_path:
        description: As O(cert_path); each slot needs O(slots[].cert_path), O(slots[].fullchain_path) or both.
        type: path
      key_path:
        description: As O(key_path).
        type: path
        required: true
      fullchain_path:
        description: As O(fullchain_path).
        type: path
      chain_path:
        description: As O(chain_path).
        type: path
      common_name:
        description: As O(common_name).
        type: str
      dns_names:
        description: As O(dns_names) (not compared when not set).
        type: list
        elements: str
      ip_addresses:
        description: As O(ip_addresses) (not compared when not set).
        type: list
        elements: str
      ca_bundle:
        description: As O(ca_bundle); the top-level O(ca_bundle) when not set.
        type: str
      renew_fraction:
        description: As O(renew_fraction).
        type: float
        default: 0.6667
      renew_before:
        description: As O(renew_before).
        type: str
      force:
        description: As O(force).
        type: bool
        default: false
  fullchain_path:
    description:
      - Optional path of a fullchain file written with the pair, holding the leaf followed by the intermediate CA
        certificates of O(chain) (self-signed roots left out), for example C(fullchain.crt) of a Vault listener.
      - Alone (without a leaf file) it is the certificate of the slot, see O(cert_path).
    type: path
  chain_path:
    description:
      - Optional path of the CA chain file written with the pair, holding the certificates of O(chain) as given,
        for example C(ca_chain.pem) or C(issuing_ca.pem).
      - Written only when O(chain) (or extra certificates after the leaf in O(certificate)) is given.
    type: path
  common_name:
    description:
      - Wanted common name. O(step=inspect) reports V(cn_differs); O(step=csr) and O(step=prepare) put it in the
        CSR (required there); O(step=install) refuses a certificate with another common name.
    type: str
  dns_names:
    description:
      - Wanted DNS subject alternative names, compared as a set (order and case do not matter; the common
        name may appear among them without counting as a difference).
      - When not set, the DNS names are not compared.
    type: list
    elements: str
  ip_addresses:
    description:
      - Wanted IP subject alternative names, compared as a set. When not set, they are not compared.
    type: list
    elements: str
  ca_bundle:
    description:
      - PEM text of the CA certificates the issuer must chain to (every currently valid issuer and the root,
        old and new during a CA rollover).
      - O(step=inspect) reports V(issuer_untrusted) when the installed certificate does not chain to it (through the
        chain file, when there is one); O(step=install) refuses such a certificate.
    type: str
  renew_fraction:
    description:
      - Rotate once this fraction of the certificate's lifetime has elapsed (reason V(due)).
      - Ignored when O(renew_before) is set.
    type: float
    default: 0.6667
  renew_before:
    description:
      - Rotate when less than this time is left before C(not_after), for example V(3d), V(12h), V(1d12h)
        or a number of seconds. Wins over O(renew_fraction).
    type: str
  force:
    description:
      - Rotate whatever the state (reason V(forced)); O(step=csr) also replaces a staged key
        (O(step=prepare) does not).
    type: bool
    default: false
  key_type:
    description:
      - Type of the key generated by O(step=csr) and O(step=prepare).
    type: str
    choices: [ec, rsa]
    default: ec
  key_size:
    description:
      - Key size for O(step=csr) and O(step=prepare). RSA - V(2048), V(3072) or V(4096) (default V(2048)). EC - V(256) (P-256, default)
        or V(384) (P-384).
    type: int
  certificate:
    description:
      - PEM of the new certificate for O(step=install) (the leaf first; CA certificates after it are
        used as the chain when O(chain) is not given).
      - Required with O(step=install), except in check mode (where M(privsec.vault_rotate.pki_cert) returns none).
    type: str
  chain:
    description:
      - PEM of the CA chain for O(step=install), as one text or a list of PEM texts (the C(ca_chain) of
        M(privsec.vault_rotate.pki_cert)).
    type: raw
  private_key:
    description:
      - SECRET. PEM of the private key for O(step=install) when Vault generated it (C(pki/issue) flow).
        Without it, the staged key of O(step=csr) is used.
    type: str
  key_mode:
    description:
      - Mode of the private key file (and of the staged key).
    type: str
    default: '0600'
  cert_mode:
    description:
      - Mode of the certificate, fullchain and chain files.
    type: str
    default: '0644'
  expect_serial:
    description:
      - For O(step=restore) only. Restore only when the installed certificate has this serial (the one this run
        installed). When it has another serial, nothing is restored (C(changed=false)); this keeps a rollback
        after a failure BEFORE the install from putting back an older generation.
    type: str
notes:
  - The default flow of the collection is C(prepare) (C(inspect), and C(csr) when due) -> M(privsec.vault_rotate.pki_cert)
    (sign on the controller) -> C(install) -> reload -> gate, and C(restore) when the gate fails. The plan of a run
    inspects every slot of a host with one O(slots) call.
  - Requires the Python C(cryptography) library on the host that owns the files.
seealso:
  - module: privsec.vault_rotate.pki_cert
  - module: privsec.vault_rotate.trust_bundle
  - module: community.crypto.openssl_privatekey
    description: Generate a private key file on its own (no staging, no pairing with a CSR and its certificate).
  - module: community.crypto.openssl_csr
    description: Generate a CSR file on its own.
  - module: community.crypto.x509_certificate_info
    description: Read a certificate file (serial, SANs, validity).
requirements:
  - cryptography >= 3.1
"""

EXAMPLES = r"""
- name: Inspect the agent login cert of ncprd1
  privsec.vault_rotate.cert_material:
    step: inspect
    cert_path: /home/ncprd1/vault/mtls/agent.crt
    key_path: /home/ncprd1/vault/mtls/agent.key
    common_name: agent-ncprd1.prod.privsec.ch
    dns_names: [agent-ncprd1.prod.privsec.ch]
    ca_bundle: "{{ issuers.bundle }}"
    renew_before: 3d
  register: agent_state

- name: Make a key and CSR on the host (the key never leaves it)
  privsec.vault_rotate.cert_material:
    step: csr
    cert_path: /home/ncprd1/vault/mtls/agent.crt
    key_path: /home/ncprd1/vault/mtls/agent.key
    common_name: agent-ncprd1.prod.privsec.ch
    dns_names: [agent-ncprd1.prod.privsec.ch]
    owner: ncprd1
    group: ncprd1
  register: agent_csr
  when: agent_state.rotate

- name: Inspect, and only when due make a key and CSR, in one call
  privsec.vault_rotate.cert_material:
    step: prepare
    cert_path: /home/ncprd1/nginx/tls/frontend.crt
    key_path: /home/ncprd1/nginx/tls/frontend.key
    fullchain_path: /home/ncprd1/nginx/tls/frontend.fullchain.pem
    common_name: ncprd1.prod.privsec.ch
    dns_names: [ncprd1.prod.privsec.ch]
    ca_bundle: "{{ issuers.ca_bundle }}"
    owner: ncprd1
    group: ncprd1
  register: frontend
  # frontend.rotate, frontend.reasons as with step=inspect; frontend.csr when frontend.rotate

- name: Inspect every slot of this host in one call (the plan)
  privsec.vault_rotate.cert_material:
    step: inspect
    slots:
      - name: agent_login/ncprd1
        cert_path: /home/ncprd1/vault/mtls/agent.crt
        key_path: /home/ncprd1/vault/mtls/agent.key
        common_name: agent-ncprd1.prod.privsec.ch
        dns_names: [agent-ncprd1.prod.privsec.ch]
      - name: app_leaf/ncprd1
        cert_path: /home/ncprd1/nginx/tls/frontend.crt
        key_path: /home/ncprd1/nginx/tls/frontend.key
        fullchain_path: /home/ncprd1/nginx/tls/frontend.fullchain.pem
        common_name: ncprd1.prod.privsec.ch
        dns_names: [ncprd1.prod.privsec.ch]
    ca_bundle: "{{ issuers.ca_bundle }}"
  register: plan
  # plan.slots[0].name == 'agent_login/ncprd1', plan.slots[0].rotate, plan.slots[0].reasons, ...

- name: Install key and certificate as one group, keeping the old ones as .prev
  privsec.vault_rotate.cert_material:
    step: install
    cert_path: /home/vaultprod/tls-prod/server.crt
    key_path: /home/vaultprod/tls-prod/server.key
    fullchain_path: /home/vaultprod/tls-prod/fullchain.crt
    chain_path: /home/vaultprod/tls-prod/ca_chain.pem
    certificate: "{{ signed.certificate }}"
    chain: "{{ signed.ca_chain }}"
    common_name: vault.prod.privsec.ch
    ca_bundle: "{{ issuers.bundle }}"
    owner: vaultprod
    group: vaultprod
  register: installed

- name: Put the previous generation back (the gate failed)
  privsec.vault_rotate.cert_material:
    step: restore
    cert_path: /home/vaultprod/tls-prod/server.crt
    key_path: /home/vaultprod/tls-prod/server.key
    fullchain_path: /home/vaultprod/tls-prod/fullchain.crt
    chain_path: /home/vaultprod/tls-prod/ca_chain.pem
    expect_serial: "{{ installed.after.serial }}"
"""

RETURN = r"""
rotate:
  description: O(step=inspect) / O(step=prepare) - whether the slot needs a new certificate; with O(slots), whether any does.
  returned: step=inspect, step=prepare
  type: bool
reasons:
  description: O(step=inspect) - reason codes, V(valid) alone when the certificate is kept.
  returned: step=inspect (without O(slots)), step=prepare
  type: list
  elements: str
  sample: [due, san_differs]
reason_text:
  description: O(step=inspect) - one sentence per reason, for task names and reports.
  returned: step=inspect (without O(slots)), step=prepare
  type: list
  elements: str
  sample: ["expires in 2.5 days, within the renew window of 3 days"]
summary:
  description: O(step=inspect) - the decision in one line.
  returned: step=inspect (without O(slots)), step=prepare
  type: str
  sample: "keep: valid: expires in 25 days, due in 15 days"
due_at:
  description: O(step=inspect) - when the installed certificate becomes due (ISO 8601 UTC), null without one.
  returned: step=inspect (without O(slots)), step=prepare
  type: str
exists:
  description: O(step=inspect) - whether the certificate file exists.
  returned: step=inspect (without O(slots)), step=prepare
  type: bool
current:
  description:
    - O(step=inspect) - the installed certificate (serial, fingerprint_sha256, subject, issuer, common_name,
      dns_names, ip_addresses, not_before, not_after, days_left, lifetime_days, is_ca, key_type, key_size)
      plus C(key_matches) (true, false, or null when there is no key). Null when missing or unparsable.
  returned: step=inspect (without O(slots)), step=prepare
  type: dict
parse_error:
  description: O(step=inspect) - why the certificate file does not parse.
  returned: step=inspect (without O(slots)), step=prepare, when unparsable
  type: str
chain:
  description: O(step=inspect) - the certificates of the chain file (subject, serial, not_after).
  returned: step=inspect (without O(slots)), step=prepare
  type: list
  elements: dict
chain_verified:
  description: O(step=inspect) - whether the installed certificate chains to O(ca_bundle) now (null without one).
  returned: step=inspect (without O(slots)), step=prepare
  type: bool
chain_problem:
  description: O(step=inspect) - what breaks the chain when RV(chain_verified) is false.
  returned: step=inspect (without O(slots)), step=prepare
  type: str
staged_key:
  description: Whether a staged key C(<key_path>.next) exists (after the step).
  returned: always, except with O(slots) (there, in each result of RV(slots))
  type: bool
files:
  description: O(step=inspect) - per file path, C(exists), C(mode), C(owner), C(group).
  returned: step=inspect (without O(slots)), step=prepare
  type: dict
csr:
  description:
    - O(step=csr) / O(step=prepare) - PEM of the certificate signing request. Null in check mode when a key would be
      generated, and with O(step=prepare) when the slot is not due.
  returned: step=csr, step=prepare
  type: str
staged_key_path:
  description: O(step=csr) / O(step=prepare) - path of the staged private key.
  returned: step=csr, step=prepare when due
  type: str
key_type:
  description: O(step=csr) / O(step=prepare) - type and size of the staged key, for example V(ec-256), V(rsa-2048).
  returned: step=csr, step=prepare when due
  type: str
slots:
  description:
    - O(step=inspect) with O(slots) - one result per slot, in the order given, each with C(name) (as given) and
      every key O(step=inspect) returns for one slot (RV(rotate), RV(reasons), RV(reason_text), RV(summary),
      RV(due_at), RV(exists), RV(current), RV(chain), RV(chain_verified), RV(chain_problem), RV(staged_key),
      RV(files), and C(parse_error) / C(key_problem) when there is one).
  returned: step=inspect with slots
  type: list
  elements: dict
  version_added: 1.0.0
before:
  description: O(step=install) / O(step=restore) - the certificate installed before (fields of RV(current)), null if none.
  returned: step=install, step=restore
  type: dict
after:
  description: O(step=install) / O(step=restore) - the certificate installed after.
  returned: step=install, step=restore
  type: dict
serial:
  description: O(step=install) / O(step=restore) - serial of the certificate installed after the step.
  returned: step=install, step=restore
  type: str
  sample: 3a:1f:00:9c
backup_files:
  description: O(step=install) - the C(.prev) files written.
  returned: step=install
  type: list
  elements: str
written_files:
  description: O(step=install) - the files (re)written, or that would be in check mode.
  returned: step=install
  type: list
  elements: str
restored_files:
  description: O(step=restore) - the files put back, or that would be in check mode.
  returned: step=restore
  type: list
  elements: str
restored_serial:
  description: O(step=restore) - serial of the certificate that is installed after the restore.
  returned: step=restore
  type: str
failure_class:
  description: On failure, the class of the error, for example V(key_mismatch), V(bad_pem), V(missing_file).
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
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._material import (
    INSPECT_OPTIONS,
    SLOT_OPTIONS,
    Material,
    diff,
    slot_params,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(type="str", required=True, choices=["inspect", "prepare", "csr", "install", "restore"]),
            slots=dict(type="list", elements="dict", options=SLOT_OPTIONS),
            key_type=dict(type="str", choices=["ec", "rsa"], default="ec"),
            key_size=dict(type="int"),
            certificate=dict(type="str"),
            chain=dict(type="raw"),
            private_key=dict(type="str", no_log=True),
            owner=dict(type="str"),
            group=dict(type="str"),
            key_mode=dict(type="str", default="0600", no_log=False),
            cert_mode=dict(type="str", default="0644"),
            backup=dict(type="bool", default=True),
            expect_serial=dict(type="str"),
            **INSPECT_OPTIONS
        ),
        required_if=[("step", "csr", ("common_name",)), ("step", "prepare", ("common_name",))],
        required_one_of=[("cert_path", "fullchain_path", "slots")],
        required_by={"cert_path": "key_path", "fullchain_path": "key_path"},
        mutually_exclusive=[("cert_path", "slots"), ("fullchain_path", "slots"), ("key_path", "slots")],
        supports_check_mode=True,
    )
    if not _x509.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=_x509.CRYPTOGRAPHY_IMPORT_ERROR)
    step = module.params["step"]
    slot_name = None
    try:
        _files.parse_mode(module.params["key_mode"])
        _files.parse_mode(module.params["cert_mode"])
        if module.params.get("slots") is not None:
            if step != "inspect":
                raise RotateError("bad_input", "slots is only for step=inspect, not step=%s" % step,
                                  hint="inspect several slots with step=inspect, then run the other steps per slot")
            results = []
            for slot in module.params["slots"]:
                slot_name = slot["name"]
                material = Material(slot_params(module.params, slot), check_mode=module.check_mode)
                results.append(dict(material.inspect(), name=slot_name))
            slot_name = None
            result = dict(changed=False, slots=results, rotate=any(r["rotate"] for r in results))
        else:
            result = getattr(Material(module.params, check_mode=module.check_mode), step)()
    except RotateError as err:
        if slot_name is None:
            module.fail_json(step=step, **err.as_failure())
        module.fail_json(step=step, **err.as_failure(prefix="slot %s" % slot_name, slot=slot_name))
    result["step"] = step
    if step in ("install", "restore") and module._diff:
        result["diff"] = diff(result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
