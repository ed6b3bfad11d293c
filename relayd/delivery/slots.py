"""How many sessions a lane keeps open at once, adapted to the upstream's own limit.

Microsoft answers `432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded` when an
account has more concurrent connections than it allows. Such a reply means a session too
many: the limit drops by one (not below one) and the message is retried. A 432 counts only
for an attempt that began after the workers beyond the limit had closed their sessions
(their QUIT answered): until then the upstream may still count one of them and refuse any
session, and counting each refusal would cut more than the excess. After a quiet
period with no 432 the limit grows by one again, up to max_connections, so a passing
limit (another client of the same account) does not cost throughput for ever.

Workers are numbered from 0; a worker whose number is not below the limit closes its
connection and waits (delivery/lane.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from relayd.clock import Clock
from relayd.logs import get_logger
from relayd.policy.outcome import Action, RecipientReply

log = get_logger("dispatch")

QUIET = 300.0  # seconds without a 432 before one more session is allowed


class SessionSlots:
    """The number of sessions one upstream's lane may have open now."""

    def __init__(self, upstream: str, maximum: int, clock: Clock, quiet: float = QUIET) -> None:
        self.upstream = upstream
        self.maximum = maximum
        self.limit = maximum
        self.clock = clock
        self.quiet = quiet
        self._changed_at = clock.monotonic()  # the last drop or growth
        # When the sessions were last down to the limit (every worker beyond it closed);
        # infinite from a drop until then. A 432 to an attempt that began earlier may
        # count a session that has gone since: it lowers nothing.
        self._settled_at = float("-inf")
        self._closed: set[int] = set()  # workers beyond the limit that closed their session

    def allows(self, worker: int) -> bool:
        """Whether worker number `worker` may hold a session now; one that may not closes
        its session and then says so (closed)."""
        self._grow()
        if worker < self.limit:
            self._closed.discard(worker)
            return True
        return False

    def closed(self, worker: int) -> None:
        """Worker number `worker`, beyond the limit, has closed its session (its QUIT was
        answered, or the connection is gone: the upstream no longer counts it)."""
        if worker < self.limit or worker in self._closed:
            return
        self._closed.add(worker)
        if self._settled():
            self._settled_at = self.clock.monotonic()

    def _settled(self) -> bool:
        return self._closed.issuperset(range(self.limit, self.maximum))

    def regrow_in(self) -> float:
        """Seconds until the limit may grow again (a waiting worker's next look)."""
        return max(self._changed_at + self.quiet - self.clock.monotonic(), 0.1)

    def observe(self, replies: Sequence[RecipientReply], elapsed: float) -> None:
        """One attempt's replies (it took `elapsed` seconds): a 432 4.3.2 (TOO_MANY_SESSIONS)
        lowers the limit by one, unless the attempt began before the sessions were down
        to the limit."""
        if not any(r.action is Action.TOO_MANY_SESSIONS for r in replies):
            return
        now = self.clock.monotonic()
        if now - elapsed < self._settled_at:
            return
        self._changed_at = now
        if self.limit > 1:
            self.limit -= 1
            self._settled_at = now if self._settled() else float("inf")
            log.warning("upstream_sessions_lowered", upstream=self.upstream, sessions=self.limit)

    def _grow(self) -> None:
        now = self.clock.monotonic()
        if self.limit < self.maximum and now - self._changed_at >= self.quiet:
            self.limit += 1
            self._changed_at = now
            log.info("upstream_sessions_raised", upstream=self.upstream, sessions=self.limit)
