"""What a bounce report someone else sent says, as dsn/parse.py reads it; pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from relayd.errors import RelaydError

_RELAYD_MESSAGE_ID = re.compile(r"^<relayd\.([0-9A-Z]+)@[^>]+>$")


class BounceParseError(RelaydError):
    """The message looks like a bounce report but cannot be read as one.

    Defined here rather than in errors.py while the bounce work is wired in; it moves there
    when errors.py is free.
    """


@dataclass(frozen=True)
class ParsedRecipient:
    """One recipient of a report someone else made, as its delivery-status block says."""

    final_recipient: str
    action: str
    status: str
    diagnostic: str | None = None
    remote_mta: str | None = None
    original_recipient: str | None = None


@dataclass(frozen=True)
class ParsedDsn:
    """What a bounce report says: which recipients, what happened, and about which message.

    `original_message_id` and `original_relayd_id` come from the returned message (or its
    headers) inside the report; `kind` names the format it was read from ("rfc3464", "exim",
    "x-failed-recipients", "text" for the free-text formats flufl.bounce recognises).
    """

    recipients: tuple[ParsedRecipient, ...]
    original_message_id: str | None = None
    original_relayd_id: str | None = None
    reporting_mta: str | None = None
    envelope_id: str | None = None
    subject: str | None = None
    kind: str = "rfc3464"

    @property
    def queue_id(self) -> str | None:
        """The relayd queue id of the original: X-Relayd-ID, else from `<relayd.ID@host>`."""
        if self.original_relayd_id:
            return self.original_relayd_id
        return relayd_queue_id(self.original_message_id)

    @property
    def failed(self) -> tuple[ParsedRecipient, ...]:
        return tuple(r for r in self.recipients if r.action == "failed")

    @property
    def delayed(self) -> tuple[ParsedRecipient, ...]:
        return tuple(r for r in self.recipients if r.action == "delayed")


def relayd_queue_id(message_id: str | None) -> str | None:
    """The queue id in a Message-ID relayd made (`<relayd.QUEUEID@host>`, headers.prepare)."""
    if not message_id:
        return None
    match = _RELAYD_MESSAGE_ID.match(message_id.strip())
    return match.group(1) if match else None
