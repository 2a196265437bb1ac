# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time for every part of the collection, in one place: durations ("1h30m",
"2d", 3600), instants (ISO 8601 or epoch), and waiting with a bound and a
growing pause (readiness of a restarted server, a listener that takes the
new certificate, an agent that logs in again, a retried request).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re
import time

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

# Units of a duration: Go's (what Vault accepts) plus days and weeks.
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400,
                 "w": 604800}
_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|\u00b5s|ms|s|m|h|d|w)")
MAX_PAUSE = 5.0


def parse_duration(value):
    """Seconds (float) of a duration: 3600, "3600", "90m", "1h30m", "1.5d", "2w", "500ms".

    None and "" give None (unset). Anything else, negative numbers included,
    raises RotateError('bad_input') naming the value.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RotateError("bad_input", "not a duration: %r" % (value,))
    if isinstance(value, (int, float)):
        if value < 0:
            raise RotateError("bad_input", "duration must not be negative: %r" % (value,))
        return float(value)
    text = str(value).strip().lower()
    if re.match(r"^[0-9]+(\.[0-9]+)?$", text):
        return float(text)
    pos, total = 0, 0.0
    for part in _PART.finditer(text):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        pos = part.end()
    if pos == 0 or pos != len(text):
        raise RotateError("bad_input", "not a duration: %r" % (value,),
                          hint="use a number of seconds or units w/d/h/m/s (e.g. 90m, 1h30m, 2d)")
    return total


def parse_time(value):
    """An aware UTC datetime from ISO 8601 ('...Z' or an offset; naive = UTC), epoch seconds
    (number or numeric text) or a datetime. Raises ValueError when it is none of these."""
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc)
    text = str(value).strip()
    try:
        return datetime.datetime.fromtimestamp(float(text), datetime.timezone.utc)
    except ValueError:
        pass
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def pauses(first, factor=1.5, cap=MAX_PAUSE):
    """Growing pauses: first, first*factor, ... never above cap (nor below first)."""
    pause = first
    while True:
        yield min(pause, max(cap, first))
        pause *= factor


class Deadline(object):
    """A bound for waiting: ``wait()`` sleeps the next (growing) pause, or returns False when
    the bound has passed. ``extend(seconds)`` moves the bound, ``restart_pauses(first)``
    starts the pauses again from a shorter one (once a server has made progress)."""

    def __init__(self, wait_timeout, interval, cap=MAX_PAUSE, factor=1.5):
        if wait_timeout < 0 or interval <= 0:
            raise RotateError("bad_input", "wait_timeout must be >= 0 and interval > 0")
        self.start = time.monotonic()
        self.end = self.start + float(wait_timeout)
        self.interval = float(interval)
        self.cap = max(cap, self.interval)
        self.factor = factor
        self._pauses = pauses(self.interval, factor, self.cap)
        self.attempts = 0

    def elapsed(self):
        return round(time.monotonic() - self.start, 3)

    def extend(self, seconds):
        self.end = max(self.end, time.monotonic() + seconds)

    def restart_pauses(self, first):
        self._pauses = pauses(first, self.factor, self.cap)

    def wait(self):
        """Sleep before the next attempt; False when there is no time left for one."""
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(next(self._pauses), remaining))
        return True
