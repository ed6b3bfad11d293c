"""heartbeat.py's pure parts: when the watchdog is on, and what STATUS= says."""

from __future__ import annotations

import os

from relayd.heartbeat import status_line, watchdog_interval
from relayd.metrics import Depth
from relayd.types import RecipientState


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0
    assert watchdog_interval({**mine, "WATCHDOG_PID": "1"}) is None  # meant for another pid


def test_status_line() -> None:
    counts = dict.fromkeys(RecipientState, 0) | {
        RecipientState.QUEUED: 12,
        RecipientState.DEFERRED: 3,
        RecipientState.HELD: 1,
        RecipientState.DELIVERED: 900,
    }
    assert status_line(Depth(counts, 1000.0), 1300.0) == (
        "queue: 12 queued, 3 deferred, 1 held; oldest 5m"
    )
    assert status_line(Depth(dict.fromkeys(RecipientState, 0), None), 0) == (
        "queue: 0 queued, 0 deferred, 0 held"
    )
