"""The queue tool's operations (`relayd queue ...`): postqueue/postsuper, saying why mail waits.

Every operation is one or two store verbs, so it is safe while the daemon runs (the store
serialises writers; a running daemon notices changes within a second) and when it is stopped.
cli/main.py parses the arguments and prints; cli/queuefmt.py turns these results into text or JSON.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Protocol

from relayd.errors import StoreError
from relayd.policy.headers import header_block
from relayd.store.base import QueueAdmin, UpstreamHolds
from relayd.types import PENDING_STATES, MessageView, QueueId, RecipientState, UpstreamHold

SCAN_LIMIT = 10_000_000  # "every message": filters the store cannot apply read them all
CHANGES = ("retry", "hold", "release", "delete")


class QueueToolStore(QueueAdmin, UpstreamHolds, Protocol):
    """The queue tool's verbs, and the upstream pauses it shows and ends (`retry --all`)."""


@dataclass(frozen=True)
class Filters:
    """`queue list` filters; sender is a case-insensitive glob ("*@example.org")."""

    state: RecipientState | None = None
    upstream: str | None = None
    sender: str | None = None
    older_than: float | None = None  # seconds

    def keeps(self, view: MessageView, now: float) -> bool:
        if self.sender is not None and not fnmatch.fnmatch(
            view.mail_from.lower(), self.sender.lower()
        ):
            return False
        return self.older_than is None or view.received_at <= now - self.older_than


async def list_views(
    store: QueueAdmin, filters: Filters, now: float, limit: int
) -> list[MessageView]:
    """Messages matching `filters`, oldest first, at most `limit`."""
    client_side = filters.sender is not None or filters.older_than is not None
    views = await store.list_messages(
        state=filters.state,
        upstream=filters.upstream,
        limit=SCAN_LIMIT if client_side else limit,
    )
    return [view for view in views if filters.keeps(view, now)][:limit]


@dataclass(frozen=True)
class Detail:
    """`queue show`: the message, its header fields (None once the body was dropped after
    every recipient became final) and its upstream's pause, if any."""

    view: MessageView
    headers: list[tuple[str, str]] | None
    hold: UpstreamHold | None


def parse_headers(block: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of each header field, in order; undecodable bytes replaced."""
    fields: list[tuple[str, str]] = []
    for raw in block.decode("utf-8", "replace").splitlines():
        if raw[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {raw.strip()}")
        elif ":" in raw:
            name, _, value = raw.partition(":")
            fields.append((name.strip(), value.strip()))
    return fields


async def show(store: QueueToolStore, queue_id: QueueId) -> Detail | None:
    view = await store.show(queue_id)
    if view is None:
        return None
    headers: list[tuple[str, str]] | None
    try:
        headers = parse_headers(header_block(await store.load_body(queue_id)))
    except StoreError:
        headers = None  # finished: the body is gone, the record stays as history
    return Detail(view, headers, await store.upstream_hold(view.upstream))


@dataclass
class Summary:
    """`queue summary`: recipients per upstream and state, the oldest pending message, holds."""

    depth: dict[str, dict[RecipientState, int]] = field(default_factory=dict)
    oldest: MessageView | None = None
    holds: dict[str, UpstreamHold] = field(default_factory=dict)
    messages: int = 0

    def totals(self) -> dict[RecipientState, int]:
        totals = dict.fromkeys(RecipientState, 0)
        for states in self.depth.values():
            for state, count in states.items():
                totals[state] += count
        return totals


async def summary(store: QueueToolStore, upstreams: list[str]) -> Summary:
    result = Summary(depth={name: dict.fromkeys(RecipientState, 0) for name in upstreams})
    for view in await store.list_messages(limit=SCAN_LIMIT):
        result.messages += 1
        states = result.depth.setdefault(view.upstream, dict.fromkeys(RecipientState, 0))
        for rcpt in view.recipients:
            states[rcpt.state] += 1
        pending = any(r.state in PENDING_STATES for r in view.recipients)
        if pending and (result.oldest is None or view.received_at < result.oldest.received_at):
            result.oldest = view
    for name in result.depth:
        hold = await store.upstream_hold(name)
        if hold is not None:
            result.holds[name] = hold
    return result


async def change(
    store: QueueToolStore, action: str, queue_id: QueueId | None, now: float, upstreams: list[str]
) -> int:
    """retry/hold/release/delete one message (or, for retry, every pending one when
    `queue_id` is None); returns how many recipients (messages, for delete) changed."""
    if action == "retry":
        if queue_id is None:
            # An operator's retry also ends upstream pauses (auth failed, throttled).
            for name in upstreams:
                await store.release_upstream(name)
        return await store.retry_now(queue_id, now)
    assert queue_id is not None
    if action == "hold":
        return await store.hold_message(queue_id)
    if action == "release":
        return await store.release_message(queue_id, now)
    return int(await store.delete_message(queue_id))
