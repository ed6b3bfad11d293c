"""A fake clock, a recording NoticeSink and a QueueStats store, shared by the notice,
schedule, heartbeat, disk-watch and OAuth2 tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from relayd.errors import StoreError
from relayd.types import QueueDepth, RecipientState

T0 = 1_704_189_600.0  # 2024-01-02 10:00 UTC: far from the real time APScheduler keeps


@dataclass
class Sink:
    """A NoticeSink that keeps what it is given (or fails when told to)."""

    sent: list[tuple[str, str, float]] = field(default_factory=list)
    failing: bool = False

    async def enqueue_notice(self, subject: str, body: str, now: float) -> None:
        if self.failing:
            raise OSError("queue store unavailable")
        self.sent.append((subject, body, now))


@dataclass
class FakeClock:
    """A clock that moves only when a test moves it (or something sleeps on it)."""

    at: float = T0

    def now(self) -> float:
        return self.at

    def monotonic(self) -> float:
        return self.at

    async def sleep(self, seconds: float) -> None:
        self.at += seconds
        await asyncio.sleep(0)  # a sleep still lets other tasks run


@dataclass
class QueueStore:
    """The QueueStats role (store/base.py): `counts_` and the `oldest` pending arrival (or
    `error`)."""

    counts_: dict[RecipientState, int] = field(
        default_factory=lambda: dict.fromkeys(RecipientState, 0)
    )
    oldest: float | None = None
    error: StoreError | None = None

    async def counts(self) -> dict[RecipientState, int]:
        if self.error is not None:
            raise self.error
        return dict(self.counts_)

    async def depth(self) -> QueueDepth:
        return QueueDepth(await self.counts(), self.oldest)
