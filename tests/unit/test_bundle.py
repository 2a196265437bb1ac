"""Unit tests of plugins/module_utils/_bundle.py on real temp files (no lab)."""
import datetime

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _bundle
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from pki_fixtures import PKI, make_cert, now, pem


@pytest.fixture
def pkis():
    return PKI("old"), PKI("new")


def test_ensure_bundle_writes_then_keeps_the_same_set_in_another_order(tmp_path, pkis):
    old, new = pkis
    path = str(tmp_path / "ca.pem")
    result = _bundle.ensure_bundle(path, old.chain_pem + new.chain_pem)
    assert result["changed"] is True and len(result["added"]) == 4 and result["removed"] == []
    assert "backup_file" not in result  # nothing to back up on the first write
    again = _bundle.ensure_bundle(path, [pem(new.root), pem(new.intermediate), old.chain_pem])
    assert again["changed"] is False and again["after"] == again["before"] and again["added"] == []


def test_ensure_bundle_replaces_with_a_backup_and_restore_puts_it_back(tmp_path, pkis):
    old, new = pkis
    path = str(tmp_path / "ca.pem")
    _bundle.ensure_bundle(path, old.chain_pem)
    planned = _bundle.ensure_bundle(path, new.chain_pem, check_mode=True)
    assert planned["changed"] is True and (tmp_path / "ca.pem").read_text() == old.chain_pem
    result = _bundle.ensure_bundle(path, new.chain_pem)
    assert result["backup_file"] == path + ".prev" and len(result["removed"]) == 2
    restored = _bundle.restore_bundle(path)
    assert restored["changed"] is True
    assert [c["serial"] for c in restored["after"]] == [c["serial"] for c in result["before"]]


def test_expired_certificate_is_a_warning(tmp_path, pkis):
    old, _new = pkis
    expired = make_cert("gone", old.root_key, ca=True, not_before=now() - datetime.timedelta(days=20), days=10)
    warnings = []
    result = _bundle.ensure_bundle(str(tmp_path / "ca.pem"), pem(expired) + old.chain_pem, warn=warnings.append)
    assert len(result["expired"]) == 1 and len(warnings) == 1 and "expired at" in warnings[0]


def test_unparsable_old_file_is_reported_and_replaced(tmp_path, pkis):
    old, _new = pkis
    path = tmp_path / "ca.pem"
    path.write_text("garbage\n")
    result = _bundle.ensure_bundle(str(path), old.chain_pem)
    assert result["changed"] is True and result["before_unparsable"] and result["before"] == []


def test_errors(tmp_path):
    with pytest.raises(RotateError) as caught:
        _bundle.ensure_bundle(str(tmp_path / "ca.pem"), [])
    assert caught.value.failure_class == "bad_input"
    with pytest.raises(RotateError) as caught:
        _bundle.restore_bundle(str(tmp_path / "ca.pem"))
    assert caught.value.failure_class == "missing_file"


def test_diff_lines_sorted_by_subject_then_serial():
    described = [{"subject": "CN=b", "serial": "02", "not_after": "x"}, {"subject": "CN=a", "serial": "01", "not_after": "y"}]
    assert _bundle.diff_lines(described) == "CN=a  serial=01  not_after=y\nCN=b  serial=02  not_after=x\n"
