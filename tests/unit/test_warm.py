"""_warm: OpenSSL warmed once in ansible-playbook's main process, never in a worker or another tool."""
import os
import subprocess
import sys

import pytest
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _warm

TQM = "ansible.executor.task_queue_manager"


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not warmed up yet, inside a playbook run (the task queue manager loaded)."""
    monkeypatch.setattr(_warm, "STATE", {})
    monkeypatch.setitem(sys.modules, TQM, sys.modules.get(TQM) or object())
    monkeypatch.delenv("VAULT_ROTATE_WARM_OPENSSL", raising=False)


def test_the_calls_run_on_this_cryptography():
    # the warm-up swallows its errors in a run; here an API change must show
    _warm._calls()


def test_warms_once_in_the_main_process_of_a_playbook_run(fresh):
    assert _warm.wanted()
    assert _warm.warm() is True
    assert _warm.STATE == {"tried": True, "done": True}
    assert _warm.warm() is False  # once per process


def test_not_outside_a_playbook_run(fresh, monkeypatch):
    # ansible-doc, ansible-test's import test, a plain import: no task queue manager
    monkeypatch.delitem(sys.modules, TQM)
    assert not _warm.wanted()
    assert _warm.warm() is False
    assert _warm.STATE == {}


@pytest.mark.parametrize("value", ["0", "false", "No"])
def test_turned_off(fresh, monkeypatch, value):
    monkeypatch.setenv("VAULT_ROTATE_WARM_OPENSSL", value)
    assert _warm.warm() is False
    assert _warm.STATE == {}


CHILD = """
import multiprocessing, sys
sys.modules["%s"] = object()  # inside a playbook run
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _warm


def child(queue):
    queue.put((_warm.wanted(), _warm.warm()))


if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    print(queue.get(timeout=30), _warm.wanted())
    proc.join(30)
""" % TQM


def test_never_in_a_forked_worker(tmp_path):
    # Ansible's workers are multiprocessing processes forked from the main process (a fresh
    # interpreter here: pytest's own process has threads, and forking it is not safe)
    script = tmp_path / "fork_child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop("VAULT_ROTATE_WARM_OPENSSL", None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    # the child neither wants nor warms; its parent, the main process, would
    assert out.stdout.strip() == "(False, False) True"


def test_a_failing_warm_up_does_not_fail_the_run(fresh, monkeypatch):
    def broken():
        raise ValueError("an OpenSSL without P-256")

    monkeypatch.setattr(_warm, "_calls", broken)
    assert _warm.warm() is False
    assert _warm.STATE == {"tried": True}
    assert _warm.warm() is False  # not tried again
