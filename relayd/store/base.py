"""The store contract: the queue, the rate ledger and upstream holds, in domain verbs.

Every method is one transaction. Every time input is passed in (`now`), so each
backend implements the same semantics and `tests/contract/` runs against all of them.
Callers see `StoreError` subclasses only, never a driver's exception.

The verbs are grouped in roles (MessageIntake, DeliveryQueue, SendLedger, ...): a consumer
annotates its store with the roles it uses, so what each part of relayd may do to the queue
reads from its signature, and a test double implements only that. `Store` is their union.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from relayd.dsn.parse import ParsedDsn
from relayd.policy.limits import Reservation
from relayd.types import (
    Ceiling,
    Lease,
    MessageView,
    NewMessage,
    QueueDepth,
    QueueId,
    RcptDsn,
    RecipientOutcome,
    RecipientState,
    UpstreamHold,
)


@dataclass(frozen=True)
class ReportRecipient:
    """One recipient as a delivery report needs it: state, last reply, DSN parameters."""

    address: str
    state: RecipientState
    reply: str | None
    dsn: RcptDsn


@dataclass(frozen=True)
class ReportInfo:
    """What a DSN about a stored message needs (report_info); the body is load_body's."""

    queue_id: QueueId
    upstream: str
    mail_from: str
    message_id: str
    received_at: float
    mail_options: tuple[str, ...]
    delay_warned: bool
    recipients: tuple[ReportRecipient, ...]


@dataclass(frozen=True)
class SendSlot:
    """reserve_send's answer: a reservation, or when the limits allow the send and why not now.

    Reserved: `reservation` is the ledger row (for finish_send), `at` is now, `reason` None.
    Refused: `reservation` is None, `at` is the earliest permitted time, and `reason` names the
    binding constraint as limits.describe_wait does ("rate limit 200/hour", "min_interval 20s").
    """

    reservation: int | None
    at: float
    reason: str | None = None


# --- roles: each consumer declares the ones it uses (bounces/poller.py's BounceStore is the
# model); `Store` is their union, what every backend implements ----------------------------


class MessageIntake(Protocol):
    """Taking mail in: intake, sendmail, send-test, and relayd's own reports and notices."""

    async def enqueue(self, message: NewMessage, *, alone: bool = False) -> QueueId:
        """Store a message and its recipients (state `queued`, due at `received_at`).

        Durable when it returns: intake answers 250 only after this. Concurrent calls
        share commits (group commit). alone=True says no other call of this process could
        share this one's commit (intake: the only session the process serves), so a backend may
        commit it at once on the caller's thread. Raises StoreUnavailable when it cannot
        commit.
        """


class MessageBodies(Protocol):
    """The stored bytes; part of every role that reads them (delivery, reports, queue tool)."""

    async def load_body(self, queue_id: QueueId) -> bytes:
        """The raw message bytes (read on demand: queued bodies are not kept in memory)."""


class DeliveryQueue(MessageBodies, Protocol):
    """The dispatcher's side of the queue: lease due mail, send it, record what happened."""

    async def lease_due(
        self, upstream: str, now: float, limit: int, lease_for: float, worker: str
    ) -> list[Lease]:
        """Claim up to `limit` messages of `upstream` with recipients due at `now`.

        Oldest due first. A message whose lease has expired is claimable again; the
        lease covers only the recipients that were due, each with the RFC 3461 parameters
        enqueue stored for it (`Recipient.dsn`).
        """

    async def record_outcome(
        self, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float
    ) -> None:
        """Record one attempt's per-recipient results and end the lease.

        Each outcome's attempt counts (attempts + 1). Raises LeaseLost if the lease is no
        longer this one (fencing): nothing is written then.
        """

    async def renew_lease(self, lease: Lease, now: float, lease_for: float) -> None:
        """Extend the lease to at least `now + lease_for` while its message is being sent;
        raise LeaseLost when it is no longer this one (another worker or node has it)."""

    async def release(self, lease: Lease, not_before: float, reason: str) -> None:
        """End a lease without an attempt: the recipients wait until `not_before` for `reason`.

        Release only ever delays: a recipient due later than `not_before` keeps its due time,
        so a `not_before` at or before the message's arrival puts it back in its place in line.
        """

    async def next_due(self, upstream: str, now: float) -> float | None:
        """When the earliest pending recipient of `upstream` is due (an unexpired lease counts
        from its expiry); None when nothing is pending."""

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new mail was enqueued (in this process or, for shared backends, any
        node) or after `timeout` seconds."""


class SendLedger(Protocol):
    """The rate ledger: reserve a send at its start (atomic reserve-or-refuse), and at its
    end stamp it or give the slot back.

    A send occupies the window from its reservation until its final reply (see
    relayd.policy.limits.occupying): the provider counts it when it arrives, in between.
    """

    async def reserve_send(
        self,
        upstream: str,
        now: float,
        ceilings: Sequence[Ceiling],
        min_interval: float,
        weight: int,
        open_for: float,
    ) -> SendSlot:
        """Atomically take `weight` slots in the upstream's send ledger if the limits allow.

        Returns SendSlot(reservation_id, now) when reserved, or SendSlot(None, earliest_time,
        reason) when the ceilings or `min_interval` make the send wait until `earliest_time`.
        Sends count from their stamp; one not yet stamped as if it ended `now`, or, once it is
        `open_for` seconds old (its node died mid-send), as if it ended then. The ledger is
        pruned to the longest ceiling's period.
        """

    async def finish_send(self, reservation_id: int, at: float, reached_data: bool) -> None:
        """End a reservation: stamp it with `at`, the final reply's time, from which later
        sends measure the window; or, when the send never reached DATA (the upstream never
        had the message), give the slot back."""


class UpstreamHolds(Protocol):
    """Why an upstream sends nothing: a hold (throttled, auth failing) or a lane's wait."""

    async def hold_upstream(self, hold: UpstreamHold) -> None:
        """Pause an upstream (throttled, auth failing) until `hold.until` (None: until released)."""

    async def release_upstream(self, upstream: str) -> None:
        """End an upstream's hold."""

    async def upstream_hold(self, upstream: str) -> UpstreamHold | None:
        """The upstream's current hold, or None."""

    async def set_upstream_wait(
        self, upstream: str, reason: str | None, until: float | None
    ) -> None:
        """Say why `upstream` sends nothing now ("window closed until ...") and until when
        (None: until further notice); reason None clears it.

        list_messages and show report it as the wait reason of each pending recipient of the
        upstream that is due before `until` (the wait is what holds it back); a recipient due
        later, or not pending, keeps its own reason. It changes no due time.
        """


class Readiness(Protocol):
    """The readiness probe (/readyz): could intake commit a message now?"""

    async def check_writable(self) -> None:
        """Commit a durable write that leaves nothing behind, as an enqueue commits; raise
        StoreUnavailable naming the cause when that fails or would fail (a full disk, a lock
        held too long, the database down).

        A write that changes nothing is no probe: SQLite commits it without touching the
        disk, so it passes on a full one."""


class QueueStats(Protocol):
    """The queue in numbers: the heartbeat's STATUS=, /metrics, the backlog notices."""

    async def counts(self) -> dict[RecipientState, int]:
        """Recipient count per state."""

    async def depth(self) -> QueueDepth:
        """counts() and the arrival time of the oldest message with a pending recipient
        (queued or deferred; held ones wait for the operator, not for relayd), in one read."""


class QueueAdmin(MessageBodies, Protocol):
    """The queue tool's reads and writes, and the retention purge."""

    async def list_messages(
        self, state: RecipientState | None = None, upstream: str | None = None, limit: int = 1000
    ) -> list[MessageView]:
        """Messages with at least one recipient in `state` (any state if None), oldest first."""

    async def show(self, queue_id: QueueId) -> MessageView | None:
        """One message with its recipients, or None."""

    async def retry_now(self, queue_id: QueueId | None, now: float) -> int:
        """Make pending recipients (of one message, or all if None) due now; returns how many."""

    async def hold_message(self, queue_id: QueueId) -> int:
        """Move pending recipients to `held`; returns how many."""

    async def release_message(self, queue_id: QueueId, now: float) -> int:
        """Move held recipients back to `queued`, due now; returns how many."""

    async def delete_message(self, queue_id: QueueId) -> bool:
        """Remove a message entirely; returns whether it existed."""

    async def purge_finished(self, before: float) -> int:
        """Delete messages whose recipients were all final (delivered, failed, bounced) and
        last updated before `before` (queue.retention); returns how many."""


@dataclass(frozen=True)
class MinuteSample:
    """One minute of the status page's history: what happened in it (counted by every node
    that samples it) and the queue's depth at its end (pending: queued or deferred)."""

    minute: int  # Unix time of the minute's start, a multiple of 60
    accepted: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    pending: int = 0
    held: int = 0


class StatusHistory(Protocol):
    """What the status page (web/) reads beyond the queue tool's verbs, and its history."""

    async def add_minute(self, sample: MinuteSample, keep_since: int) -> None:
        """Add the counts to the minute's row (nodes add theirs), set its depth, and drop
        rows older than `keep_since`."""

    async def minutes(self, since: int) -> list[MinuteSample]:
        """The rows from `since` on, oldest first."""

    async def ledger_sends(self, upstream: str, since: float) -> list[Reservation]:
        """The rate ledger's rows of `upstream` that may count after `since`: (reserved at,
        ended at or None while under way, weight), as limits.occupying reads them."""

    async def recent_problems(self, limit: int) -> list[tuple[float, MessageView]]:
        """The messages whose recipients most recently failed or bounced, newest first,
        with when that happened."""

    async def counts_by_upstream(self) -> dict[str, dict[RecipientState, int]]:
        """Recipient count per upstream and state (states without recipients left out)."""


class ReportSource(MessageBodies, Protocol):
    """What a delivery report about a stored message reads (reports/dsn_reports.py)."""

    async def report_info(self, queue_id: QueueId) -> ReportInfo | None:
        """The message's envelope, recipients and their DSN parameters, or None."""

    async def mark_delay_warned(self, queue_id: QueueId) -> bool:
        """Set the message's delay-warning flag; True only for the caller that set it."""


class BounceMatching(Protocol):
    """Late bounces read over IMAP (bounces/store.py): match them, remember the IMAP place."""

    async def match_bounce(self, parsed: ParsedDsn, now: float) -> QueueId | None:
        """Find the message a report is about (its queue id from X-Relayd-ID or relayd's
        Message-ID, else its Message-ID); mark the recipients the report says failed
        `bounced` with the diagnostic; return the queue id, or None when none matches.
        Idempotent: a recipient already bounced is left as it is."""

    async def imap_state(self, account: str) -> tuple[int, int] | None:
        """(uidvalidity, last_uid) saved for an IMAP account/folder, or None."""

    async def save_imap_state(self, account: str, uidvalidity: int, last_uid: int) -> None:
        """Remember that every message of `account` up to `last_uid` has been handled."""


class Store(
    MessageIntake,
    DeliveryQueue,
    SendLedger,
    UpstreamHolds,
    Readiness,
    QueueStats,
    QueueAdmin,
    ReportSource,
    BounceMatching,
    StatusHistory,
    Protocol,
):
    """Every role, opened and closed: what a backend implements and its owner holds (the
    daemon, the CLI commands); the contract suite (tests/contract/) runs against it."""

    async def open(self) -> None:
        """Create or check the schema; after this the store is usable."""

    async def close(self) -> None:
        """Finish pending commits and release the backend."""


@runtime_checkable
class QueueOwnership(Protocol):
    """Optional: the delivering daemon claims its share of the queue at start.

    SQLite: one daemon owns the whole queue; a second is refused, so any lease found then
    was left by an earlier run (killed, or stopped mid-send) and is released. PostgreSQL:
    each node owns the leases taken under its node id (queue.node_id, the same across
    restarts); a second daemon with the same id is refused, the leases of the id's earlier
    run are released, and from then on the node renews a heartbeat: a node silent for
    queue.node_timeout loses its leases to the others. Either way a restart delivers at
    once instead of waiting out queue.lease_time.
    """

    async def claim_queue(self) -> int:
        """Take this process's share of the queue until close() (StoreError naming the
        daemon that holds it otherwise) and make the leased messages of its earlier run due
        again without counting an attempt; returns how many leases were released."""


@runtime_checkable
class Leadership(Protocol):
    """Optional: leader election among the nodes sharing a store (PostgreSQL has it).

    For jobs that must run on exactly one node at a time (the IMAP bounce poller, notice
    digests). Before each run the job asks `try_lead(name)` and runs only on True, and asks
    again before it reports anything. The lead lapses unless the node renews it (its
    heartbeat does), so a node that dies, freezes or is cut off loses it within
    queue.node_timeout and another node takes over; the old leader learns it has lost the
    lead at its next renewal or question. A backend without this protocol serves one node
    only: its caller simply leads (`isinstance(store, Leadership)` tells which).
    """

    async def try_lead(self, name: str) -> bool:
        """Whether this node leads `name` now, taking the lead if nobody holds it."""

    async def resign(self, name: str) -> None:
        """Give up the lead of `name` (on a graceful stop, so another node takes over)."""


async def leads(store: object, name: str) -> bool:
    """Whether this node runs the job `name` now: always on a store (in any role) without
    leadership."""
    return await store.try_lead(name) if isinstance(store, Leadership) else True
