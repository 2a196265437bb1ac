# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files of one certificate slot on its host: inspect, key + CSR, install, restore.

`Material(params, check_mode)` takes the options of the cert_material module as
a plain dict (cert_path, key_path, fullchain_path, chain_path, common_name,
dns_names, ip_addresses, ca_bundle, renew_fraction, renew_before, force,
key_type, key_size, certificate, chain, private_key, owner, group, key_mode,
cert_mode, backup, expect_serial, step) and returns the module's result dicts;
failures are RotateError. No AnsibleModule here: the module and the phase
engine both call it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import ipaddress
import os

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
    """The files of one slot and what the module knows about them.

    `params` holds every cert_material option (unset ones as None, defaults
    applied, as AnsibleModule passes them); `check_mode` writes nothing.
    """

    def __init__(self, params, check_mode=False):
        self.params = params
        self.check_mode = check_mode
        self.key_path = self.params["key_path"]
        self.staged_path = self.key_path + STAGED_SUFFIX
        self.fullchain_path = self.params.get("fullchain_path") or None
        self.cert_path = self.params.get("cert_path") or None
        if not self.cert_path and not self.fullchain_path:
            raise RotateError("bad_input", "a slot needs cert_path or fullchain_path (or both)",
                              hint="set the leaf file, the fullchain file, or both, as the service reads them")
        # The file layout follows what is installed: a leaf file that is configured but absent
        # beside an existing fullchain (nginx reads only <name>.fullchain.pem and <name>.key)
        # is not created; the leaf is read from the fullchain's first certificate.
        if self.cert_path and self.fullchain_path and not os.path.exists(self.cert_path) \
                and os.path.exists(self.fullchain_path):
            self.cert_path = None
        self.leaf_path = self.cert_path or self.fullchain_path
        files = (("cert", self.cert_path), ("fullchain", self.fullchain_path), ("chain", self.params.get("chain_path")))
        self.layout = "+".join(name for name, path in files if path)
        self.now = _x509.utcnow()

    # ---------------------------------------------------------- reading

    def read_cert(self):
        """(cert, info, parse_error) of the installed leaf; all None when the file is missing."""
        data = _files.read_file(self.leaf_path)
        if data is None:
            return None, None, None
        try:
            if self.cert_path:
                cert = _x509.load_certificate(data, what=self.leaf_path)
            else:
                cert = _x509.load_pem_bundle(data, what=self.leaf_path)[0]
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
        return [p for p in (self.key_path, self.cert_path, self.fullchain_path, self.params.get("chain_path")) if p]

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
        if cert is not None and self.cert_path and self.fullchain_path and os.path.exists(self.fullchain_path):
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
            changed=False, exists=os.path.exists(self.leaf_path), current=current, layout=self.layout,
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
            raise RotateError("bad_input", "step=%s needs common_name" % (self.params.get("step") or "csr"))
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
                                               check_mode=self.check_mode)
            return dict(result, changed=changed, csr=self.build_csr(staged), staged_key=True, reused=True)
        if self.check_mode:
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
        if self.params.get("private_key"):
            sources = [("private_key", lambda: _x509.load_private_key(self.params["private_key"], what="private_key"))]
        else:
            # In this order, each read only when the one before does not match (a key read is
            # an RSA check on older cryptography, see _x509.load_private_key).
            sources = [("staged", lambda: self.read_key(self.staged_path)[0]),
                       ("current", lambda: self.read_key(self.key_path)[0])]
        candidates = []
        for source, load in sources:
            key = load()
            if key is None:
                continue
            candidates.append((source, key))
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
        files = [(self.key_path, key_pem, owner, group, key_mode)]
        if self.cert_path:
            files.append((self.cert_path, leaf_pem.encode("ascii"), owner, group, cert_mode))
        if self.fullchain_path:
            intermediates = [c for c in chain if not _x509.is_self_signed(c)]
            files.append((self.fullchain_path, (leaf_pem + _x509.bundle_to_pem(intermediates)).encode("ascii"),
                          owner, group, cert_mode))
        if self.params.get("chain_path") and chain_given:
            files.append((self.params["chain_path"], _x509.bundle_to_pem(chain).encode("ascii"), owner, group, cert_mode))
        return files

    def install(self):
        if not self.params.get("certificate") and self.check_mode:
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
        key_ok = False
        if same_cert:  # only an already installed cert asks whether its key is in place too
            current_key, _problem = self.read_key(self.key_path)
            key_ok = current_key is not None and _x509.key_matches_cert(current_key, leaf)
        stale = [path for path, content, _o, _g, _m in files
                 if path != self.key_path and _files.read_file(path) != content]
        result = dict(before=fields(before), after=fields(after), serial=after["serial"], key_source=source,
                      backup_files=[], written_files=[])
        if same_cert and key_ok and not stale:
            # Already installed: only owner/mode may need fixing.
            changed = False
            for path, _content, owner, group, mode in files:
                changed = _files.ensure_attributes(path, owner, group, mode, check_mode=self.check_mode) or changed
            if source == "staged" and not self.check_mode:
                _files.remove(self.staged_path)
            return dict(result, changed=changed, staged_key=os.path.exists(self.staged_path))
        result["written_files"] = [f[0] for f in files]
        if self.check_mode:
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
            return dict(changed=False, restored_files=[], before=fields(before), after=fields(before),
                        serial=before["serial"] if before else None,
                        restored_serial=before["serial"] if before else None,
                        msg="the installed certificate is not %s: nothing of this run to restore" % expect)
        have, _missing = _files.restorable(self.paths())
        if self.leaf_path not in have or self.key_path not in have:
            raise RotateError("missing_file", "no previous generation to restore: %s.prev and %s.prev must both exist" % (
                self.leaf_path, self.key_path), hint="the backup is written by step=install with backup=true")
        prev_data = _files.read_file(_files.backup_path(self.leaf_path))
        prev_cert = _x509.load_pem_bundle(prev_data, what=_files.backup_path(self.leaf_path))[0]
        prev_key = _x509.load_private_key(_files.read_file(_files.backup_path(self.key_path)),
                                          what=_files.backup_path(self.key_path))
        if not _x509.key_matches_cert(prev_key, prev_cert):
            raise RotateError("key_mismatch", "the backup key %s.prev does not match the backup certificate" % self.key_path,
                              hint="restore by hand from another source; nothing was changed")
        after = _x509.cert_info(prev_cert, now=self.now)
        restored = _files.restore_set(have, check_mode=self.check_mode)
        return dict(changed=bool(restored), restored_files=restored, before=fields(before), after=fields(after),
                    serial=after["serial"], restored_serial=after["serial"])


def fields(info):
    """The fields of a certificate description shown in before/after (and the diff)."""
    if info is None:
        return None
    return dict((k, info[k]) for k in DIFF_FIELDS + ("common_name", "days_left") if k in info)


def diff(result):
    """The module's diff of an install/restore result: after = before when nothing changed."""
    before = result.get("before")
    after = result.get("after")
    if not result.get("changed"):
        after = before
    return {"before": before or {}, "after": after or {}}


def slot_params(params, slot):
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
SLOT_OPTIONS = dict(INSPECT_OPTIONS, name=dict(type="str", required=True), key_path=dict(type="path", required=True))
