"""The only module that reads the system time; everything else is given `now`.

Times are float seconds since the epoch (UTC) throughout relayd.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch."""

    def monotonic(self) -> float:
        """A clock for measuring intervals."""

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds` of this clock's time."""


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
