"""x509 helpers: PEM edge cases, canonical formats, key match, chain verification."""
import datetime
import re

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509 as X
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

from pki_fixtures import PKI, key_pem, make_cert, new_key, pem

UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def pki():
    return PKI()


@pytest.fixture(scope="module")
def leaf(pki):
    return pki.leaf("a.prod.privsec.ch", dns=["a.prod.privsec.ch", "b.prod.privsec.ch"], ips=["127.0.0.1", "::1"])


def test_bundle_keeps_order(pki, leaf):
    certs = X.load_pem_bundle(pem(leaf[1]) + pki.chain_pem)
    assert [c.subject for c in certs] == [leaf[1].subject, pki.intermediate.subject, pki.root.subject]


def test_bundle_accepts_bytes_crlf_and_junk_between(pki, leaf):
    text = "subject=CN = a\nissuer=whatever\n" + pem(leaf[1]) + "\n# comment line\n\n" + pem(pki.root) + "trailing junk"
    certs = X.load_pem_bundle(text.replace("\n", "\r\n").encode())
    assert len(certs) == 2


@pytest.mark.parametrize("data,needle", [
    ("", "empty"),
    (b"   \n", "empty"),
    (None, "empty"),
    ("hello world, not a pem", "no PEM certificate"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "found: PUBLIC KEY"),
])
def test_bundle_rejects_garbage(data, needle):
    with pytest.raises(RotateError) as err:
        X.load_pem_bundle(data)
    assert err.value.failure_class == "bad_pem"
    assert needle in err.value.message


def test_bundle_rejects_private_key_instead_of_cert(leaf):
    with pytest.raises(RotateError) as err:
        X.load_pem_bundle(key_pem(leaf[0]))
    assert err.value.failure_class == "bad_pem"
    assert "private key, not a certificate" in err.value.message


def test_bundle_rejects_corrupt_block(leaf):
    text = pem(leaf[1])
    lines = text.splitlines()
    lines[3] = lines[3][:10] + "!!!!" + lines[3][14:]
    with pytest.raises(RotateError) as err:
        X.load_pem_bundle("\n".join(lines))
    assert err.value.failure_class == "bad_pem"
    assert "#1" in err.value.message


def test_truncated_cert_is_bad_pem(leaf):
    text = pem(leaf[1])
    with pytest.raises(RotateError) as err:
        X.load_pem_bundle(text[: len(text) // 2])
    assert err.value.failure_class == "bad_pem"


def test_private_key_roundtrip_and_errors(leaf):
    key = X.load_private_key(key_pem(leaf[0]))
    assert X.key_matches_cert(key, leaf[1])
    for bad in ("", "garbage", pem(leaf[1])):
        with pytest.raises(RotateError) as err:
            X.load_private_key(bad)
        assert err.value.failure_class == "bad_pem"
    enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    with pytest.raises(RotateError) as err:
        X.load_private_key(enc)
    assert "encrypted" in err.value.message


def test_key_mismatch(leaf):
    assert not X.key_matches_cert(new_key(), leaf[1])
    assert not X.key_matches_cert(new_key("rsa"), leaf[1])
    assert not X.key_matches_cert(None, leaf[1])


def test_rsa_key_matches():
    pki = PKI("rsa")
    key, cert = pki.leaf("rsa.example", key=new_key("rsa", 2048))
    assert X.key_matches_cert(X.load_private_key(key_pem(key)), cert)
    assert X.cert_info(cert)["key_type"] == "rsa"
    assert X.cert_info(cert)["key_size"] == 2048


def test_cert_info_canonical(leaf):
    info = X.cert_info(leaf[1])
    assert re.match(r"^([0-9a-f]{2}:)*[0-9a-f]{2}$", info["serial"])
    assert re.match(r"^([0-9a-f]{2}:){31}[0-9a-f]{2}$", info["fingerprint_sha256"])
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", info["not_after"])
    assert info["common_name"] == "a.prod.privsec.ch"
    assert info["subject"] == "CN=a.prod.privsec.ch,O=privsec test"
    assert info["issuer"].startswith("CN=test pki-prod")
    assert info["dns_names"] == ["a.prod.privsec.ch", "b.prod.privsec.ch"]
    assert info["ip_addresses"] == ["127.0.0.1", "::1"]
    assert info["is_ca"] is False
    assert isinstance(info["days_left"], float)
    assert 29.9 < info["days_left"] <= 30.0
    assert info["lifetime_days"] == 30.0


def test_days_left_uses_now(leaf):
    later = X.not_after(leaf[1]) + datetime.timedelta(days=2)
    assert X.cert_info(leaf[1], now=later)["days_left"] == pytest.approx(-2.0)


def test_format_serial():
    assert X.format_serial(1) == "01"
    assert X.format_serial(0x1FF) == "01:ff"
    assert X.format_serial(0x3A1F00) == "3a:1f:00"
    assert X.normalize_serial("3A1F00") == "3a:1f:00"
    assert X.normalize_serial("3a-1f-00") == "3a:1f:00"


def test_fingerprint_matches_openssl_style(leaf):
    from cryptography.hazmat.primitives import hashes
    raw = leaf[1].fingerprint(hashes.SHA256()).hex()
    assert X.fingerprint_sha256(leaf[1]).replace(":", "") == raw


def test_describe_bundle_never_pem(pki):
    desc = X.describe_bundle([pki.intermediate, pki.root])
    assert [set(d) for d in desc] == [{"subject", "serial", "not_after"}] * 2
    assert "BEGIN" not in repr(desc)


def test_verify_chain_ok(pki, leaf):
    assert X.verify_chain(leaf[1], [pki.intermediate], [pki.root]) == (True, None)
    assert X.verify_chain(leaf[1], [], [pki.intermediate]) == (True, None)
    # a client cert without SAN (admin cert) verifies too
    _k, admin = pki.leaf("vault-admin-prod")
    assert X.verify_chain(admin, [pki.intermediate], [pki.root]) == (True, None)


def test_verify_chain_missing_intermediate(pki, leaf):
    ok, reason = X.verify_chain(leaf[1], [], [pki.root])
    assert not ok and "not in the CA bundle" in reason


def test_verify_chain_other_ca(pki, leaf):
    other = PKI("other")
    ok, reason = X.verify_chain(leaf[1], [pki.intermediate], [other.root])
    assert not ok and "test root" in reason
    ok, reason = X.verify_chain(leaf[1], [], [])
    assert not ok and "empty" in reason


def test_verify_chain_same_name_other_key(pki, leaf):
    """An impostor CA with the same subject but another key does not verify."""
    impostor_key = new_key()
    impostor = make_cert("test pki-prod", impostor_key, ca=True, days=100)
    ok, _reason = X.verify_chain(leaf[1], [], [impostor])
    assert not ok


def test_verify_chain_expired_and_not_yet_valid(pki, leaf):
    later = X.not_after(leaf[1]) + datetime.timedelta(seconds=1)
    ok, reason = X.verify_chain(leaf[1], [pki.intermediate], [pki.root], now=later)
    assert not ok and "expired" in reason
    earlier = X.not_before(leaf[1]) - datetime.timedelta(days=1)
    ok, reason = X.verify_chain(leaf[1], [pki.intermediate], [pki.root], now=earlier)
    assert not ok and "not valid before" in reason


def test_verify_chain_rejects_non_ca_intermediate(pki):
    bad_key = new_key()
    bad = make_cert("not-a-ca", bad_key, pki.root, pki.root_key, ca=False)
    key = new_key()
    cert = make_cert("leaf", key, bad, bad_key)
    ok, reason = X.verify_chain(cert, [bad], [pki.root])
    assert not ok
    assert reason


def test_split_leaf_and_dedupe(pki, leaf):
    leaf_cert, rest = X.split_leaf_and_chain([pki.intermediate, leaf[1], pki.root])
    assert leaf_cert == leaf[1] and rest == [pki.intermediate, pki.root]
    assert X.dedupe([pki.root, pki.intermediate, pki.root]) == [pki.root, pki.intermediate]
    assert X.is_self_signed(pki.root) and not X.is_self_signed(pki.intermediate)


def test_fallback_without_verifier_gives_the_same_answers(pki, leaf, monkeypatch):
    """Hosts with an older cryptography (no x509.verification) use the signature walk alone."""
    monkeypatch.setattr(X, "_HAS_VERIFIER", False)
    assert X.verify_chain(leaf[1], [pki.intermediate], [pki.root]) == (True, None)
    ok, reason = X.verify_chain(leaf[1], [], [pki.root])
    assert not ok and "not in the CA bundle" in reason
    later = X.not_after(leaf[1]) + datetime.timedelta(seconds=1)
    assert not X.verify_chain(leaf[1], [pki.intermediate], [pki.root], now=later)[0]
    bad_key = new_key()
    not_ca = make_cert("not-a-ca", bad_key, pki.root, pki.root_key, ca=False)
    below = make_cert("leaf", new_key(), not_ca, bad_key)
    assert not X.verify_chain(below, [not_ca], [pki.root])[0]


def test_a_key_is_parsed_once_per_process(monkeypatch):
    """One step reads the same key file several times (inspect, the pair check, install, the
    gates); where cryptography is older than 39 every RSA parse runs OpenSSL's key check (~50 ms
    for RSA-2048): the same PEM block is parsed once."""
    parsed = []
    real = X._load_pem_key
    monkeypatch.setattr(X, "_load_pem_key", lambda raw: parsed.append(raw) or real(raw))
    monkeypatch.setattr(X, "_KEYS", {}, raising=False)
    text = key_pem(new_key("rsa"))
    first = X.load_private_key(text)
    assert X.load_private_key(text.encode()) is first
    assert X.load_private_key("junk before the block\n" + text) is first
    other = X.load_private_key(key_pem(new_key()))
    assert other is not first
    assert len(parsed) == 2
    with pytest.raises(RotateError):  # a bad block is still refused, and never cached
        X.load_private_key(text.replace("\n", "\nA", 3))
