"""cert_login against the real lab: the agent identities log in with their policies, mismatches and
refusals are classified, and no token is left behind."""
import secrets

import pytest
from helpers import run_module
from vault_api_helpers import (
    admin_args,
    app_identity_args,
    make_ca,
    make_leaf,
    pem_of,
    root_client,
    token_accessors,
)

from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import cert_info, load_pem_bundle

pytestmark = pytest.mark.lab

APP = "ncprd1"
POLICIES = ["marker-cert-auth", "pki-issue-ncprd1"]


def test_agent_cert_logs_in_with_the_mapped_policies_and_leaves_no_token(lab):
    root = root_client(lab)
    before = token_accessors(root)
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-" + APP, expected_policies=POLICIES))
    assert not res["failed"], res["msg"]
    assert res["changed"] is False and res["revoked"] is True
    assert res["token_policies"] == ["default"] + POLICIES
    assert set(POLICIES) <= set(res["policies"])
    assert res["display_name"] == "cert-agent-" + APP
    agent = cert_info(load_pem_bundle(pem_of(lab.info["app_paths"][APP]["agent_crt"]))[0])
    assert res["metadata"]["serial"] == agent["serial"] == res["client_certificate"]["serial"]
    assert res["metadata"]["common_name"] == agent["common_name"] == "agent-%s.prod.privsec.ch" % APP
    assert res["metadata"]["cert_name"] == "agent-" + APP
    assert res["lease_duration"] > 0 and res["renewable"] is True
    assert not any(k in res for k in ("token", "client_token", "accessor"))
    assert token_accessors(root) - before == set()


def test_revoke_false_keeps_the_token(lab):
    root = root_client(lab)
    before = token_accessors(root)
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-" + APP, revoke=False))
    assert not res["failed"], res["msg"]
    assert res["revoked"] is False
    new = token_accessors(root) - before
    assert len(new) == 1
    for accessor in new:  # clean up
        root.write("auth/token/revoke-accessor", {"accessor": accessor})


def test_policy_mismatch_names_missing_and_unexpected(lab):
    root = root_client(lab)
    before = token_accessors(root)
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-" + APP,
                                                     expected_policies=["marker-cert-auth", "pki-issue-other"]))
    assert res["failed"] and res["failure_class"] == "policy_mismatch"
    assert res["missing_policies"] == ["pki-issue-other"] and res["unexpected_policies"] == ["pki-issue-ncprd1"]
    assert "agent-" + APP in res["msg"] and "token_policies" in res["hint"]
    assert token_accessors(root) - before == set()  # revoked before failing


def test_superset_accepts_more_policies(lab):
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-" + APP,
                                                     expected_policies=["marker-cert-auth"], policies_match="superset"))
    assert not res["failed"], res["msg"]
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-" + APP,
                                                     expected_policies=["marker-cert-auth", "x"], policies_match="superset"))
    assert res["failed"] and res["failure_class"] == "policy_mismatch" and res["unexpected_policies"] == []


def test_cert_of_another_app_is_refused_by_the_mapping(lab):
    """resume2me's agent cert chains to the same CA but its CN is not allowed by agent-ncprd1."""
    res = run_module("cert_login", app_identity_args(lab, "resume2me", cert_role="agent-" + APP))
    assert res["failed"] and res["failure_class"] == "permission_denied"
    assert "agent-%s" % APP in res["msg"] and "agent-resume2me.prod.privsec.ch" in res["msg"]
    assert "allowed_common_names" in res["hint"]


def test_unknown_mapping_is_permission_denied_naming_it(lab):
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-nope"))
    assert res["failed"] and res["failure_class"] == "permission_denied"
    assert "agent-nope" in res["msg"] and "bao read auth/cert/certs/agent-nope" in res["hint"]


def test_cert_from_an_unknown_ca_is_refused_at_the_handshake(lab, tmp_path):
    ca_key, ca_pem = make_ca("untrusted CA (test)")
    key_pem, cert_pem = make_leaf("agent-%s.prod.privsec.ch" % APP, ca_key, ca_pem)
    (tmp_path / "c.crt").write_text(cert_pem)
    (tmp_path / "c.key").write_text(key_pem)
    (tmp_path / "c.key").chmod(0o600)
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-" + APP,
                                                     client_cert=str(tmp_path / "c.crt"),
                                                     client_key=str(tmp_path / "c.key")))
    assert res["failed"] and res["failure_class"] in ("tls_alert", "reset"), res["msg"]
    if res["failure_class"] == "tls_alert":
        assert res["tls_alert"] in ("unknown ca", "bad certificate", "certificate unknown")


def test_mapping_with_a_rollover_bundle_accepts_the_current_cert(lab):
    """Old + new CA in one mapping: certs of the current CA keep logging in during the overlap."""
    name = "h3b-login-%s" % secrets.token_hex(4)
    _key, new_ca = make_ca("next CA (test)")
    try:
        made = run_module("cert_auth_mapping", admin_args(
            lab, name=name, certificate=new_ca + pem_of(lab.info["paths"]["ca_chain"]),
            allowed_common_names=["agent-%s.prod.privsec.ch" % APP], token_policies=["marker-cert-auth"]))
        assert not made["failed"], made["msg"]
        res = run_module("cert_login", app_identity_args(lab, APP, cert_role=name, expected_policies=["marker-cert-auth"]))
        assert not res["failed"], res["msg"]
        assert res["metadata"]["cert_name"] == name
    finally:
        root_client(lab).delete("auth/cert/certs/%s" % name)


def test_no_client_cert_is_bad_input_before_any_request(lab):
    args = app_identity_args(lab, APP, cert_role="agent-" + APP)
    del args["client_cert"], args["client_key"]
    res = run_module("cert_login", args)
    assert res["failed"] and res["failure_class"] == "bad_input" and "client_cert" in res["msg"]
