"""cert_auth_mapping against the real lab: create, compare, idempotence, diff, check mode, absent,
a rollover bundle with two CAs, and fields it does not manage left alone."""
import secrets

import pytest
from helpers import run_module
from vault_api_helpers import admin_args, make_ca, pem_of, root_client

pytestmark = pytest.mark.lab


@pytest.fixture
def mapping_name(lab):
    name = "h3b-test-%s" % secrets.token_hex(4)
    yield name
    root_client(lab).delete("auth/cert/certs/%s" % name)


def stored(lab, name):
    answer = root_client(lab).read("auth/cert/certs/%s" % name)
    return answer["data"] if answer else None


def lab_ca_chain(lab):
    return pem_of(lab.info["paths"]["ca_chain"])  # intermediate + root


def desired(lab, name, **extra):
    args = admin_args(lab, name=name, certificate=lab_ca_chain(lab),
                      allowed_common_names=["agent-h3b.prod.privsec.ch"],
                      token_policies=["pki-issue-ncprd1", "marker-cert-auth"], token_ttl="1h")
    args.update(extra)
    return args


def test_create_then_second_identical_run_is_unchanged(lab, mapping_name):
    first = run_module("cert_auth_mapping", desired(lab, mapping_name))
    assert not first["failed"], first["msg"]
    assert first["changed"] is True and first["path"] == "auth/cert/certs/" + mapping_name
    data = stored(lab, mapping_name)
    assert data["token_ttl"] == 3600 and sorted(data["token_policies"]) == ["marker-cert-auth", "pki-issue-ncprd1"]
    assert data["certificate"].count("BEGIN CERTIFICATE") == 2
    assert first["mapping"]["token_ttl"] == 3600 and len(first["mapping"]["certificate"]) == 2

    second = run_module("cert_auth_mapping", desired(lab, mapping_name))
    assert not second["failed"], second["msg"]
    assert second["changed"] is False and second["changed_fields"] == []


def test_other_spellings_of_the_same_state_are_unchanged(lab, mapping_name):
    assert run_module("cert_auth_mapping", desired(lab, mapping_name))["changed"]
    chain = lab_ca_chain(lab)
    blocks = [b + "-----END CERTIFICATE-----\n" for b in chain.split("-----END CERTIFICATE-----")[:-1]]
    same = desired(lab, mapping_name, token_ttl=3600, token_policies=["marker-cert-auth", "pki-issue-ncprd1"],
                   certificate="".join(reversed(blocks)) + blocks[0], display_name=mapping_name)
    res = run_module("cert_auth_mapping", same)
    assert not res["failed"], res["msg"]
    assert res["changed"] is False


def test_lab_mapping_spelled_differently_is_recognised_unchanged(lab):
    """The module agrees with a mapping it did not write (the lab's agent-ncprd1)."""
    data = stored(lab, "agent-ncprd1")
    args = admin_args(lab, name="agent-ncprd1", certificate=data["certificate"],
                      allowed_common_names=list(reversed(data["allowed_common_names"])),
                      token_policies=list(reversed(data["token_policies"])),
                      token_ttl="%ds" % data["token_ttl"], token_max_ttl=data["token_max_ttl"] or None)
    res = run_module("cert_auth_mapping", args, check=True)
    assert not res["failed"], res["msg"]
    assert res["changed"] is False, res["changed_fields"]


def test_check_mode_writes_nothing_and_reports_the_change(lab, mapping_name):
    res = run_module("cert_auth_mapping", desired(lab, mapping_name), check=True, diff=True)
    assert not res["failed"], res["msg"]
    assert res["changed"] is True and stored(lab, mapping_name) is None
    assert res["diff"]["before"] == {} and res["diff"]["after"]["token_ttl"] == 3600

    run_module("cert_auth_mapping", desired(lab, mapping_name))
    res = run_module("cert_auth_mapping", desired(lab, mapping_name, token_ttl="2h"), check=True)
    assert res["changed"] is True and res["changed_fields"] == ["token_ttl"]
    assert stored(lab, mapping_name)["token_ttl"] == 3600


def test_change_reports_only_the_changed_fields_and_diff_has_no_pem(lab, mapping_name):
    run_module("cert_auth_mapping", desired(lab, mapping_name))
    res = run_module("cert_auth_mapping", desired(lab, mapping_name, token_ttl="30m",
                                                  token_policies=["marker-cert-auth"]), diff=True)
    assert not res["failed"], res["msg"]
    assert res["changed"] is True and res["changed_fields"] == ["token_policies", "token_ttl"]
    assert "BEGIN CERTIFICATE" not in repr(res["diff"]) and "BEGIN CERTIFICATE" not in repr(res["mapping"])
    assert res["diff"]["before"]["token_ttl"] == 3600 and res["diff"]["after"]["token_ttl"] == 1800
    assert res["diff"]["before"]["certificate"] == res["diff"]["after"]["certificate"]
    assert set(res["diff"]["after"]["certificate"][0]) == {"subject", "serial", "not_after"}
    data = stored(lab, mapping_name)
    assert data["token_policies"] == ["marker-cert-auth"] and data["token_ttl"] == 1800
    # untouched fields kept their values (the full state was written)
    assert data["allowed_common_names"] == ["agent-h3b.prod.privsec.ch"]


def test_value_removed_from_the_task_is_removed_in_vault(lab, mapping_name):
    run_module("cert_auth_mapping", desired(lab, mapping_name, allowed_dns_sans=["x.prod.privsec.ch"],
                                            token_max_ttl="4h"))
    assert stored(lab, mapping_name)["allowed_dns_sans"] == ["x.prod.privsec.ch"]
    res = run_module("cert_auth_mapping", desired(lab, mapping_name))
    assert res["changed"] and res["changed_fields"] == ["allowed_dns_sans", "token_max_ttl"]
    data = stored(lab, mapping_name)
    assert not data["allowed_dns_sans"] and data["token_max_ttl"] == 0


def test_rollover_bundle_with_two_cas_then_back_to_one(lab, mapping_name):
    run_module("cert_auth_mapping", desired(lab, mapping_name))
    _key, new_ca = make_ca("pki-prod next intermediate (test)")
    both = desired(lab, mapping_name, certificate=lab_ca_chain(lab) + new_ca)
    res = run_module("cert_auth_mapping", both, diff=True)
    assert not res["failed"], res["msg"]
    assert res["changed_fields"] == ["certificate"]
    assert [c["subject"] for c in res["diff"]["after"]["certificate"]].count("CN=pki-prod next intermediate (test)") == 1
    assert len(res["mapping"]["certificate"]) == 3
    assert stored(lab, mapping_name)["certificate"].count("BEGIN CERTIFICATE") == 3
    assert run_module("cert_auth_mapping", both)["changed"] is False
    # retire the old CAs: only the new one stays
    res = run_module("cert_auth_mapping", desired(lab, mapping_name, certificate=new_ca))
    assert res["changed_fields"] == ["certificate"] and len(res["mapping"]["certificate"]) == 1


def test_fields_it_does_not_manage_are_left_alone(lab, mapping_name):
    run_module("cert_auth_mapping", desired(lab, mapping_name))
    root_client(lab).write("auth/cert/certs/%s" % mapping_name, {"allowed_organizational_units": ["ops"]})
    res = run_module("cert_auth_mapping", desired(lab, mapping_name, token_ttl="2h"))
    assert res["changed_fields"] == ["token_ttl"]
    assert stored(lab, mapping_name)["allowed_organizational_units"] == ["ops"]


def test_absent_deletes_once(lab, mapping_name):
    run_module("cert_auth_mapping", desired(lab, mapping_name))
    args = admin_args(lab, name=mapping_name, state="absent")
    check = run_module("cert_auth_mapping", args, check=True)
    assert check["changed"] is True and stored(lab, mapping_name) is not None
    res = run_module("cert_auth_mapping", args, diff=True)
    assert res["changed"] is True and res["diff"]["after"] == {} and res["diff"]["before"]["token_ttl"] == 3600
    assert stored(lab, mapping_name) is None
    again = run_module("cert_auth_mapping", args)
    assert again["changed"] is False and again["changed_fields"] == []


def test_bad_input_fails_before_any_write(lab, mapping_name):
    res = run_module("cert_auth_mapping", desired(lab, mapping_name, token_ttl="soon"))
    assert res["failed"] and res["failure_class"] == "bad_input" and "soon" in res["msg"]
    res = run_module("cert_auth_mapping", desired(lab, mapping_name, certificate="no pem here"))
    assert res["failed"] and res["failure_class"] == "bad_pem"
    res = run_module("cert_auth_mapping", admin_args(lab, name=mapping_name))
    assert res["failed"] and "certificate" in res["msg"]
    assert stored(lab, mapping_name) is None


def test_identity_without_rights_is_permission_denied(lab, mapping_name):
    """An agent identity (policies pki-issue-*, marker-cert-auth) may not touch mappings."""
    paths = lab.info["app_paths"]["ncprd1"]
    args = desired(lab, mapping_name, client_cert=paths["agent_crt"], client_key=paths["agent_key"],
                   cert_role="agent-ncprd1")
    res = run_module("cert_auth_mapping", args)
    assert res["failed"] and res["failure_class"] == "permission_denied"
    assert mapping_name in res["msg"]
