"""The outbox: the one way mail relayd makes itself enters the queue, durable, rate-limited
and retried like any mail. Its senders are the DSNs and delay warnings (reports/dsn_reports.py),
the operator notices (notices/sink.py) and the bounce reports forwarded to the bounce mailbox
(bounces/store.py).
"""

from __future__ import annotations

from relayd.config.model import Config
from relayd.policy.headers import find_message_id, header_block, header_text
from relayd.policy.routing import Routes
from relayd.store.base import MessageIntake
from relayd.types import NewMessage, QueueId, Recipient, new_queue_id


async def submit(
    config: Config,
    store: MessageIntake,
    raw: bytes,
    addresses: tuple[str, ...],
    now: float,
    *,
    sender: str = "",
    via: str | None = None,
) -> QueueId:
    """Enqueue `raw` from `sender` (the null sender `<>` unless said otherwise); the route
    for the sender picks the upstream, `via` overrides it. A forwarded report's Message-ID
    is someone else's text: header_text keeps the stored one storable (no NUL)."""
    return await store.enqueue(
        NewMessage(
            mail_from=sender,
            recipients=tuple(Recipient(address) for address in addresses),
            body=raw,
            upstream=via or Routes.from_config(config).pick(sender, None),
            message_id=header_text(find_message_id(header_block(raw)) or ""),
            received_at=now,
            client="relayd",
            queue_id=new_queue_id(now),
        )
    )
