"""Unit tests of plugins/module_utils/_tls.py's retry loop (no lab: a closed local port)."""
import socket

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _tls
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_expectation_problem_compares_normalised_serial_and_fingerprint():
    served = {"serial": "3a:1f:00", "fingerprint_sha256": "ab:cd"}
    assert _tls._expectation_problem(served, "3A1F00", None) is None
    assert _tls._expectation_problem(served, None, "AB:CD") is None
    assert _tls._expectation_problem(served, "3a-1f-01", None) == "serves serial 3a:1f:00, expected 3a:1f:01"
    assert "serves fingerprint ab:cd, expected ab:ce" == _tls._expectation_problem(served, None, "abce")


def test_probe_until_retries_until_the_deadline_and_folds_the_outcomes():
    result = _tls.probe_until("127.0.0.1", closed_port(), server_name="x.example", context=_tls.make_context(),
                              timeout=1, wait_timeout=0.3, interval=0.05)
    assert result["ok"] is False and result["failure_class"] == "refused"
    assert result["attempts"] > 1 and result["observed"] == ["refused"] and result["elapsed"] >= 0.3
    assert result["target"].startswith("127.0.0.1:")


def test_probe_until_first_pause_retries_soon_then_slows_down():
    """After a reload the new cert is served milliseconds later: the first retries come soon."""
    port = closed_port()
    slow = _tls.probe_until("127.0.0.1", port, context=_tls.make_context(), timeout=1, wait_timeout=0.4, interval=1)
    soon = _tls.probe_until("127.0.0.1", port, context=_tls.make_context(), timeout=1, wait_timeout=0.4, interval=1,
                            first_pause=0.05)
    assert slow["attempts"] == 2  # the first probe, then one after the whole (cut) pause
    assert 4 <= soon["attempts"] <= 7  # 0.05, 0.075, 0.11, 0.17 s ... growing
    assert soon["observed"] == ["refused"] and soon["elapsed"] >= 0.4


def test_probe_until_without_wait_probes_once():
    result = _tls.probe_until("127.0.0.1", closed_port(), context=_tls.make_context(), timeout=1)
    assert result["attempts"] == 1 and result["observed"] == ["refused"]
    assert all(k in result for k in ("target", "verify_message", "errno", "phase"))


@pytest.mark.parametrize("kw", [dict(timeout=0), dict(wait_timeout=-1), dict(interval=0)])
def test_probe_until_bad_arguments_are_bad_input(kw):
    with pytest.raises(RotateError) as caught:
        _tls.probe_until("127.0.0.1", 1, **kw)
    assert caught.value.failure_class == "bad_input"
