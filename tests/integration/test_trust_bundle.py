"""trust_bundle run for real on temp folders: set semantics, atomic write, backup, restore, check/diff."""
import datetime
import grp
import os
import pwd
import stat

import pytest
from helpers import run_module
from pki_fixtures import PKI, key_pem, make_cert, new_key, pem

UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def old():
    return PKI("old")


@pytest.fixture(scope="module")
def new():
    return PKI("new")


def tb(args, **kw):
    return run_module("trust_bundle", args, **kw)


def ok(result):
    assert not result["failed"], result.get("msg")
    return result


def test_create_then_idempotent_in_any_order(tmp_path, old, new):
    path = str(tmp_path / "ca.pem")
    check = ok(tb({"path": path, "certificates": old.chain_pem}, check=True, diff=True))
    assert check["changed"] is True and not os.path.exists(path)
    assert check["diff"]["before"] == "" and "old root" in check["diff"]["after"]
    first = ok(tb({"path": path, "certificates": old.chain_pem}))
    assert first["changed"] is True and "backup_file" not in first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with open(path) as fh:
        assert fh.read() == old.chain_pem
    # same set: other order, as a list, duplicated, with junk and CRLF -> unchanged
    variants = [
        pem(old.root) + pem(old.intermediate),
        [pem(old.root), pem(old.intermediate), pem(old.root)],
        "# bundle\r\n" + old.chain_pem.replace("\n", "\r\n") + "\r\n\r\nsome comment\r\n",
    ]
    for variant in variants:
        again = ok(tb({"path": path, "certificates": variant}, diff=True))
        assert again["changed"] is False, variant
        assert again["diff"]["before"] == again["diff"]["after"]
    with open(path) as fh:
        assert fh.read() == old.chain_pem


def test_rollover_adds_and_restores(tmp_path, old, new):
    path = str(tmp_path / "current-ca-chain.pem")
    ok(tb({"path": path, "certificates": old.chain_pem}))
    before_bytes = open(path, "rb").read()
    both = ok(tb({"path": path, "certificates": [old.chain_pem, new.chain_pem]}, diff=True))
    assert both["changed"] is True
    assert both["backup_file"] == path + ".prev"
    assert [d["subject"] for d in both["added"]] == [new.intermediate.subject.rfc4514_string(),
                                                     new.root.subject.rfc4514_string()]
    assert both["removed"] == []
    assert len(both["after"]) == 4
    assert "BEGIN" not in repr(both)
    assert "new root" in both["diff"]["after"] and "new root" not in both["diff"]["before"]
    # the backup keeps the previous set, same mode
    assert open(path + ".prev", "rb").read() == before_bytes
    only_new = ok(tb({"path": path, "certificates": new.chain_pem}))
    assert len(only_new["removed"]) == 2
    # restore puts the previous file (old+new) back; twice is a no-op
    dry = ok(tb({"path": path, "state": "restored"}, check=True))
    assert dry["changed"] is True and len(dry["after"]) == 4
    assert len(ok(tb({"path": path, "certificates": new.chain_pem}))["after"]) == 2
    res = ok(tb({"path": path, "state": "restored"}, diff=True))
    assert res["changed"] is True and len(res["after"]) == 4
    assert ok(tb({"path": path, "state": "restored"}))["changed"] is False


def test_owner_group_mode(tmp_path, old):
    path = str(tmp_path / "ca.pem")
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    ok(tb({"path": path, "certificates": old.chain_pem, "owner": "nobody", "group": group, "mode": "0640"}))
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o640)
    # same content, other mode: fixed in place, changed
    res = ok(tb({"path": path, "certificates": old.chain_pem, "mode": "0644"}))
    assert res["changed"] is True and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not os.path.exists(path + ".prev")
    assert ok(tb({"path": path, "certificates": old.chain_pem, "mode": "0644"}))["changed"] is False


def test_unparsable_existing_file_is_replaced(tmp_path, old):
    path = tmp_path / "ca.pem"
    path.write_text("this is not a bundle\n")
    res = ok(tb({"path": str(path), "certificates": old.chain_pem}))
    assert res["changed"] is True and res["before_unparsable"]
    assert (tmp_path / "ca.pem.prev").read_text() == "this is not a bundle\n"


@pytest.mark.parametrize("bad", ["", "garbage", "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"])
def test_bad_input_touches_nothing(tmp_path, old, bad):
    path = tmp_path / "ca.pem"
    path.write_text(old.chain_pem)
    res = tb({"path": str(path), "certificates": bad})
    assert res["failed"] and res["failure_class"] in ("bad_pem", "bad_input")
    assert path.read_text() == old.chain_pem
    assert sorted(os.listdir(tmp_path)) == ["ca.pem"]


def test_private_key_is_refused(tmp_path):
    res = tb({"path": str(tmp_path / "ca.pem"), "certificates": key_pem(new_key())})
    assert res["failed"] and res["failure_class"] == "bad_pem"
    assert "private key" in res["msg"]
    assert os.listdir(tmp_path) == []


def test_expired_cert_is_written_with_warning(tmp_path):
    key = new_key()
    start = datetime.datetime.now(UTC) - datetime.timedelta(days=10)
    expired = make_cert("expired root", key, ca=True, not_before=start, days=1)
    res = ok(tb({"path": str(tmp_path / "ca.pem"), "certificates": pem(expired)}))
    assert res["changed"] and res["expired"][0]["subject"].startswith("CN=expired root")
    assert "expired at" in repr(res.get("warnings"))


def test_restore_without_backup_and_missing_folder(tmp_path, old):
    res = tb({"path": str(tmp_path / "ca.pem"), "state": "restored"})
    assert res["failed"] and res["failure_class"] == "missing_file"
    res = tb({"path": str(tmp_path / "nope" / "ca.pem"), "certificates": old.chain_pem})
    assert res["failed"] and res["failure_class"] == "missing_file"
