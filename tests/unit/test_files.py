"""Atomic group install, backups and restore on real temp folders (tmpfs for disk full / read-only)."""
import errno
import os
import stat
import subprocess

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _files as F
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(folder):
    """{name: (bytes, mode, uid, gid)} of every file in folder (incl. hidden temp files)."""
    result = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        st = os.stat(path)
        with open(path, "rb") as fh:
            result[name] = (fh.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return result


@pytest.fixture
def pair(tmp_path):
    key, crt = tmp_path / "server.key", tmp_path / "server.crt"
    F.install_set([(str(key), b"KEY-1\n", None, None, "0600"), (str(crt), b"CRT-1\n", None, None, "0644")])
    return key, crt


def test_new_files_get_modes_and_no_backup(tmp_path):
    key, crt = tmp_path / "a.key", tmp_path / "a.crt"
    backups = F.install_set([(str(key), b"k", None, None, "0600"), (str(crt), "c", None, None, 0o644)])
    assert backups == []
    assert key.read_bytes() == b"k" and crt.read_text() == "c"
    assert mode_of(key) == 0o600 and mode_of(crt) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["a.crt", "a.key"]


def test_default_mode_for_new_file_is_0600(tmp_path):
    F.install_set([(str(tmp_path / "x"), b"x", None, None, None)])
    assert mode_of(tmp_path / "x") == 0o600


def test_replace_keeps_prev_generation(pair, tmp_path):
    key, crt = pair
    backups = F.install_set([(str(key), b"KEY-2\n", None, None, "0600"), (str(crt), b"CRT-2\n", None, None, "0644")])
    assert backups == [str(key) + ".prev", str(crt) + ".prev"]
    assert key.read_bytes() == b"KEY-2\n"
    assert (tmp_path / "server.key.prev").read_bytes() == b"KEY-1\n"
    assert mode_of(tmp_path / "server.key.prev") == 0o600
    assert mode_of(tmp_path / "server.crt.prev") == 0o644
    assert sorted(os.listdir(tmp_path)) == ["server.crt", "server.crt.prev", "server.key", "server.key.prev"]


def test_mode_none_keeps_existing_mode(pair):
    key, _crt = pair
    os.chmod(key, 0o640)
    F.install_set([(str(key), b"KEY-2", None, None, None)])
    assert mode_of(key) == 0o640


def test_owner_and_group_by_name_and_id(tmp_path):
    import grp
    import pwd
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    path = tmp_path / "agent.key"
    F.install_set([(str(path), b"k", "nobody", group, "0600")])
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    # second generation by id; the backup keeps the old owner (same inode)
    F.install_set([(str(path), b"k2", 0, 0, "0600")])
    assert os.stat(path).st_uid == 0
    assert os.stat(str(path) + ".prev").st_uid == nobody.pw_uid


def test_owner_kept_when_not_given(tmp_path):
    path = tmp_path / "f"
    F.install_set([(str(path), b"1", "nobody", None, "0644")])
    F.install_set([(str(path), b"2", None, None, None)])
    assert os.stat(path).st_uid == F.resolve_uid("nobody")


def test_backup_false(pair, tmp_path):
    key, crt = pair
    assert F.install_set([(str(key), b"KEY-2", None, None, "0600")], backup=False) == []
    assert not (tmp_path / "server.key.prev").exists()
    assert sorted(os.listdir(tmp_path)) == ["server.crt", "server.key"]


def test_restore_set_puts_prev_back_and_is_idempotent(pair, tmp_path):
    key, crt = pair
    F.install_set([(str(key), b"KEY-2", None, None, "0600"), (str(crt), b"CRT-2", None, None, "0644")])
    assert F.restore_set([str(key), str(crt)], check_mode=True) == [str(key), str(crt)]
    assert key.read_bytes() == b"KEY-2"
    assert F.restore_set([str(key), str(crt)]) == [str(key), str(crt)]
    assert key.read_bytes() == b"KEY-1\n" and crt.read_bytes() == b"CRT-1\n"
    assert mode_of(key) == 0o600
    assert (tmp_path / "server.key.prev").exists()
    assert F.restore_set([str(key), str(crt)]) == []
    # a later install after a restore still leaves a clean folder
    F.install_set([(str(key), b"KEY-3", None, None, "0600")])
    assert (tmp_path / "server.key.prev").read_bytes() == b"KEY-1\n"
    assert sorted(os.listdir(tmp_path)) == ["server.crt", "server.crt.prev", "server.key", "server.key.prev"]


def test_restorable_lists_missing(pair, tmp_path):
    key, crt = pair
    F.install_set([(str(key), b"KEY-2", None, None, "0600")])
    assert F.restorable([str(key), str(crt)]) == ([str(key)], [str(crt)])
    assert F.restore_set([str(key), str(crt)]) == [str(key)]
    assert crt.read_bytes() == b"CRT-1\n"


def test_missing_folder(tmp_path):
    with pytest.raises(RotateError) as err:
        F.install_set([(str(tmp_path / "nope" / "x.key"), b"k", None, None, "0600")])
    assert err.value.failure_class == "missing_file"
    assert str(tmp_path / "nope") in err.value.message


def test_unknown_owner_and_bad_mode(tmp_path):
    with pytest.raises(RotateError) as err:
        F.install_set([(str(tmp_path / "x"), b"k", "no-such-user-h4", None, "0600")])
    assert err.value.failure_class == "bad_input"
    with pytest.raises(RotateError):
        F.install_set([(str(tmp_path / "x"), b"k", None, None, "rw-r--r--")])
    assert os.listdir(tmp_path) == []


def test_duplicate_path_refused(tmp_path):
    with pytest.raises(RotateError):
        F.install_set([(str(tmp_path / "x"), b"1", None, None, None), (str(tmp_path / "x"), b"2", None, None, None)])


def test_fake_enospc_on_second_file_leaves_everything_intact(pair, tmp_path, monkeypatch):
    key, crt = pair
    before = snapshot(tmp_path)
    real = F._write_all
    calls = []

    def failing(fd, data):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(F, "_write_all", failing)
    with pytest.raises(RotateError) as err:
        F.install_set([(str(key), b"KEY-2", None, None, "0600"), (str(crt), b"CRT-2", None, None, "0644")])
    assert "no space left" in err.value.message
    assert err.value.failure_class == "write_failed"
    assert err.value.details["path"] == str(crt)
    assert snapshot(tmp_path) == before


def test_rename_failure_midway_puts_first_file_back(pair, tmp_path, monkeypatch):
    key, crt = pair
    before = snapshot(tmp_path)
    real = F._replace

    def failing(src, dst):
        if dst == str(crt):
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(F, "_replace", failing)
    with pytest.raises(RotateError):
        F.install_set([(str(key), b"KEY-2", None, None, "0600"), (str(crt), b"CRT-2", None, None, "0644")])
    assert snapshot(tmp_path) == before


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % proc.stderr.decode().strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_disk_full(tiny_tmpfs):
    key, crt = tiny_tmpfs / "server.key", tiny_tmpfs / "server.crt"
    F.install_set([(str(key), b"KEY-1", None, None, "0600"), (str(crt), b"CRT-1", None, None, "0644")])
    before = snapshot(tiny_tmpfs)
    with pytest.raises(RotateError) as err:
        F.install_set([(str(key), b"K" * 1024, None, None, "0600"), (str(crt), b"C" * 200 * 1024, None, None, "0644")])
    assert "no space left" in err.value.message
    assert "df -h" in err.value.hint
    assert snapshot(tiny_tmpfs) == before


def test_real_read_only_filesystem(tiny_tmpfs):
    key = tiny_tmpfs / "server.key"
    F.install_set([(str(key), b"KEY-1", None, None, "0600")])
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    try:
        with pytest.raises(RotateError) as err:
            F.install_set([(str(key), b"KEY-2", None, None, "0600")])
        assert "read-only" in err.value.message
        assert err.value.failure_class == "write_failed"
        assert key.read_bytes() == b"KEY-1"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_tmpfs)], check=True)


def test_ensure_attributes(tmp_path):
    path = tmp_path / "f"
    F.install_set([(str(path), b"x", None, None, "0644")])
    assert not F.attributes_differ(str(path), mode="0644")
    assert F.ensure_attributes(str(path), mode="0600", check_mode=True)
    assert mode_of(path) == 0o644
    assert F.ensure_attributes(str(path), mode="0600")
    assert mode_of(path) == 0o600
    assert not F.ensure_attributes(str(path), mode="0600")


def test_parse_mode():
    assert F.parse_mode("0600") == 0o600
    assert F.parse_mode("600") == 0o600
    assert F.parse_mode(0o644) == 0o644
    assert F.parse_mode(None, 0o600) == 0o600
