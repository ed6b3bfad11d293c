"""Reading delivery reports back with the stdlib `email` package (unit and integration tests)."""

from __future__ import annotations

from email.message import Message


def status_blocks(message: Message) -> list[Message]:
    """The header blocks of the message/delivery-status part: per message, then per recipient."""
    part = next(p for p in message.walk() if p.get_content_type() == "message/delivery-status")
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return [block for block in blocks if isinstance(block, Message)]
