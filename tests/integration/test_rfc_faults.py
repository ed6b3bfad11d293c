"""Issue 13, item 5: RFC 5321/3461 and provider-policy gaps, each through the daemon over
loopback with a scripted raw upstream (tests/support/raw_upstream.py)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from relayd.daemon.relayd import Relayd
from relayd.types import RecipientState
from tests.conftest import ConfigFactory, running
from tests.support.raw_upstream import DROP, RawUpstream

from .test_delivery import generic, until
from .test_delivery_faults import _enqueue, _new_message, _recipients, raw

__all__ = ["raw"]  # the fixture, imported for the tests below

TWELVE = tuple(f"r{n}@example.net" for n in range(12))


@pytest.mark.parametrize("cap_reply", ["552 5.5.3 Too many recipients", "452 4.5.3 Too many"])
async def test_a_recipient_cap_sends_the_rest_in_further_transactions(
    make_config: ConfigFactory, raw: RawUpstream, cap_reply: str
) -> None:
    """RFC 5321 4.5.3.1.10: a 552 after some recipients were accepted means "too many
    recipients"; like a 452 it is temporary, and the rest go in the next transaction."""
    taken: dict[int, int] = {}

    def script(connection: int, command: str) -> str | None:
        if command.startswith("MAIL"):
            taken[connection] = 0
        elif command.startswith("RCPT"):
            taken[connection] += 1
            if taken[connection] > 5:
                return cap_reply + "\r\n"
        return None

    raw.script = script
    config = make_config(generic(raw.port))
    await _enqueue(config, _new_message("twelve", *TWELVE))
    async with running(config) as daemon:
        await until(lambda: _all_delivered(daemon, TWELVE))
    assert len(raw.bodies) == 3  # 5 + 5 + 2, in one attempt
    sent = [line for _, line in raw.commands if line.startswith("RCPT")]
    assert sent[:5] == [f"RCPT TO:<{a}>" for a in TWELVE[:5]]
    assert sum(line.startswith("MAIL") for _, line in raw.commands) == 3


async def _all_delivered(daemon: Relayd, addresses: tuple[str, ...]) -> bool:
    views = await _recipients(daemon)
    return all(a in views and views[a].state is RecipientState.DELIVERED for a in addresses)


async def test_the_final_dot_reply_may_take_longer_than_the_general_timeout(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """RFC 5321 4.5.3.2.6: the reply to the final dot may take 10 minutes (here the 10 s lease
    caps it): a reply after 4 s, twice the general timeout, is a delivery, not a retry."""
    raw.delay = lambda connection, command: 4.0 if command == "." else 0.0
    config = make_config(generic(raw.port))  # timeout = "2s"
    await _enqueue(config, _new_message("slow", "slow@example.net"))
    async with running(config) as daemon:
        await until(lambda: _all_delivered(daemon, ("slow@example.net",)), timeout=15)
        views = await _recipients(daemon)
    assert views["slow@example.net"].attempts == 1
    assert len(raw.bodies) == 1  # sent once


async def test_a_reply_lost_after_the_final_dot_marks_the_retry_a_possible_duplicate(
    make_config: ConfigFactory, raw: RawUpstream
) -> None:
    """The connection drops after the dot was sent: the upstream may have the message, so
    the retry is logged as a possible duplicate."""
    raw.script = lambda connection, command: DROP if connection == 1 and command == "." else None
    config = make_config(generic(raw.port))
    await _enqueue(config, _new_message("lost", "lost@example.net"))
    with capture_logs() as logs:
        async with running(config) as daemon:
            await until(lambda: _all_delivered(daemon, ("lost@example.net",)))
    assert len(raw.bodies) == 2
    (lost,) = [e for e in logs if e["event"] == "reply_lost"]
    assert lost["possible_duplicate"] is True
    (retry,) = [e for e in logs if e["event"] == "possible_duplicate"]
    assert retry["queue_id"] == lost["queue_id"]
    deferred = [e for e in logs if e["event"] == "deferred"]
    assert "a retry may duplicate it" in deferred[0]["smtp_response"]
