"""Where a run keeps its lock and reports on the controller when the inventory does not say.

vault_rotate_lock_dir and vault_rotate_report_dir default to the controller
user's state folder (${XDG_STATE_HOME:-~/.local/state}/vault-rotate/<env>), which
any user with a home folder can write: root or not, a workstation or an
execution environment. A `~` in either is expanded for the controller user; a
user without a home folder gets an error that names the variables. These are
the catalog's real resolution (plugins/plugin_utils/_catalog.py), fed a getter
as the action plugins feed it the task's variables.
"""
import os

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _catalog


def values(**variables):
    """The globals of a host whose variables are ``variables`` (vault_rotate_ prefix added)."""
    names = dict(("vault_rotate_" + k, v) for k, v in variables.items())
    return _catalog.Values("vault_rotate", lambda name: names.get(name, _catalog.MISSING))


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home" / "operator"
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    return folder


def test_default_is_the_users_state_folder_per_environment(home):
    g = values(env="prod")
    assert g.glob("lock_dir") == str(home / ".local" / "state" / "vault-rotate" / "prod")
    assert g.glob("report_dir") == str(home / ".local" / "state" / "vault-rotate" / "prod" / "reports")
    # another environment, another folder (and so another lock)
    assert values(env="staging").glob("lock_dir") == str(home / ".local" / "state" / "vault-rotate" / "staging")
    # the report role's own variable falls back to the same default
    report = _catalog.settings("report", lambda name: {"vault_rotate_env": "prod"}.get(name, _catalog.MISSING))
    assert report["dir"] == str(home / ".local" / "state" / "vault-rotate" / "prod" / "reports")


def test_xdg_state_home_wins_when_absolute(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert values(env="prod").glob("lock_dir") == str(tmp_path / "state" / "vault-rotate" / "prod")
    # a relative XDG_STATE_HOME is invalid (XDG Base Directory spec): ignored
    monkeypatch.setenv("XDG_STATE_HOME", "state")
    assert values(env="prod").glob("lock_dir") == str(home / ".local" / "state" / "vault-rotate" / "prod")


def test_set_paths_win_and_tilde_is_expanded_for_the_controller_user(home):
    g = values(env="prod", lock_dir="/srv/vault-rotate/prod", report_dir="~/vault-rotate/reports")
    assert g.glob("lock_dir") == "/srv/vault-rotate/prod"
    assert g.glob("report_dir") == str(home / "vault-rotate" / "reports")
    get = {"vault_rotate_env": "prod", "report_dir": "~/r"}.get
    assert _catalog.settings("report", lambda name: get(name, _catalog.MISSING))["dir"] == str(home / "r")


def test_managed_host_paths_are_not_expanded_on_the_controller(home):
    # the admin files live on the vault_admin host, maybe another machine: its ~ is not ours
    assert values(admin_cert="~/admin.crt").glob("admin_cert") == "~/admin.crt"


def test_no_home_folder_is_an_error_that_names_the_variables(monkeypatch):
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    # no HOME and no passwd entry (an execution environment under a random UID without its entrypoint)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)
    with pytest.raises(RotateError) as err:
        values(env="prod").glob("lock_dir")
    assert "vault_rotate_lock_dir and vault_rotate_report_dir are not set" in err.value.message
    assert "no home folder" in err.value.message
    assert "absolute paths" in err.value.hint
    # set, they need no home
    assert values(env="prod", lock_dir="/srv/l").glob("lock_dir") == "/srv/l"
    # a ~ that cannot be expanded stays as it is: the run's variable check refuses it as not absolute
    assert values(env="prod", report_dir="~/r").glob("report_dir") == "~/r"
