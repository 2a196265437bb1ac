"""pki_issuers_info against the real lab: pki-prod as the admin sees it, and a private PKI mount
with a root, two intermediates (a CA rollover) and an expired imported CA."""
import datetime
import secrets

import pytest
from helpers import run_module
from vault_api_helpers import admin_args, make_ca, pem_of, root_client

from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import cert_info, load_pem_bundle

pytestmark = pytest.mark.lab


def serials(pem):
    return [cert_info(c)["serial"] for c in load_pem_bundle(pem)]


def test_pki_prod_bundle_is_intermediate_and_root_each_once(lab):
    res = run_module("pki_issuers_info", admin_args(lab, mount="pki-prod"))
    assert not res["failed"], res["msg"]
    assert res["changed"] is False
    intermediate, root = load_pem_bundle(pem_of(lab.info["paths"]["ca_chain"]))
    want = [cert_info(intermediate)["serial"], cert_info(root)["serial"]]
    default = [i for i in res["issuers"] if i["is_default"]]
    assert len(default) == 1 and default[0]["serial"] == want[0]
    assert default[0]["issuer_id"] == res["default_issuer_id"] and default[0]["issuer_name"]
    assert all(i["valid"] and i["days_left"] > 0 for i in res["issuers"])
    assert serials(res["default_chain"]) == want
    assert sorted(serials(res["ca_bundle"])) == sorted(want)
    assert [c["serial"] for c in res["ca_bundle_certs"]] == serials(res["ca_bundle"])
    assert "BEGIN CERTIFICATE" not in repr(res["issuers"])


@pytest.fixture
def rollover_mount(lab):
    """A private PKI mount: root r1 (default none), intermediates i1 (default) and i2 signed by r1,
    and an expired CA imported without key. Removed after the test."""
    root = root_client(lab)
    mount = "pki-h3b-%s" % secrets.token_hex(3)
    root.write("sys/mounts/%s" % mount, {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
    made = {"mount": mount}
    try:
        r1 = root.write("%s/root/generate/internal" % mount, {"common_name": "H3B Root", "issuer_name": "r1",
                                                              "ttl": "8760h", "key_type": "ec"})["data"]
        made["r1"] = r1["certificate"]
        for name in ("i1", "i2"):
            csr = root.write("%s/intermediate/generate/internal" % mount,
                             {"common_name": "H3B Intermediate %s" % name, "key_type": "ec"})["data"]["csr"]
            signed = root.write("%s/root/sign-intermediate" % mount,
                                {"csr": csr, "common_name": "H3B Intermediate %s" % name, "ttl": "4380h",
                                 "issuer_ref": "r1"})["data"]["certificate"]
            imported = root.write("%s/intermediate/set-signed" % mount, {"certificate": signed})["data"]
            issuer_id = imported["imported_issuers"][0]
            root.write("%s/issuer/%s" % (mount, issuer_id), {"issuer_name": name})
            made[name] = signed
            made[name + "_id"] = issuer_id
        root.write("%s/config/issuers" % mount, {"default": made["i1_id"]})
        long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
        _key, expired = make_ca("H3B expired CA", days=30, not_before=long_ago)
        root.write("%s/issuers/import/cert" % mount, {"pem_bundle": expired})
        made["expired"] = expired
        yield made
    finally:
        root.delete("sys/mounts/%s" % mount)


def root_args(lab, **extra):
    return admin_args(lab, auth_method="token", token=lab.root_token(), **extra)


def test_rollover_bundle_holds_every_valid_issuer_and_the_root_once(lab, rollover_mount):
    m = rollover_mount
    res = run_module("pki_issuers_info", root_args(lab, mount=m["mount"]))
    assert not res["failed"], res["msg"]
    names = [i["issuer_name"] for i in res["issuers"]]
    assert names[0] == "i1" and sorted(names) == ["i1", "i2", "r1"]  # default first, expired left out
    bundle = serials(res["ca_bundle"])
    want = {serials(m[k])[0] for k in ("r1", "i1", "i2")}
    assert len(bundle) == 3 and set(bundle) == want  # r1 is parent of both: once
    assert serials(res["default_chain"]) == [serials(m["i1"])[0], serials(m["r1"])[0]]
    assert serials(m["expired"])[0] not in bundle


def test_valid_only_false_lists_the_expired_issuer_but_the_bundle_stays_valid(lab, rollover_mount):
    m = rollover_mount
    res = run_module("pki_issuers_info", root_args(lab, mount=m["mount"], valid_only=False))
    assert not res["failed"], res["msg"]
    expired = [i for i in res["issuers"] if not i["valid"]]
    assert len(expired) == 1 and expired[0]["days_left"] < 0
    assert expired[0]["serial"] == serials(m["expired"])[0]
    assert expired[0]["serial"] not in serials(res["ca_bundle"])


def test_unknown_mount_is_not_found_with_root_and_permission_denied_with_admin(lab):
    res = run_module("pki_issuers_info", root_args(lab, mount="pki-nope"))
    assert res["failed"] and res["failure_class"] == "not_found" and "pki-nope" in res["msg"]
    res = run_module("pki_issuers_info", admin_args(lab, mount="pki-nope"))
    assert res["failed"] and res["failure_class"] == "permission_denied" and "pki-nope/issuers" in res["msg"]
