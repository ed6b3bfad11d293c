"""Why a lane sends nothing now: the reason, until when, and the log event; pure.

The texts are what `relayd queue show` prints on every waiting message.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.policy.windows import SendWindow, is_open, next_open
from relayd.types import UpstreamHold
from relayd.units import format_iso, format_iso_minutes

MAX_SLEEP = 60.0  # re-check state at least this often (holds released by the queue tool)


@dataclass(frozen=True)
class Wait:
    """Why a lane sends nothing now, until when (None: until further notice), its log event."""

    until: float | None
    reason: str
    event: str

    def seconds(self, now: float) -> float:
        return MAX_SLEEP if self.until is None else self.until - now


UNKNOWN = Wait(None, "", "")  # what the store says before a lane has said anything


def hold_wait(hold: UpstreamHold) -> Wait:
    if hold.until is None:
        return Wait(None, f"upstream paused: {hold.reason}", "upstream_paused")
    return Wait(hold.until, f"upstream throttled until {format_iso(hold.until)}", "upstream_paused")


def window_wait(window: SendWindow, now: float) -> Wait | None:
    """The wait for a closed window (its next opening in its own time zone), None if open."""
    if is_open(window, now):
        return None
    opens = next_open(window, now)
    if opens is None:
        return Wait(None, "window closed (it opens on no day within a year)", "window_closed")
    local = format_iso_minutes(opens, window.zone)
    return Wait(opens, f"window closed until {local}", "window_closed")
