"""_timing: the one duration parser, the one time parser, and bounded waiting."""
import datetime
import time

import pytest
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _timing as T
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError


@pytest.mark.parametrize("value,seconds", [
    (None, None), ("", None), (0, 0.0), (90, 90.0), ("3600", 3600.0), ("1h30m", 5400.0), ("1.5d", 129600.0),
    ("2w", 1209600.0), ("500ms", 0.5), ("1d2h", 93600.0), (" 1H ", 3600.0),
])
def test_parse_duration_every_form(value, seconds):
    assert T.parse_duration(value) == seconds


@pytest.mark.parametrize("bad", ["soon", "1 hour", "-1d", -5, True, "3x", "h"])
def test_parse_duration_names_the_bad_value(bad):
    with pytest.raises(RotateError) as info:
        T.parse_duration(bad)
    assert info.value.failure_class == "bad_input" and repr(bad) in info.value.message


def test_parse_time_iso_epoch_and_naive_all_utc():
    want = datetime.datetime(2026, 11, 25, 17, 50, tzinfo=datetime.timezone.utc)
    assert T.parse_time("2026-11-25T17:50:00Z") == want
    assert T.parse_time("2026-11-25T18:50:00+01:00") == want
    assert T.parse_time("2026-11-25T17:50:00") == want
    assert T.parse_time(want.timestamp()) == want and T.parse_time(str(want.timestamp())) == want
    with pytest.raises(ValueError):
        T.parse_time("yesterday")


def test_pauses_grow_and_are_capped():
    p = T.pauses(0.25, factor=2.0, cap=5.0)
    assert [next(p) for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_deadline_bounds_the_wait_and_can_be_extended():
    d = T.Deadline(0.2, 0.05)
    started = time.monotonic()
    waits = 0
    while d.wait():
        waits += 1
    assert waits >= 2 and 0.15 <= time.monotonic() - started < 1.0
    d.extend(0.1)
    assert d.wait() is True
    with pytest.raises(RotateError):
        T.Deadline(-1, 1)
