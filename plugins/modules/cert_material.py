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
      - Required, except with O(slots) (which must not be given with it).
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
    version_added: 0.2.0
    suboptions:
      name:
        description: Id of the slot, returned as is in its result (for example C(app_leaf/ncprd1)).
        type: str
        required: true
      cert_path:
        description: As O(cert_path).
        type: path
        required: true
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
  version_added: 0.2.0
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

import datetime
import ipaddress
import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _files
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _rotation
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
except ImportError:  # reported through _x509.HAS_CRYPTOGRAPHY
    pass

STAGED_SUFFIX = ".next"
DIFF_FIELDS = ("subject", "issuer", "serial", "fingerprint_sha256", "not_before", "not_after",
               "dns_names", "ip_addresses", "key_type", "key_size")
# Vault backdates not_before by 30 s; accept a little clock skew on top.
NOT_BEFORE_SKEW = datetime.timedelta(minutes=5)


class Material(object):
    """The files of one slot and what the module knows about them."""

    def __init__(self, module, params=None):
        self.module = module
        self.params = module.params if params is None else params
        self.cert_path = self.params["cert_path"]
        self.key_path = self.params["key_path"]
        self.staged_path = self.key_path + STAGED_SUFFIX
        self.now = _x509.utcnow()

    # ---------------------------------------------------------- reading

    def read_cert(self):
        """(cert, info, parse_error); all None when the file is missing."""
        data = _files.read_file(self.cert_path)
        if data is None:
            return None, None, None
        try:
            cert = _x509.load_certificate(data, what=self.cert_path)
        except RotateError as err:
            return None, None, err.message
        return cert, _x509.cert_info(cert, now=self.now), None

    def read_key(self, path):
        """(key, problem): key None when missing (problem None) or unparsable (problem text)."""
        data = _files.read_file(path)
        if data is None:
            return None, None
        try:
            return _x509.load_private_key(data, what=path), None
        except RotateError as err:
            return None, err.message

    def read_bundle(self, path):
        """Certs of an optional PEM file; [] when unset, missing or unparsable."""
        if not path:
            return []
        data = _files.read_file(path)
        if data is None:
            return []
        try:
            return _x509.load_pem_bundle(data, what=path)
        except RotateError:
            return []

    def ca_bundle(self):
        if not self.params.get("ca_bundle"):
            return None
        return _x509.load_pem_bundle(self.params["ca_bundle"], what="ca_bundle")

    def paths(self):
        return [p for p in (self.key_path, self.cert_path, self.params.get("fullchain_path"),
                            self.params.get("chain_path")) if p]

    # ---------------------------------------------------------- inspect

    def inspect(self):
        cert, info, parse_error = self.read_cert()
        key, key_problem = self.read_key(self.key_path)
        key_matches = None
        if key is not None and cert is not None:
            key_matches = _x509.key_matches_cert(key, cert)
        elif key_problem and cert is not None:
            key_matches = False
        chain = self.read_bundle(self.params.get("chain_path"))
        fullchain = self.read_bundle(self.params.get("fullchain_path"))
        bundle = self.ca_bundle()
        fullchain_matches = None
        if cert is not None and self.params.get("fullchain_path") and \
                os.path.exists(self.params["fullchain_path"]):
            fullchain_matches = bool(fullchain) and \
                _x509.fingerprint_sha256(fullchain[0]) == _x509.fingerprint_sha256(cert)
        result = _rotation.evaluate(
            info, want_cn=self.params.get("common_name"), want_dns=self.params.get("dns_names"),
            want_ips=self.params.get("ip_addresses"), ca_bundle_certs=bundle, key_matches=key_matches,
            parse_error=parse_error, renew_fraction=self.params["renew_fraction"],
            renew_before=self.params.get("renew_before"), force=self.params["force"], now=self.now,
            cert=cert, chain_certs=chain + fullchain[1:], fullchain_matches=fullchain_matches)
        chain_verified, chain_problem = None, None
        if cert is not None and bundle:
            chain_verified, chain_problem = _x509.verify_chain(cert, chain + fullchain[1:], bundle, now=self.now)
        current = None
        if info is not None:
            current = dict(info, key_matches=key_matches)
        output = dict(
            changed=False, exists=os.path.exists(self.cert_path), current=current,
            rotate=result["rotate"], reasons=result["reasons"], reason_text=result["reason_text"],
            summary=_rotation.summary(result), due_at=result["due_at"],
            chain=_x509.describe_bundle(chain), chain_verified=chain_verified, chain_problem=chain_problem,
            staged_key=os.path.exists(self.staged_path),
            files=dict((p, _files.file_state(p)) for p in self.paths()),
        )
        if parse_error:
            output["parse_error"] = parse_error
        if key_problem:
            output["key_problem"] = key_problem
        return output

    # ---------------------------------------------------------- csr

    def wanted_key(self):
        key_type = self.params["key_type"]
        size = self.params.get("key_size")
        if key_type == "rsa":
            size = size or 2048
            if size not in (2048, 3072, 4096):
                raise RotateError("bad_input", "key_size %s is not supported for RSA" % size,
                                  hint="use 2048, 3072 or 4096")
        else:
            size = size or 256
            if size not in (256, 384):
                raise RotateError("bad_input", "key_size %s is not supported for EC" % size,
                                  hint="use 256 (P-256) or 384 (P-384)")
        return key_type, size

    def generate_key(self, key_type, size):
        if key_type == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=size)
        return ec.generate_private_key(ec.SECP256R1() if size == 256 else ec.SECP384R1())

    def build_csr(self, key):
        cn = self.params.get("common_name")
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        sans = [x509.DNSName(name) for name in self.params.get("dns_names") or []]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in self.params.get("ip_addresses") or []]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode("ascii")

    def csr(self, replace_staged=None):
        if not self.params.get("common_name"):
            raise RotateError("bad_input", "step=%s needs common_name" % self.params["step"])
        if replace_staged is None:
            replace_staged = self.params["force"]
        key_type, size = self.wanted_key()
        staged, problem = self.read_key(self.staged_path)
        reuse = staged is not None and not replace_staged and \
            _x509.key_description(staged)[:2] == (key_type, size)
        result = dict(staged_key_path=self.staged_path, key_type="%s-%s" % (key_type, size))
        if reuse:
            changed = _files.ensure_attributes(self.staged_path, self.params.get("owner"),
                                               self.params.get("group"), self.params["key_mode"],
                                               check_mode=self.module.check_mode)
            return dict(result, changed=changed, csr=self.build_csr(staged), staged_key=True, reused=True)
        if self.module.check_mode:
            return dict(result, changed=True, csr=None, staged_key=staged is not None, reused=False)
        key = self.generate_key(key_type, size)
        _files.install_set([(self.staged_path, _x509.key_to_pem(key), self.params.get("owner"),
                             self.params.get("group"), self.params["key_mode"])], backup=False)
        result.update(changed=True, csr=self.build_csr(key), staged_key=True, reused=False)
        if problem:
            result["replaced_staged_key"] = problem
        return result

    # ---------------------------------------------------------- prepare

    def prepare(self):
        """inspect, then (only when due) csr in the same call; a kept slot changes nothing."""
        result = self.inspect()
        if not result["rotate"]:
            result["csr"] = None
            return result
        made = self.csr(replace_staged=False)
        result.update(made)
        return result

    # ---------------------------------------------------------- install

    def new_material(self):
        """(leaf, chain_certs, chain_given) from the certificate and chain options."""
        if not self.params.get("certificate"):
            raise RotateError("bad_input", "step=install needs certificate")
        certs = _x509.load_pem_bundle(self.params["certificate"], what="certificate")
        leaf, extra = certs[0], certs[1:]
        chain_param = self.params.get("chain")
        if isinstance(chain_param, (list, tuple)):
            chain_param = "".join(str(item).strip() + "\n" for item in chain_param if item)
        chain = _x509.load_pem_bundle(chain_param, what="chain") if chain_param else extra
        return leaf, _x509.dedupe(chain), bool(chain_param or extra)

    def check_new_leaf(self, leaf, chain):
        info = _x509.cert_info(leaf, now=self.now)
        if self.now > _x509.not_after(leaf):
            raise RotateError("expired", "the new certificate %s expired at %s" % (info["serial"], info["not_after"]),
                              hint="issue a new one; check the TTL asked for")
        if _x509.not_before(leaf) > self.now + NOT_BEFORE_SKEW:
            raise RotateError("not_yet_valid", "the new certificate is valid only from %s" % info["not_before"],
                              hint="check the clocks of this host and of Vault")
        want_cn = self.params.get("common_name")
        if want_cn and info["common_name"] != want_cn:
            raise RotateError("bad_input", "the new certificate is for CN %r, wanted %r" % (info["common_name"], want_cn),
                              hint="check the common_name sent to Vault and the PKI role")
        problems = _rotation.san_difference(
            info, want_cn, self.params.get("dns_names"), self.params.get("ip_addresses"))
        if problems:
            raise RotateError("bad_input", "the new certificate does not carry the wanted names: %s" % problems,
                              hint="check alt_names/ip_sans sent to Vault and what the PKI role allows")
        bundle = self.ca_bundle()
        if bundle:
            ok, reason = _x509.verify_chain(leaf, chain, bundle, now=self.now)
            if not ok:
                raise RotateError("bad_input", "the new certificate does not chain to ca_bundle: %s" % reason,
                                  hint="the CA bundle must hold the issuer (or its root, with the intermediate in chain)")
        return info

    def pick_key(self, leaf):
        """(key_pem_bytes, source) of the key that matches the new certificate, else RotateError."""
        candidates = []
        if self.params.get("private_key"):
            candidates.append(("private_key", _x509.load_private_key(self.params["private_key"], what="private_key")))
        else:
            staged, problem = self.read_key(self.staged_path)
            if staged is not None:
                candidates.append(("staged", staged))
            current, _problem = self.read_key(self.key_path)
            if current is not None:
                candidates.append(("current", current))
        for source, key in candidates:
            if _x509.key_matches_cert(key, leaf):
                return _x509.key_to_pem(key).encode("ascii"), source
        if not candidates:
            raise RotateError("missing_file", "no key for the new certificate: %s does not exist" % self.staged_path,
                              hint="run step=csr first (or pass private_key for the pki/issue flow)")
        raise RotateError("key_mismatch", "the new certificate does not match the %s" % " nor the ".join(
            {"private_key": "given private_key", "staged": "staged key %s" % self.staged_path,
             "current": "current key %s" % self.key_path}[s] for s, _k in candidates),
            hint="sign the CSR made from the staged key (step=csr), or pass the private_key Vault returned",
            details={"serial": _x509.format_serial(leaf.serial_number)})

    def planned_files(self, leaf, chain, chain_given, key_pem):
        owner, group = self.params.get("owner"), self.params.get("group")
        cert_mode, key_mode = self.params["cert_mode"], self.params["key_mode"]
        leaf_pem = _x509.cert_to_pem(leaf)
        files = [(self.key_path, key_pem, owner, group, key_mode),
                 (self.cert_path, leaf_pem.encode("ascii"), owner, group, cert_mode)]
        if self.params.get("fullchain_path"):
            intermediates = [c for c in chain if not _x509.is_self_signed(c)]
            files.append((self.params["fullchain_path"], (leaf_pem + _x509.bundle_to_pem(intermediates)).encode("ascii"),
                          owner, group, cert_mode))
        if self.params.get("chain_path") and chain_given:
            files.append((self.params["chain_path"], _x509.bundle_to_pem(chain).encode("ascii"), owner, group, cert_mode))
        return files

    def install(self):
        if not self.params.get("certificate") and self.module.check_mode:
            # A check-mode chain csr -> pki_cert -> install has no certificate to look at.
            return dict(changed=True, before=None, after=None, serial=None, backup_files=[], written_files=[],
                        staged_key=os.path.exists(self.staged_path),
                        msg="check mode: no certificate given, the install would write %s" % ", ".join(self.paths()))
        leaf, chain, chain_given = self.new_material()
        after = self.check_new_leaf(leaf, chain)
        key_pem, source = self.pick_key(leaf)
        cert, before, _err = self.read_cert()
        files = self.planned_files(leaf, chain, chain_given, key_pem)
        same_cert = before is not None and before["fingerprint_sha256"] == after["fingerprint_sha256"]
        current_key, _problem = self.read_key(self.key_path)
        key_ok = current_key is not None and _x509.key_matches_cert(current_key, leaf)
        stale = [path for path, content, _o, _g, _m in files
                 if path != self.key_path and _files.read_file(path) != content]
        result = dict(before=_fields(before), after=_fields(after), serial=after["serial"], key_source=source,
                      backup_files=[], written_files=[])
        if same_cert and key_ok and not stale:
            # Already installed: only owner/mode may need fixing.
            changed = False
            for path, _content, owner, group, mode in files:
                changed = _files.ensure_attributes(path, owner, group, mode, check_mode=self.module.check_mode) or changed
            if source == "staged" and not self.module.check_mode:
                _files.remove(self.staged_path)
            return dict(result, changed=changed, staged_key=os.path.exists(self.staged_path))
        result["written_files"] = [f[0] for f in files]
        if self.module.check_mode:
            return dict(result, changed=True, staged_key=os.path.exists(self.staged_path))
        result["backup_files"] = _files.install_set(files, backup=self.params["backup"])
        if source == "staged":
            _files.remove(self.staged_path)
        return dict(result, changed=True, staged_key=os.path.exists(self.staged_path))

    # ---------------------------------------------------------- restore

    def restore(self):
        cert, before, _err = self.read_cert()
        expect = self.params.get("expect_serial")
        if expect and (before is None or before["serial"] != _x509.normalize_serial(expect)):
            return dict(changed=False, restored_files=[], before=_fields(before), after=_fields(before),
                        serial=before["serial"] if before else None,
                        restored_serial=before["serial"] if before else None,
                        msg="the installed certificate is not %s: nothing of this run to restore" % expect)
        have, _missing = _files.restorable(self.paths())
        if self.cert_path not in have or self.key_path not in have:
            raise RotateError("missing_file", "no previous generation to restore: %s.prev and %s.prev must both exist" % (
                self.cert_path, self.key_path), hint="the backup is written by step=install with backup=true")
        prev_cert = _x509.load_certificate(_files.read_file(_files.backup_path(self.cert_path)),
                                           what=_files.backup_path(self.cert_path))
        prev_key = _x509.load_private_key(_files.read_file(_files.backup_path(self.key_path)),
                                          what=_files.backup_path(self.key_path))
        if not _x509.key_matches_cert(prev_key, prev_cert):
            raise RotateError("key_mismatch", "the backup key %s.prev does not match the backup certificate" % self.key_path,
                              hint="restore by hand from another source; nothing was changed")
        after = _x509.cert_info(prev_cert, now=self.now)
        restored = _files.restore_set(have, check_mode=self.module.check_mode)
        return dict(changed=bool(restored), restored_files=restored, before=_fields(before), after=_fields(after),
                    serial=after["serial"], restored_serial=after["serial"])


def _fields(info):
    if info is None:
        return None
    return dict((k, info[k]) for k in DIFF_FIELDS + ("common_name", "days_left") if k in info)


def _diff(result):
    before = result.get("before")
    after = result.get("after")
    if not result.get("changed"):
        after = before
    return {"before": before or {}, "after": after or {}}


def _slot_params(params, slot):
    """The module parameters of one entry of slots (inspect options only; ca_bundle falls back to the top level)."""
    merged = dict(params)
    merged.update((k, v) for k, v in slot.items() if k != "name")
    if not slot.get("ca_bundle"):
        merged["ca_bundle"] = params.get("ca_bundle")
    merged["slots"] = None
    return merged


# The inspect options: top level for one slot, and each entry of `slots` (with its name; paths required there).
INSPECT_OPTIONS = dict(
    cert_path=dict(type="path"),
    key_path=dict(type="path"),
    fullchain_path=dict(type="path"),
    chain_path=dict(type="path"),
    common_name=dict(type="str"),
    dns_names=dict(type="list", elements="str"),
    ip_addresses=dict(type="list", elements="str"),
    ca_bundle=dict(type="str"),
    renew_fraction=dict(type="float", default=0.6667),
    renew_before=dict(type="str"),
    force=dict(type="bool", default=False),
)
SLOT_OPTIONS = dict(INSPECT_OPTIONS, name=dict(type="str", required=True),
                    cert_path=dict(type="path", required=True), key_path=dict(type="path", required=True))


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
        required_one_of=[("cert_path", "slots")],
        required_together=[("cert_path", "key_path")],
        mutually_exclusive=[("cert_path", "slots"), ("key_path", "slots")],
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
                results.append(dict(Material(module, _slot_params(module.params, slot)).inspect(), name=slot_name))
            slot_name = None
            result = dict(changed=False, slots=results, rotate=any(r["rotate"] for r in results))
        else:
            result = getattr(Material(module), step)()
    except RotateError as err:
        if slot_name is None:
            module.fail_json(step=step, **err.as_failure())
        module.fail_json(step=step, **err.as_failure(prefix="slot %s" % slot_name, slot=slot_name))
    result["step"] = step
    if step in ("install", "restore") and module._diff:
        result["diff"] = _diff(result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
