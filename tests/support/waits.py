"""Waiting in tests for something the code under test does in its own time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Return once `predicate()` (or what it returns, when that is awaitable) is true; an
    AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
