"""The run's owner name on the controller (plugin_utils/_run.py): never a failure for lack of a name."""
import os
import pwd

from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _run

NAME_VARS = ("LOGNAME", "USER", "LNAME", "USERNAME")


def test_current_user_is_the_login_name(monkeypatch):
    for var in NAME_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", "awx-runner")
    assert _run.current_user() == "awx-runner"


def test_current_user_without_env_and_passwd_entry_is_the_uid(monkeypatch):
    """An execution environment under a random UID: no USER, no passwd entry."""
    for var in NAME_VARS:
        monkeypatch.delenv(var, raising=False)

    def no_entry(uid):
        raise KeyError("getpwuid(): uid not found: %d" % uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert _run.current_user() == "uid %d" % os.getuid()


def test_the_lock_owner_names_the_uid_when_there_is_no_name(monkeypatch, tmp_path):
    for var in NAME_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    path = _run.lock_path(str(tmp_path), "lab")
    state = _run.acquire(path, "run-1", "lab")
    assert state["acquired"], state
    assert _run.holder(path)["owner"]["user"] == "uid %d" % os.getuid()
    _run.release(path, "run-1")
