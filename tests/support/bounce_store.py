"""An in-memory BounceStore that records every call, for the poller's tests.

A double of the narrow protocol relayd.bounces needs, until the real store implements it
(then these tests can run against the store instead, and this double goes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relayd.dsn_parse import ParsedDsn


@dataclass
class MemoryBounceStore:
    """`known` maps a stored message's Message-ID to its queue id (as the store's rows do)."""

    known: dict[str, str] = field(default_factory=dict)
    states: dict[str, tuple[int, int]] = field(default_factory=dict)
    saves: list[tuple[str, int, int]] = field(default_factory=list)
    matches: list[ParsedDsn] = field(default_factory=list)
    bounced: dict[str, set[str]] = field(default_factory=dict)
    forwarded: list[tuple[bytes, str, float]] = field(default_factory=list)

    async def imap_state(self, account: str) -> tuple[int, int] | None:
        return self.states.get(account)

    async def save_imap_state(self, account: str, uidvalidity: int, last_uid: int) -> None:
        self.saves.append((account, uidvalidity, last_uid))
        self.states[account] = (uidvalidity, last_uid)

    async def match_bounce(self, parsed: ParsedDsn, now: float) -> str | None:
        self.matches.append(parsed)
        queue_id = parsed.queue_id
        if queue_id not in self.known.values():
            queue_id = self.known.get(parsed.original_message_id or "")
        if queue_id is None:
            return None
        if parsed.failed:  # a delay warning marks nothing
            self.bounced.setdefault(queue_id, set()).update(
                r.final_recipient for r in parsed.failed
            )
        return queue_id

    async def forward_report(self, raw: bytes, queue_id: str, now: float) -> None:
        self.forwarded.append((raw, queue_id, now))
