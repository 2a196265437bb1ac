# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""X.509 helpers shared by every module: parse PEM, describe certs, match keys, verify chains.

Everything returned here uses the canonical formats of docs/development.md:
serial and fingerprint as lowercase colon-separated hex, times as ISO 8601 UTC
with a trailing ``Z``, ``days_left`` as a float. Nothing here ever returns PEM
of a private key.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import ipaddress
import re
import traceback

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _timing
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

CRYPTOGRAPHY_IMPORT_ERROR = None
try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    from cryptography.x509.oid import ExtensionOID, NameOID
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True

try:  # cryptography >= 43 with ExtensionPolicy (>= 45); older versions fall back below
    from cryptography.x509 import verification as _verification
    _HAS_VERIFIER = hasattr(_verification, "ExtensionPolicy")
except ImportError:
    _verification = None
    _HAS_VERIFIER = False

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL
)
_CERT_LABELS = ("CERTIFICATE", "X509 CERTIFICATE")
_UTC = datetime.timezone.utc
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# ---------------------------------------------------------------- text helpers

def _to_text(data):
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data)


def _to_bytes(data):
    if isinstance(data, bytes):
        return data
    return _to_text(data).encode("utf-8")


def pem_blocks(data):
    """Every PEM block in ``data`` as (label, full_block_text), in order; junk between is ignored."""
    text = _to_text(data).replace("\r\n", "\n")
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]


def utcnow():
    return datetime.datetime.now(_UTC)


def _aware(value):
    """cryptography < 42 returns naive UTC datetimes; make every time aware."""
    if value is None:
        return utcnow()
    if value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value


def format_time(value):
    return _aware(value).astimezone(_UTC).strftime(TIME_FORMAT)


def parse_time(text):
    """Inverse of format_time (the canonical 'Z' form, '+00:00', epoch): _timing.parse_time."""
    return _timing.parse_time(text)


def not_before(cert):
    return _aware(getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before)


def not_after(cert):
    return _aware(getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after)


# ---------------------------------------------------------------- loading

def load_pem_bundle(data, what="certificate bundle"):
    """All certificates of a PEM bundle (str or bytes), in file order.

    Text between PEM blocks (comments, ``openssl x509 -text`` output) is
    ignored. Raises RotateError('bad_pem') when there is no certificate at all
    (empty input, garbage, only a private key) or when a CERTIFICATE block
    does not parse.
    """
    blocks = pem_blocks(data)
    certs = []
    other = []
    for index, (label, block) in enumerate(blocks):
        if label not in _CERT_LABELS:
            other.append(label)
            continue
        try:
            certs.append(x509.load_pem_x509_certificate(_to_bytes(block)))
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise RotateError(
                "bad_pem",
                "%s: PEM block #%d (CERTIFICATE) does not parse: %s" % (what, index + 1, exc),
                hint="the file is truncated or was edited by hand; reissue it",
            )
    if certs:
        return certs
    if not _to_text(data).strip():
        message = "%s is empty" % what
    elif any("PRIVATE KEY" in label for label in other):
        message = "%s holds a private key, not a certificate" % what
    elif other:
        message = "%s holds no certificate (found: %s)" % (what, ", ".join(sorted(set(other))))
    else:
        message = "%s holds no PEM certificate" % what
    raise RotateError("bad_pem", message, hint="pass the PEM text of the certificate(s), '-----BEGIN CERTIFICATE-----'")


def load_certificate(data, what="certificate"):
    """The first certificate of a PEM text (the leaf of a fullchain)."""
    return load_pem_bundle(data, what=what)[0]


def _load_pem_key(data):
    """load_pem_private_key without OpenSSL 3's RSA consistency check where cryptography (>= 39)
    allows: the check costs ~60 ms per RSA-2048 key (more than the rest of a slot's inspection),
    and what it guards against (a key whose private half does not fit its public half) cannot
    pass the gates anyway: a key is used only after its public half matched the cert and a
    handshake or login with it succeeded."""
    try:
        return serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError as exc:
        if "unsafe_skip_rsa_key_validation" not in str(exc):
            raise
        return serialization.load_pem_private_key(data, password=None)


# Keys loaded by this process, by the SHA-256 of their PEM block: one step reads the same key
# file several times (inspect, the pair check, install, the gates), and where cryptography is
# older than 39 (Debian 12: 38, RHEL 9: 36, Ubuntu 22.04: 3.4) every RSA load runs OpenSSL's
# key check, ~50 ms for RSA-2048 and ten times that for 4096 (docs/performance.md, seventh
# round). Key objects are immutable; the cache lives as long as the module (or worker) process.
_KEYS = {}
_KEYS_MAX = 32


def load_private_key(data, what="private key"):
    """A private key from PEM (PKCS#8, PKCS#1, SEC1). Unencrypted keys only."""
    blocks = [(label, block) for label, block in pem_blocks(data) if "PRIVATE KEY" in label]
    if not blocks:
        text = _to_text(data)
        if not text.strip():
            message = "%s is empty" % what
        elif pem_blocks(text):
            message = "%s holds no private key (found: %s)" % (
                what, ", ".join(sorted(set(block[0] for block in pem_blocks(text)))))
        else:
            message = "%s is not PEM" % what
        raise RotateError("bad_pem", message, hint="pass the PEM text of an unencrypted private key")
    label, block = blocks[0]
    if label == "ENCRYPTED PRIVATE KEY":
        raise RotateError("bad_pem", "%s is encrypted" % what,
                          hint="the rotation handles unencrypted keys protected by file mode 0600")
    raw = _to_bytes(block)
    digest = hashlib.sha256(raw).digest()
    key = _KEYS.get(digest)
    if key is not None:
        return key
    try:
        key = _load_pem_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise RotateError("bad_pem", "%s does not parse: %s" % (what, exc),
                          hint="the file is truncated or not a supported key type")
    if len(_KEYS) >= _KEYS_MAX:
        _KEYS.clear()
    _KEYS[digest] = key
    return key


def cert_to_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def bundle_to_pem(certs):
    return "".join(cert_to_pem(cert) for cert in certs)


def key_to_pem(key):
    """PKCS#8 PEM text of a private key (for writing to a 0600 file only)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


# ---------------------------------------------------------------- describing

def format_serial(number):
    """Serial as Vault prints it: lowercase hex bytes joined by ':' (even length)."""
    number = int(number)
    if number < 0:
        raise ValueError("negative serial")
    hexed = "%x" % number
    if len(hexed) % 2:
        hexed = "0" + hexed
    return ":".join(hexed[i:i + 2] for i in range(0, len(hexed), 2))


def normalize_serial(text):
    """'3A1F00', '3a:1f:00', '3a-1f-00' -> '3a:1f:00' (for comparisons with user input)."""
    cleaned = re.sub(r"[^0-9a-fA-F]", "", str(text or ""))
    if not cleaned:
        return ""
    return format_serial(int(cleaned, 16))


def fingerprint_sha256(cert):
    """SHA-256 of the certificate's DER, colon-separated hex (`openssl x509 -fingerprint -sha256`).
    hashlib over the DER: cryptography's cert.fingerprint() fetches the digest from OpenSSL on each
    call, ~4x the CPU in a forked Ansible worker (docs/performance.md, eighth look)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest().hex(":")


def normalize_fingerprint(text):
    cleaned = re.sub(r"[^0-9a-fA-F]", "", str(text or "")).lower()
    return ":".join(cleaned[i:i + 2] for i in range(0, len(cleaned), 2))


def _name_attr(name, oid):
    values = name.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _extension(cert, oid):
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def subject_alt_names(cert):
    """(dns_names, ip_addresses) of the SAN extension, as strings, in cert order."""
    san = _extension(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is None:
        return [], []
    dns = [str(v) for v in san.get_values_for_type(x509.DNSName)]
    ips = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def is_ca(cert):
    constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    return bool(constraints is not None and constraints.ca)


def _explicitly_not_ca(cert):
    """basicConstraints present with cA=false (a v1 cert without the extension is tolerated)."""
    constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    return constraints is not None and not constraints.ca


def is_self_signed(cert):
    if cert.issuer != cert.subject:
        return False
    return _signed_by(cert, cert)


def key_description(public_key):
    """('ec', 256, 'secp256r1') / ('rsa', 2048, None) / ('ed25519', 256, None)."""
    if isinstance(public_key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return "rsa", public_key.key_size, None
    if isinstance(public_key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return "ec", public_key.curve.key_size, public_key.curve.name
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "ed25519", 256, None
    if isinstance(public_key, (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)):
        return "ed448", 456, None
    return "unknown", None, None


def cert_info(cert, now=None):
    """The canonical description of one certificate (never PEM)."""
    now = _aware(now)
    start, end = not_before(cert), not_after(cert)
    dns, ips = subject_alt_names(cert)
    key_type, key_bits, curve = key_description(cert.public_key())
    return {
        "serial": format_serial(cert.serial_number),
        "fingerprint_sha256": fingerprint_sha256(cert),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "common_name": _name_attr(cert.subject, NameOID.COMMON_NAME),
        "issuer_common_name": _name_attr(cert.issuer, NameOID.COMMON_NAME),
        "dns_names": dns,
        "ip_addresses": ips,
        "not_before": format_time(start),
        "not_after": format_time(end),
        "days_left": round((end - now).total_seconds() / 86400.0, 4),
        "lifetime_days": round((end - start).total_seconds() / 86400.0, 4),
        "is_ca": is_ca(cert),
        "key_type": key_type,
        "key_size": key_bits,
    }


def describe_bundle(certs, now=None):
    """Short, diff-friendly description of a list of certs: subject, serial, not_after."""
    return [
        {
            "subject": cert.subject.rfc4514_string(),
            "serial": format_serial(cert.serial_number),
            "not_after": format_time(not_after(cert)),
        }
        for cert in certs
    ]


# ---------------------------------------------------------------- keys

def _spki(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches_cert(key, cert):
    """True when the private key belongs to the certificate's public key."""
    if key is None or cert is None:
        return False
    try:
        return _spki(key.public_key()) == _spki(cert.public_key())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def public_key_matches(key, public_key):
    try:
        return _spki(key.public_key()) == _spki(public_key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


# ---------------------------------------------------------------- chains

def _signed_by(cert, issuer):
    """True when ``issuer``'s key verifies ``cert``'s signature (names must match too)."""
    if cert.issuer != issuer.subject:
        return False
    if hasattr(cert, "verify_directly_issued_by"):
        try:
            cert.verify_directly_issued_by(issuer)
            return True
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            return False
    public_key = issuer.public_key()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes,
                              padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes,
                              ec.ECDSA(cert.signature_hash_algorithm))
        else:
            public_key.verify(cert.signature, cert.tbs_certificate_bytes)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def issued_by_any(cert, candidates):
    """The first candidate that signed ``cert``, or None."""
    for candidate in candidates or []:
        if _signed_by(cert, candidate):
            return candidate
    return None


def build_chain(leaf, intermediates, anchors):
    """Signature-only path leaf -> intermediates... -> anchor; (path, reason).

    ``path`` is the list of certs from the leaf up to and including the anchor
    when one is reached, else None and a reason naming where the path broke.
    Time validity is not checked here (see verify_chain).
    """
    anchors = list(anchors or [])
    pool = list(intermediates or [])
    anchor_fps = set(fingerprint_sha256(a) for a in anchors)
    path = [leaf]
    current = leaf
    for _depth in range(10):
        if fingerprint_sha256(current) in anchor_fps:
            return path, None
        anchor = issued_by_any(current, anchors)
        if anchor is not None:
            return path + [anchor], None
        parent = None
        for candidate in pool:
            if candidate is not current and fingerprint_sha256(candidate) != fingerprint_sha256(current) \
                    and not _explicitly_not_ca(candidate) and _signed_by(current, candidate):
                parent = candidate
                break
        if parent is None and current.issuer == current.subject:
            return None, "the root '%s' is not in the CA bundle" % current.subject.rfc4514_string()
        if parent is None:
            return None, "no trusted issuer for '%s' (issuer '%s' is not in the CA bundle)" % (
                current.subject.rfc4514_string(), current.issuer.rfc4514_string())
        pool = [c for c in pool if c is not parent]
        path.append(parent)
        current = parent
    return None, "chain longer than 10 certificates"


def _validity_problem(path, now):
    for cert in path:
        if now < not_before(cert):
            return "not_yet_valid", "'%s' is not valid before %s" % (
                cert.subject.rfc4514_string(), format_time(not_before(cert)))
        if now > not_after(cert):
            return "expired", "'%s' expired at %s" % (
                cert.subject.rfc4514_string(), format_time(not_after(cert)))
    return None, None


def verify_chain(leaf, intermediates, anchors, now=None):
    """Does ``leaf`` chain through ``intermediates`` to one of ``anchors`` at ``now``?

    Returns (ok, reason): reason is None when ok, else a sentence saying what
    broke (no trusted issuer, expired, not yet valid, bad signature). Uses
    cryptography's x509.verification when available (with permissive extension
    policies: private PKIs issue client certs without SANs or EKUs), and always
    checks the signature path and validity period itself so the reason reads
    the same on every cryptography version.
    """
    now = _aware(now)
    if not anchors:
        return False, "the CA bundle is empty"
    path, reason = build_chain(leaf, intermediates, anchors)
    if path is None:
        return False, reason
    _code, problem = _validity_problem(path, now)
    if problem:
        return False, problem
    if _HAS_VERIFIER:
        ok, problem = _verify_with_policy(leaf, intermediates, anchors, now)
        if not ok:
            return False, problem
    return True, None


def _verify_with_policy(leaf, intermediates, anchors, now):
    try:
        permit = _verification.ExtensionPolicy.permit_all()
        # The verifier insists that CA certs carry basicConstraints; it then
        # enforces ca=True itself. Everything else stays permissive.
        ca_policy = permit.require_present(
            x509.BasicConstraints, _verification.Criticality.AGNOSTIC, None)
        verifier = (
            _verification.PolicyBuilder()
            .store(_verification.Store(list(anchors)))
            .time(now.replace(microsecond=0))
            .extension_policies(ca_policy=ca_policy, ee_policy=permit)
            .build_client_verifier()
        )
        verifier.verify(leaf, list(intermediates or []))
    except _verification.VerificationError as exc:
        return False, "chain verification failed: %s" % exc
    except (ValueError, TypeError) as exc:  # e.g. a store cert the verifier refuses
        return False, "chain verification failed: %s" % exc
    return True, None


def split_leaf_and_chain(certs):
    """(leaf, rest) of a list where the leaf is the first non-CA cert (else the first)."""
    certs = list(certs)
    if not certs:
        return None, []
    for index, cert in enumerate(certs):
        if not is_ca(cert):
            return cert, certs[:index] + certs[index + 1:]
    return certs[0], certs[1:]


def dedupe(certs):
    """Certs without duplicates (by SHA-256 fingerprint), first occurrence kept."""
    seen = set()
    result = []
    for cert in certs:
        fp = fingerprint_sha256(cert)
        if fp not in seen:
            seen.add(fp)
            result.append(cert)
    return result


def normalize_ip(text):
    return str(ipaddress.ip_address(str(text).strip()))
