"""pki_cert against the real lab: sign a CSR, issue, check mode, and every refusal class."""
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import run_module
from vault_api_helpers import admin_args, make_csr, pem_of, root_client

from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import (
    cert_info,
    is_self_signed,
    key_matches_cert,
    load_pem_bundle,
    load_private_key,
    verify_chain,
)

pytestmark = pytest.mark.lab

APP = "ncprd1"
CN = "%s.prod.privsec.ch" % APP
# the lab's nginx-* roles pin RSA 2048 keys, as production's do: CSRs for them are RSA
KIND = "rsa"


def issued_serials(lab):
    client = root_client(lab)
    status, data = client.request("LIST", "pki-prod/certs", expect=(200, 404))
    return set(((data or {}).get("data") or {}).get("keys") or [])


def spki(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_sign_csr_returns_a_verified_cert_for_the_csr_key(lab):
    key, csr = make_csr(CN, dns=[CN], kind=KIND)
    res = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="nginx-" + APP, csr=csr,
                                             common_name=CN, alt_names=[CN], ttl="48h"))
    assert not res["failed"], res["msg"]
    assert res["changed"] is True and res["operation"] == "sign" and res["path"] == "pki-prod/sign/nginx-" + APP
    assert "private_key" not in res
    assert res["vault_requests"] == 2  # the cert login + one sign
    leaf = x509.load_pem_x509_certificate(res["certificate"].encode())
    assert spki(leaf.public_key()) == spki(key.public_key())
    info = cert_info(leaf)
    assert res["serial"] == info["serial"] and res["fingerprint_sha256"] == info["fingerprint_sha256"]
    assert res["common_name"] == CN and CN in res["dns_names"]
    assert 1.99 < res["days_left"] <= 2.001  # ttl 48h
    assert res["not_after"].endswith("Z") and res["not_before"] < res["not_after"]
    # the serial is the one Vault recorded
    assert res["serial"] in issued_serials(lab)
    # chain: intermediate + root; fullchain = leaf + intermediate (what nginx serves)
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in res["ca_chain"]]
    assert len(chain) == 2 and is_self_signed(chain[-1]) and not is_self_signed(chain[0])
    full = load_pem_bundle(res["fullchain"])
    assert [cert_info(c)["serial"] for c in full] == [res["serial"], cert_info(chain[0])["serial"]]
    anchors = load_pem_bundle(pem_of(lab.info["paths"]["root_ca"]))
    ok, reason = verify_chain(leaf, [chain[0]], anchors)
    assert ok, reason


def test_issue_returns_a_key_matching_the_cert(lab):
    cn = "agent-%s.prod.privsec.ch" % APP
    res = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="agent-mtls-" + APP, common_name=cn, ttl="1h"))
    assert not res["failed"], res["msg"]
    assert res["operation"] == "issue" and res["vault_requests"] == 2
    key = load_private_key(res["private_key"])
    leaf = load_pem_bundle(res["certificate"])[0]
    assert key_matches_cert(key, leaf)
    assert res["private_key_type"] == "ec" and res["common_name"] == cn
    # the key never leaks through stderr/warnings
    assert res["private_key"].strip() not in res["_stderr"]


def test_check_mode_issues_nothing(lab):
    before = issued_serials(lab)
    _key, csr = make_csr(CN, dns=[CN], kind=KIND)
    res = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="nginx-" + APP, csr=csr), check=True)
    assert not res["failed"], res["msg"]
    assert res["changed"] is True and res["certificate"] is None and res["vault_requests"] == 0
    assert issued_serials(lab) == before


def test_unknown_role_is_not_found_naming_mount_and_role(lab):
    _key, csr = make_csr(CN)
    res = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="nginx-nope", csr=csr))
    assert res["failed"] and res["failure_class"] == "not_found"
    assert "nginx-nope" in res["msg"] and "pki-prod" in res["msg"]
    assert res["hint"] and "roles" in res["hint"]


def test_name_not_allowed_by_role_is_bad_input_with_vaults_message(lab):
    _key, csr = make_csr("evil.example.com", dns=["evil.example.com"], kind=KIND)
    res = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="nginx-" + APP, csr=csr))
    assert res["failed"] and res["failure_class"] == "bad_input"
    assert "not allowed by this role" in res["msg"] and "evil.example.com" in res["msg"]
    assert "nginx-%s" % APP in res["msg"]


def test_csr_with_a_key_type_the_role_refuses_is_bad_input(lab):
    _key, csr = make_csr(CN, kind="ec")
    res = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="nginx-" + APP, csr=csr))
    assert res["failed"] and res["failure_class"] == "bad_input"
    assert "requires keys of type rsa" in res["msg"] and "nginx-%s" % APP in res["msg"]


def test_unknown_mount_with_the_admin_is_permission_denied_naming_the_path(lab):
    """The admin's policy covers pki-prod only, so Vault says 403 before it looks for the mount."""
    _key, csr = make_csr(CN)
    res = run_module("pki_cert", admin_args(lab, mount="pki-nope", role="nginx-" + APP, csr=csr))
    assert res["failed"] and res["failure_class"] == "permission_denied"
    assert "pki-nope/sign/nginx-%s" % APP in res["msg"]


def test_unknown_mount_with_a_root_token_is_not_found(lab):
    _key, csr = make_csr(CN)
    args = admin_args(lab, mount="pki-nope", role="nginx-" + APP, csr=csr, auth_method="token", token=lab.root_token())
    res = run_module("pki_cert", args)
    assert res["failed"] and res["failure_class"] == "not_found"
    assert "pki-nope" in res["msg"] and res["path"] == "pki-nope/sign/nginx-" + APP


def test_garbage_csr_fails_before_any_request(lab):
    res = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="nginx-" + APP, csr="not a csr"))
    assert res["failed"] and res["failure_class"] == "bad_pem" and "vault_requests" not in res


def test_key_options_with_a_csr_are_refused(lab):
    _key, csr = make_csr(CN)
    res = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="nginx-" + APP, csr=csr, key_type="rsa"))
    assert res["failed"] and "mutually exclusive" in res["msg"]
