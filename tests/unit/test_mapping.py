"""Unit tests of plugins/module_utils/_mapping.py: normalise, compare and diff a cert-auth mapping."""
import datetime
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

COLLECTIONS = Path(__file__).resolve().parents[2] / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _mapping as m  # noqa: E402
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError  # noqa: E402


def make_ca(cn, days=365):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@pytest.fixture(scope="module")
def old_ca():
    return make_ca("Old CA", days=30)


@pytest.fixture(scope="module")
def new_ca():
    return make_ca("New CA", days=365)


# -- durations -----------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    (None, 0), ("", 0), (0, 0), (3600, 3600), ("3600", 3600), ("1h", 3600), ("60m", 3600),
    ("3600s", 3600), ("1h30m", 5400), ("90m", 5400), ("1.5h", 5400), ("2d", 172800),
    ("720h", 2592000), (" 1H ", 3600), ("90.9s", 90), (12.7, 12), ("500ms", 0),
    ("1d2h", 93600),  # one parser for every duration (_timing): Vault gets the seconds
])
def test_parse_duration_accepts_every_form_vault_accepts(value, seconds):
    assert m.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["1 hour", "h", "1h-5m", "1x", "-5", True, "d2"])
def test_parse_duration_rejects_garbage_with_the_value(value):
    with pytest.raises(ValueError) as info:
        m.parse_duration(value)
    assert repr(value) in str(info.value)


# -- lists ---------------------------------------------------------------------

def test_lists_are_order_and_duplicate_insensitive():
    assert m.normalise_list(["b", "a", "a"]) == ["a", "b"]
    assert m.normalise_list("b, a,,a") == ["a", "b"]
    assert m.normalise_list(None) == []
    assert m.normalise_list([]) == []


# -- normalise / compare ---------------------------------------------------------

def vault_read(ca_pem, **overrides):
    """The shape OpenBao 2.7 returns for GET auth/cert/certs/<name> (data)."""
    data = {
        "allowed_common_names": ["agent-ncprd1.prod.privsec.ch"],
        "allowed_dns_sans": None, "allowed_email_sans": None, "allowed_uri_sans": None,
        "allowed_names": None, "allowed_organizational_units": None,
        "certificate": ca_pem, "display_name": "agent-ncprd1",
        "ocsp_enabled": False, "required_extensions": None,
        "token_bound_cidrs": [], "token_explicit_max_ttl": 0, "token_max_ttl": 0,
        "token_no_default_policy": False, "token_num_uses": 0, "token_period": 0,
        "token_policies": ["pki-issue-ncprd1", "marker-cert-auth"], "token_ttl": 3600,
        "token_type": "default",
    }
    data.update(overrides)
    return data


def desired(ca_pem, **overrides):
    """Module options as a user writes them (unset options are None)."""
    params = {
        "certificate": ca_pem, "allowed_common_names": ["agent-ncprd1.prod.privsec.ch"],
        "allowed_dns_sans": None, "allowed_uri_sans": None, "display_name": None,
        "token_policies": ["marker-cert-auth", "pki-issue-ncprd1"], "token_ttl": "1h",
        "token_max_ttl": None, "token_period": None, "token_bound_cidrs": None,
    }
    params.update(overrides)
    return params


def test_equal_mapping_in_other_spelling_has_no_changes(old_ca):
    current = m.normalise(vault_read(old_ca), "agent-ncprd1")
    wanted = m.normalise(desired(old_ca.replace("\n", "\r\n") + "\n\n"), "agent-ncprd1")
    assert m.changed_fields(current, wanted) == []


def test_ttl_change_is_the_only_changed_field(old_ca):
    current = m.normalise(vault_read(old_ca), "agent-ncprd1")
    wanted = m.normalise(desired(old_ca, token_ttl="2h"), "agent-ncprd1")
    assert m.changed_fields(current, wanted) == ["token_ttl"]


def test_policy_order_does_not_count_but_a_new_policy_does(old_ca):
    current = m.normalise(vault_read(old_ca), "agent-ncprd1")
    reordered = m.normalise(desired(old_ca, token_policies=["pki-issue-ncprd1", "marker-cert-auth"]), "agent-ncprd1")
    assert m.changed_fields(current, reordered) == []
    added = m.normalise(desired(old_ca, token_policies=["pki-issue-ncprd1", "marker-cert-auth", "x"]), "agent-ncprd1")
    assert m.changed_fields(current, added) == ["token_policies"]


def test_ca_bundle_is_compared_as_a_set(old_ca, new_ca):
    current = m.normalise(vault_read(old_ca + new_ca), "agent-ncprd1")
    swapped = m.normalise(desired(new_ca + old_ca + new_ca), "agent-ncprd1")
    assert m.changed_fields(current, swapped) == []
    only_new = m.normalise(desired(new_ca), "agent-ncprd1")
    assert m.changed_fields(current, only_new) == ["certificate"]


def test_fields_left_out_of_the_desired_state_mean_empty(old_ca):
    """A partial desired state is the full state with defaults: an allowed DNS SAN present in
    Vault but not wanted is a change (it will be removed), not ignored."""
    current = m.normalise(vault_read(old_ca, allowed_dns_sans=["x.example"], token_max_ttl=7200), "agent-ncprd1")
    wanted = m.normalise(desired(old_ca), "agent-ncprd1")
    assert m.changed_fields(current, wanted) == ["allowed_dns_sans", "token_max_ttl"]


def test_display_name_defaults_to_the_mapping_name(old_ca):
    current = m.normalise(vault_read(old_ca), "agent-ncprd1")
    assert m.changed_fields(current, m.normalise(desired(old_ca, display_name="agent-ncprd1"), "agent-ncprd1")) == []
    assert m.changed_fields(current, m.normalise(desired(old_ca, display_name="other"), "agent-ncprd1")) == ["display_name"]


def test_no_current_mapping_changes_every_field(old_ca):
    assert m.changed_fields(None, m.normalise(desired(old_ca), "n")) == list(m.MANAGED_FIELDS)


def test_bad_bundle_raises_bad_pem():
    with pytest.raises(RotateError) as info:
        m.normalise(desired("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), "n")
    assert info.value.failure_class == "bad_pem"


def test_bad_ttl_in_desired_state_raises_value_error(old_ca):
    with pytest.raises(ValueError):
        m.normalise(desired(old_ca, token_ttl="soon"), "n")


# -- write body ------------------------------------------------------------------

def test_write_body_is_the_full_state_with_explicit_empties(old_ca, new_ca):
    body = m.write_body(desired(old_ca + new_ca + old_ca, token_ttl="90m"), "agent-ncprd1")
    assert set(body) == set(m.MANAGED_FIELDS)
    assert body["certificate"].count("BEGIN CERTIFICATE") == 2
    assert body["certificate"].index(old_ca.strip()) < body["certificate"].index(new_ca.strip())
    assert body["allowed_dns_sans"] == [] and body["token_bound_cidrs"] == []
    assert body["token_ttl"] == 5400 and body["token_max_ttl"] == 0 and body["token_period"] == 0
    assert body["display_name"] == "agent-ncprd1"
    assert body["token_policies"] == ["marker-cert-auth", "pki-issue-ncprd1"]


# -- diff ------------------------------------------------------------------------

def test_diff_shows_the_ca_bundle_parsed_never_pem(old_ca, new_ca):
    before = m.normalise(vault_read(old_ca), "agent-ncprd1")
    after = m.normalise(desired(old_ca + new_ca), "agent-ncprd1")
    diff = m.render_diff("auth/cert/certs/agent-ncprd1", before, after)
    assert "BEGIN CERTIFICATE" not in repr(diff)
    assert diff["before_header"] == "auth/cert/certs/agent-ncprd1"
    assert [e["subject"] for e in diff["before"]["certificate"]] == ["CN=Old CA"]
    assert [e["subject"] for e in diff["after"]["certificate"]] == ["CN=Old CA", "CN=New CA"]
    assert set(diff["after"]["certificate"][0]) == {"subject", "serial", "not_after"}
    assert diff["after"]["token_ttl"] == 3600


def test_diff_of_create_and_delete_has_an_empty_side(old_ca):
    state = m.normalise(desired(old_ca), "n")
    assert m.render_diff("p", None, state)["before"] == {}
    assert m.render_diff("p", state, None)["after"] == {}


# -- ensure_mapping (a fake client that stores what is written, as Vault does) --

class FakeVault:
    def __init__(self, stored=None, store_as_written=True, refuse_write=None):
        self.stored = stored
        self.store_as_written = store_as_written
        self.refuse_write = refuse_write
        self.calls = []

    def read(self, path):
        self.calls.append(("read", path))
        return {"data": dict(self.stored)} if self.stored is not None else None

    def write(self, path, body):
        self.calls.append(("write", path))
        if self.refuse_write:
            raise self.refuse_write
        self.stored = dict(body) if self.store_as_written else dict(body, token_policies=[])

    def delete(self, path):
        self.calls.append(("delete", path))
        self.stored = None


def desired_params(ca_pem, **overrides):
    params = {"certificate": ca_pem, "allowed_common_names": ["agent-a"], "token_policies": ["agent"],
              "token_ttl": "1h"}
    params.update(overrides)
    return params


def test_ensure_mapping_creates_then_changes_nothing(old_ca):
    vault = FakeVault()
    result, before, desired = m.ensure_mapping(vault, "cert", "agent-a", desired_params(old_ca))
    assert result["changed"] is True and result["path"] == "auth/cert/certs/agent-a"
    assert result["changed_fields"] == list(m.MANAGED_FIELDS) and before is None
    assert result["mapping"]["token_ttl"] == 3600 and "BEGIN" not in str(result["mapping"])
    assert vault.calls == [("read", "auth/cert/certs/agent-a"), ("write", "auth/cert/certs/agent-a"),
                           ("read", "auth/cert/certs/agent-a")]
    vault.calls = []
    result, before, desired = m.ensure_mapping(vault, "cert", "agent-a", desired_params(old_ca, token_ttl=3600))
    assert result["changed"] is False and result["changed_fields"] == [] and before == desired
    assert vault.calls == [("read", "auth/cert/certs/agent-a")]


def test_ensure_mapping_check_mode_and_absent(old_ca, new_ca):
    vault = FakeVault()
    m.ensure_mapping(vault, "cert", "agent-a", desired_params(old_ca))
    result, _before, _desired = m.ensure_mapping(vault, "cert", "agent-a", desired_params(new_ca), check_mode=True)
    assert result["changed_fields"] == ["certificate"] and vault.calls[-1][0] == "read"
    result, before, desired = m.ensure_mapping(vault, "cert", "agent-a", {}, state="absent", check_mode=True)
    assert result["changed"] is True and vault.stored is not None and desired is None and before is not None
    result, _before, _desired = m.ensure_mapping(vault, "cert", "agent-a", {}, state="absent")
    assert result["changed"] is True and vault.stored is None and result["mapping"] is None
    result, _before, _desired = m.ensure_mapping(vault, "cert", "agent-a", {}, state="absent")
    assert result["changed"] is False and result["changed_fields"] == []


def test_ensure_mapping_not_stored_as_written_is_server_error_with_the_fields(old_ca):
    with pytest.raises(RotateError) as caught:
        m.ensure_mapping(FakeVault(store_as_written=False), "cert", "agent-a", desired_params(old_ca))
    err = caught.value
    assert err.failure_class == "server_error" and "token_policies" in err.message
    assert err.details["changed"] is True and err.details["mapping"]["token_policies"] == []


def test_ensure_mapping_errors_carry_the_result_fields(old_ca):
    vault = FakeVault()
    with pytest.raises(RotateError) as caught:
        m.ensure_mapping(vault, "cert", "agent-a", desired_params(old_ca, token_ttl="soon"))
    assert caught.value.failure_class == "bad_input" and caught.value.message.startswith("auth/cert/certs/agent-a: ")
    assert caught.value.details["mapping"] is None and vault.calls == []  # before any request
    refused = RotateError("permission_denied", "denied", "check the policy", {"status": 403})
    with pytest.raises(RotateError) as caught:
        m.ensure_mapping(FakeVault(refuse_write=refused), "cert", "agent-a", desired_params(old_ca))
    assert caught.value.details["changed_fields"] == list(m.MANAGED_FIELDS) and caught.value.details["status"] == 403
