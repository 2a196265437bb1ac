"""report_files: folder + several files in one call, atomic, idempotent, check mode (real temp folders)."""
import os
import stat

import pytest

from ansible_collections.privsec.vault_rotate.plugins.modules import report_files as R
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError


class FakeModule:
    def __init__(self, check_mode=False, **params):
        self.check_mode = check_mode
        self.params = {"mode": "0640", "folder_mode": "0750"}
        self.params.update(params)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_creates_the_folder_and_writes_every_file(tmp_path):
    folder = tmp_path / "reports" / "lab"
    res = R.run(FakeModule(path=str(folder), files={"lab-1.json": "{}\n", "latest.json": "{}\n", "latest.md": "# r"}))
    assert res["changed"] is True
    assert sorted(os.path.basename(p) for p in res["written"]) == ["lab-1.json", "latest.json", "latest.md"]
    assert (folder / "latest.md").read_text() == "# r" and (folder / "lab-1.json").read_text() == "{}\n"
    assert mode_of(folder) == 0o750 and mode_of(folder / "latest.json") == 0o640
    assert [n for n in os.listdir(folder) if n.startswith(".")] == [], "temp files left behind"


def test_same_content_again_changes_nothing_and_new_content_replaces(tmp_path):
    files = {"latest.json": "{\"a\": 1}\n"}
    R.run(FakeModule(path=str(tmp_path / "r"), files=files))
    again = R.run(FakeModule(path=str(tmp_path / "r"), files=files))
    assert again["changed"] is False and again["written"] == []
    other = R.run(FakeModule(path=str(tmp_path / "r"), files={"latest.json": "{\"a\": 2}\n"}))
    assert other["changed"] is True
    assert (tmp_path / "r" / "latest.json").read_text() == "{\"a\": 2}\n"
    assert not (tmp_path / "r" / "latest.json.prev").exists(), "reports keep no backup"


def test_check_mode_writes_nothing(tmp_path):
    res = R.run(FakeModule(check_mode=True, path=str(tmp_path / "r"), files={"latest.md": "x"}))
    assert res["changed"] is True and res["written"] == [str(tmp_path / "r" / "latest.md")]
    assert not (tmp_path / "r").exists()


def test_a_name_with_a_folder_is_refused(tmp_path):
    with pytest.raises(RotateError) as err:
        R.run(FakeModule(path=str(tmp_path), files={"../escape.json": "x"}))
    assert err.value.failure_class == "bad_input"
