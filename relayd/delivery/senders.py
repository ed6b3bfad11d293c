"""Senders an upstream's account may not send as (Microsoft's 554 5.2.0 SendAsDenied): a
permission problem of the account on one sender's mailbox, not the message's fault and not
every sender's. That sender's mail waits on this upstream (deferred, never bounced for it)
until the hold ends, when one message tries again; it fails at queue.max_lifetime like any
deferred mail, with a DSN. The operator is told the fix (delivery/notices.py).

The holds live in the lane, not the store: after a restart the first message tries again
and, refused, holds its sender anew.
"""

from __future__ import annotations

from collections.abc import Sequence

from relayd.policy.outcome import Action, RecipientReply
from relayd.policy.waits import Wait
from relayd.types import RecipientOutcome, RecipientState


class SenderHolds:
    """One lane's held senders: sender address → the wait its mail is put back to."""

    def __init__(self) -> None:
        self._held: dict[str, Wait] = {}

    def held(self, sender: str, now: float) -> Wait | None:
        """The wait for `sender`'s mail, while it is held."""
        wait = self._held.get(sender)
        return wait if wait is not None and wait.until is not None and wait.until > now else None

    def observe(
        self,
        sender: str,
        replies: Sequence[RecipientReply],
        outcomes: Sequence[RecipientOutcome],
    ) -> None:
        """One attempt's replies: a Send As refusal holds the sender until the message's own
        retry; a delivery ends the hold."""
        if any(r.action is Action.DELIVERED for r in replies):
            self._held.pop(sender, None)
            return
        denied = {r.address for r in replies if r.action is Action.SENDER_DENIED}
        retry = [o for o in outcomes if o.recipient in denied and o.next_attempt_at is not None]
        if retry and retry[0].state is RecipientState.DEFERRED:
            until = retry[0].next_attempt_at
            reason = f"the upstream account may not send as {sender} (Send As)"
            self._held[sender] = Wait(until, reason, "sender_held")
