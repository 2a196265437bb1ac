"""The rotation decision: every reason code, its sentence, and the keep case."""
import datetime

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _rotation as R
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509 as X
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

from pki_fixtures import PKI, make_cert, new_key

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki():
    return PKI()


@pytest.fixture(scope="module")
def leaf(pki):
    """A 30-day cert from START for agent-a with one DNS SAN = CN and one IP."""
    return pki.leaf("agent-a.prod.privsec.ch", dns=["agent-a.prod.privsec.ch"], ips=["127.0.0.1"],
                    not_before=START, days=30)


def info_of(cert):
    return X.cert_info(cert, now=START)


def at(days):
    return START + datetime.timedelta(days=days)


def test_valid_keep(pki, leaf):
    result = R.evaluate(info_of(leaf[1]), want_cn="agent-a.prod.privsec.ch",
                        want_dns=["agent-a.prod.privsec.ch"], want_ips=["127.0.0.1"],
                        ca_bundle_certs=[pki.intermediate, pki.root], key_matches=True,
                        cert=leaf[1], now=at(5))
    assert result["rotate"] is False
    assert result["reasons"] == ["valid"]
    assert result["reason_text"] == ["valid: expires in 25 days, due in 15 days"]
    assert R.summary(result) == "keep: valid: expires in 25 days, due in 15 days"
    assert R.decide(info_of(leaf[1]), key_matches=True, now=at(5)) == (False, ["valid"])


def test_missing():
    assert R.decide(None, now=START) == (True, ["missing"])
    assert R.evaluate(None)["reason_text"] == ["no certificate installed yet"]


def test_unparsable():
    result = R.evaluate(None, parse_error="PEM block #1 does not parse")
    assert result["reasons"] == ["unparsable"]
    assert "does not parse" in result["reason_text"][0]


def test_key_missing_and_mismatch(leaf):
    assert R.decide(info_of(leaf[1]), key_matches=None, now=at(1)) == (True, ["key_missing"])
    assert R.decide(info_of(leaf[1]), key_matches=False, now=at(1)) == (True, ["key_mismatch"])


def test_due_by_fraction(leaf):
    info = info_of(leaf[1])
    # default 2/3 of 30 days = day 20
    assert R.decide(info, key_matches=True, now=at(19.9)) == (False, ["valid"])
    rotate, reasons = R.decide(info, key_matches=True, now=at(20))
    assert rotate and reasons == ["due"]
    text = R.evaluate(info, key_matches=True, now=at(21))["reason_text"][0]
    assert text == "expires in 9 days, 70% of its lifetime has elapsed (renews at 67%)"
    assert R.decide(info, key_matches=True, renew_fraction=0.5, now=at(15)) == (True, ["due"])
    assert R.decide(info, key_matches=True, renew_fraction=0.9, now=at(21)) == (False, ["valid"])


def test_due_by_renew_before_wins(leaf):
    info = info_of(leaf[1])
    assert R.decide(info, key_matches=True, renew_before="3d", now=at(26.9)) == (False, ["valid"])
    result = R.evaluate(info, key_matches=True, renew_before="3d", renew_fraction=0.1, now=at(27.5))
    assert result["reasons"] == ["due"]
    assert result["reason_text"] == ["expires in 2.5 days, within the renew window of 3 days"]
    assert R.decide(info, key_matches=True, renew_before=12 * 3600, now=at(29.6)) == (True, ["due"])


def test_expired(leaf):
    result = R.evaluate(info_of(leaf[1]), key_matches=True, now=at(32))
    assert result["reasons"] == ["expired"]
    assert result["reason_text"][0].startswith("expired 2 days ago")
    assert result["days_left"] == pytest.approx(-2)


def test_cn_differs(leaf):
    result = R.evaluate(info_of(leaf[1]), want_cn="agent-b.prod.privsec.ch", key_matches=True, now=at(1))
    assert result["reasons"] == ["cn_differs"]
    assert "agent-b" in result["reason_text"][0]


def test_san_compare_is_a_set_and_tolerates_cn(pki):
    _k, cert = pki.leaf("x.example", dns=["B.example", "x.example", "a.example"], ips=["::1", "127.0.0.1"],
                        not_before=START)
    info = info_of(cert)
    # order and case do not matter; CN among DNS SANs is tolerated
    assert R.decide(info, want_cn="x.example", want_dns=["a.example", "b.example"],
                    want_ips=["127.0.0.1", "0:0::1"], key_matches=True, now=at(1)) == (False, ["valid"])
    # None = do not compare
    assert R.decide(info, want_dns=None, want_ips=None, key_matches=True, now=at(1)) == (False, ["valid"])


def test_san_differs(leaf):
    result = R.evaluate(info_of(leaf[1]), want_cn="agent-a.prod.privsec.ch",
                        want_dns=["agent-a.prod.privsec.ch", "new.prod.privsec.ch"], want_ips=[],
                        key_matches=True, now=at(1))
    assert result["reasons"] == ["san_differs"]
    assert result["reason_text"] == ["DNS names missing: new.prod.privsec.ch; IP SANs not wanted: 127.0.0.1"]


def test_issuer_untrusted_by_signature(pki, leaf):
    other = PKI("other")
    assert R.decide(info_of(leaf[1]), ca_bundle_certs=[other.intermediate, other.root], key_matches=True,
                    cert=leaf[1], now=at(1)) == (True, ["issuer_untrusted"])
    # bundle with old + new CA during a rollover keeps it trusted
    assert R.decide(info_of(leaf[1]), ca_bundle_certs=[other.root, pki.intermediate], key_matches=True,
                    cert=leaf[1], now=at(1)) == (False, ["valid"])
    # root only + the chain from the files
    assert R.decide(info_of(leaf[1]), ca_bundle_certs=[pki.root], chain_certs=[pki.intermediate],
                    key_matches=True, cert=leaf[1], now=at(1)) == (False, ["valid"])


def test_issuer_untrusted_same_name_other_key(pki, leaf):
    impostor = make_cert("test pki-prod", new_key(), ca=True, days=100)
    assert R.decide(info_of(leaf[1]), ca_bundle_certs=[impostor], key_matches=True, cert=leaf[1],
                    now=at(1)) == (True, ["issuer_untrusted"])
    # info-only path compares names (documented weaker check)
    assert R.decide(info_of(leaf[1]), ca_bundle_certs=[impostor], key_matches=True,
                    now=at(1)) == (False, ["valid"])


def test_forced_and_several_reasons_in_order(leaf):
    result = R.evaluate(info_of(leaf[1]), want_cn="other", key_matches=False, force=True, now=at(40))
    assert result["reasons"] == ["forced", "key_mismatch", "expired", "cn_differs"]
    assert len(result["reason_text"]) == 4
    assert R.summary(result).startswith("rotate: rotation forced; ")


def test_forced_valid(leaf):
    assert R.decide(info_of(leaf[1]), key_matches=True, force=True, now=at(1)) == (True, ["forced"])


@pytest.mark.parametrize("text,seconds", [
    ("3d", 259200), ("12h", 43200), ("1d12h", 129600), ("90m", 5400), ("2w", 1209600),
    ("3600", 3600), (3600, 3600), ("1.5d", 129600), (None, None), ("", None),
])
def test_parse_duration(text, seconds):
    assert R.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["3x", "d3", "soon", "-1d", -5])
def test_parse_duration_rejects(bad):
    with pytest.raises(RotateError) as err:
        R.parse_duration(bad)
    assert err.value.failure_class == "bad_input"


def test_bad_fraction(leaf):
    with pytest.raises(RotateError):
        R.evaluate(info_of(leaf[1]), renew_fraction=1.5)
