"""Unit tests of plugins/module_utils/_login.py with a fake client (no lab).

The lab tests of cert_login prove the real logins; the fake only reaches what
the lab does not do on demand (a failing lookup or revocation) and checks that
the token never shows in a result, a warning or a failure.
"""
import json

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _login
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError, classify_http
from pki_fixtures import PKI, pem

TOKEN = "s.SECRET-token-value"


class FakeLoginClient:
    def __init__(self, policies=("default", "agent"), lookup_fails=False, revoke_fails=False, refuse=None):
        self.token = "env-token"
        self.policies = list(policies)
        self.lookup_fails = lookup_fails
        self.revoke_fails = revoke_fails
        self.refuse = refuse
        self.calls = []

    def login_cert(self, mount, name):
        self.calls.append(("login", mount, name, self.token))
        if self.refuse:
            raise classify_http(400, [self.refuse], "auth/%s/login" % mount)
        self.token = TOKEN
        return {"client_token": TOKEN, "accessor": "acc", "policies": self.policies,
                "token_policies": self.policies, "lease_duration": 300, "renewable": True,
                "metadata": {"cert_name": "agent-a", "common_name": "agent-a.example", "serial_number": "255"}}

    def lookup_self(self):
        if self.lookup_fails:
            raise RotateError("server_error", "lookup of %s failed" % TOKEN, "see the server log")
        return {"display_name": "cert-agent-a", "id": TOKEN}

    def revoke_self(self):
        self.calls.append(("revoke", self.token))
        if self.revoke_fails:
            raise RotateError("permission_denied", "revoke of token %s refused" % TOKEN, "check the policy")


def test_compare_policies_ignores_default_unless_expected():
    assert _login.compare_policies(["a"], ["default", "a"], "exact") == ([], [])
    assert _login.compare_policies(["a", "default"], ["a"], "exact") == (["default"], [])
    assert _login.compare_policies(["a"], ["a", "b"], "exact") == ([], ["b"])
    assert _login.compare_policies(["a"], ["a", "b"], "superset") == ([], [])


def test_metadata_of_formats_the_decimal_serial():
    meta = _login.metadata_of({"metadata": {"serial_number": "255", "cert_name": "x"}})
    assert meta["serial"] == "ff" and meta["cert_name"] == "x" and meta["common_name"] is None
    assert _login.metadata_of({"metadata": {"serial_number": "zz"}})["serial"] == "zz"


def test_login_drops_the_env_token_revokes_and_returns_no_token(tmp_path):
    cert_file = tmp_path / "agent.crt"
    _key, leaf = PKI().leaf("agent-a.example")
    cert_file.write_text(pem(leaf))
    client = FakeLoginClient()
    result = _login.cert_login(client, "/cert/", "agent-a", expected_policies=["agent"], cert_path=str(cert_file))
    assert client.calls[0] == ("login", "cert", "agent-a", None)  # logged in without the env token
    assert client.calls[1] == ("revoke", TOKEN) and client.token is None
    assert result["token_policies"] == ["agent", "default"] and result["revoked"] is True
    assert result["display_name"] == "cert-agent-a" and result["metadata"]["serial"] == "ff"
    assert result["client_certificate"]["serial"] and "subject" in result["client_certificate"]
    assert TOKEN not in json.dumps(result)


def test_failed_lookup_and_revoke_are_warnings_without_the_token():
    warnings = []
    client = FakeLoginClient(lookup_fails=True, revoke_fails=True)
    result = _login.cert_login(client, "cert", "agent-a", warn=warnings.append)
    assert result["display_name"] is None and result["revoked"] is False and client.token is None
    assert len(warnings) == 2 and "expires in 300s" in warnings[1]
    assert not any(TOKEN in w for w in warnings) and "********" in warnings[0]


def test_revoke_false_keeps_the_token_on_the_client_only():
    client = FakeLoginClient()
    result = _login.cert_login(client, "cert", None, revoke=False)
    assert result["revoked"] is False and client.token == TOKEN and TOKEN not in json.dumps(result)


def test_policy_mismatch_names_missing_and_unexpected_with_the_result_in_details():
    client = FakeLoginClient(policies=["default", "agent", "extra"])
    with pytest.raises(RotateError) as caught:
        _login.cert_login(client, "cert", "agent-a", expected_policies=["agent", "other"])
    err = caught.value
    assert err.failure_class == "policy_mismatch"
    assert err.details["missing_policies"] == ["other"] and err.details["unexpected_policies"] == ["extra"]
    assert err.details["revoked"] is True and err.details["token_policies"] == ["agent", "default", "extra"]
    assert "auth/cert/certs/agent-a" in err.hint
    assert TOKEN not in json.dumps(err.as_failure())


def test_refused_login_is_permission_denied_naming_the_mapping():
    client = FakeLoginClient(refuse="invalid certificate or no client certificate supplied")
    with pytest.raises(RotateError) as caught:
        _login.cert_login(client, "cert", "agent-a")
    assert caught.value.failure_class == "permission_denied"
    assert "mapping 'agent-a' does not accept the client certificate" in caught.value.message
    assert caught.value.details["mapping"] == "agent-a"
