"""Unit tests of plugins/module_utils/_health.py with a fake client (no lab).

The lab tests of vault_health prove the real restarts and unseals; the fake
replays a sequence of sys/health answers to check the loop's bookkeeping.
"""
import time

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _health
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

READY = (200, {"initialized": True, "sealed": False, "standby": False, "version": "2.7.2", "cluster_name": "c"})
SEALED = (503, {"initialized": True, "sealed": True, "standby": False, "version": "2.7.2"})
STANDBY = (429, {"initialized": True, "sealed": False, "standby": True, "version": "2.7.2"})


class FakeHealthClient:
    def __init__(self, answers):
        self.answers = list(answers)
        self.unsealed_with = []

    def health(self):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, RotateError):
            raise answer
        return answer

    def seal_status(self):
        return {"t": 1, "progress": 0}

    def unseal(self, key):
        self.unsealed_with.append(key)
        self.answers = [READY]
        return {"sealed": False}


def test_ready_at_once_with_ready_at_epoch():
    before = time.time()
    result = _health.wait_ready(FakeHealthClient([READY]))
    assert result["ready"] is True and result["observed"] == ["ready"] and result["attempts"] == 1
    assert result["failure_class"] is None and result["msg"] == "Vault 2.7.2 is ready (HTTP 200)"
    assert before <= result["ready_at"] <= time.time()


def test_waits_through_reset_and_standby():
    reset = RotateError("reset", "connection reset", "wait")
    result = _health.wait_ready(FakeHealthClient([reset, STANDBY, STANDBY, READY]), wait_timeout=5, interval=0.01)
    assert result["ready"] is True and result["observed"] == ["reset", "standby", "ready"]
    assert result["attempts"] == 4


def test_sealed_with_keys_unseals_once():
    client = FakeHealthClient([SEALED])
    result = _health.wait_ready(client, unseal_keys=["k1", ""], interval=0.01)
    assert client.unsealed_with == ["k1"]
    assert result["ready"] and result["unsealed"] and result["changed"]
    assert result["observed"] == ["sealed", "unsealed", "ready"] and result["msg"].endswith("unsealed by this task")


def test_check_mode_with_keys_returns_would_unseal():
    client = FakeHealthClient([SEALED])
    result = _health.wait_ready(client, unseal_keys=["k1"], check_mode=True)
    assert client.unsealed_with == [] and result["ready"] is False and result["changed"] is True
    assert result["failure_class"] == "sealed" and "check mode" in result["msg"] and "ready_at" not in result


def test_not_ready_raises_with_the_result_fields_in_details():
    with pytest.raises(RotateError) as caught:
        _health.wait_ready(FakeHealthClient([SEALED]), wait_timeout=0.05, interval=0.01)
    err = caught.value
    assert err.failure_class == "sealed" and "still after" in err.message
    assert err.details["sealed"] is True and err.details["seal_threshold"] == 1 and err.details["ready"] is False
    assert err.details["observed"] == ["sealed"] and err.details["attempts"] > 1
    assert "cluster_name" in err.details and err.details["cluster_name"] is None  # null fields stay


def test_untransient_error_stops_at_once_and_bad_arguments_are_bad_input():
    alert = RotateError("tls_alert", "unknown ca", "check the CA")
    with pytest.raises(RotateError) as caught:
        _health.wait_ready(FakeHealthClient([alert]), wait_timeout=5)
    assert caught.value.failure_class == "tls_alert" and caught.value.details["attempts"] == 1
    with pytest.raises(RotateError) as caught:
        _health.wait_ready(FakeHealthClient([READY]), interval=0)
    assert caught.value.failure_class == "bad_input"
