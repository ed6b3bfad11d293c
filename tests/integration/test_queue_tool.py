"""The queue tool against a store the daemon is not running on."""

from __future__ import annotations

import asyncio

import pytest

from relayd.cli.main import main
from relayd.store import open_store
from relayd.types import UpstreamHold
from tests.conftest import ConfigFactory


def test_retry_all_ends_an_upstream_pause(make_config: ConfigFactory) -> None:
    """DESIGN: an auth-failed upstream stays paused until the config changes or an operator
    retries; `relayd queue retry --all` is that retry."""
    config = make_config(
        'provider = "generic"\nhost = "127.0.0.1"\nport = 9\nsecurity = "none"\nauth = "none"'
    )

    async def pause() -> None:
        store = open_store(config.queue.backend, config.queue.path)
        await store.open()
        await store.hold_upstream(UpstreamHold("main", None, "535 5.7.8 bad credentials"))
        await store.close()

    async def current_hold() -> UpstreamHold | None:
        store = open_store(config.queue.backend, config.queue.path)
        await store.open()
        try:
            return await store.upstream_hold("main")
        finally:
            await store.close()

    asyncio.run(pause())
    assert asyncio.run(current_hold()) is not None
    assert config.source is not None

    with pytest.raises(SystemExit) as exit_info:
        main(["queue", "retry", "--all", "-c", str(config.source)])
    assert exit_info.value.code == 0

    assert asyncio.run(current_hold()) is None


def test_delete_with_dsn_queues_a_failure_report_first(make_config: ConfigFactory) -> None:
    """`relayd queue delete ID --dsn`: the sender's report goes to the bounce mailbox."""
    from email import message_from_bytes

    from relayd.types import NewMessage, QueueId, Recipient

    config = make_config(
        'provider = "generic"\nhost = "127.0.0.1"\nport = 9\nsecurity = "none"\nauth = "none"',
        extra='\n[bounces]\nmailbox = "bounces@example.org"\n',
    )
    body = (
        b"From: app@example.org\r\nSubject: stuck\r\nMessage-ID: <stuck@example.org>\r\n\r\nhi\r\n"
    )

    async def enqueue() -> QueueId:
        store = open_store(config.queue.backend, config.queue.path)
        await store.open()
        try:
            return await store.enqueue(
                NewMessage(
                    "app@example.org",
                    (Recipient("x@example.net"),),
                    body,
                    "main",
                    "<stuck@example.org>",
                    1_800_000_000.0,
                )
            )
        finally:
            await store.close()

    async def remaining() -> list[tuple[str, tuple[str, ...], bytes]]:
        store = open_store(config.queue.backend, config.queue.path)
        await store.open()
        try:
            views = await store.list_messages()
            return [
                (
                    v.mail_from,
                    tuple(r.address for r in v.recipients),
                    await store.load_body(v.queue_id),
                )
                for v in views
            ]
        finally:
            await store.close()

    queue_id = asyncio.run(enqueue())
    assert config.source is not None
    with pytest.raises(SystemExit) as exit_info:
        main(["queue", "delete", queue_id, "--dsn", "-c", str(config.source)])
    assert exit_info.value.code == 0
    ((sender, recipients, report),) = asyncio.run(remaining())  # the original is gone
    assert sender == ""
    assert recipients == ("bounces@example.org",)
    parsed = message_from_bytes(report)
    assert parsed.get_content_type() == "multipart/report"
    status = [
        part for part in parsed.walk() if part.get_content_type() == "message/delivery-status"
    ]
    assert status
    assert b"Final-Recipient: rfc822; x@example.net" in report
    assert b"Action: failed" in report
