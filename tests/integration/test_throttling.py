"""Rate limits, holds and send windows in real time, through a real upstream on loopback.

The timestamps are the upstream's (Received.at, taken when DATA completes), so they include
the relay's scheduling and the SMTP exchange. A send whose reservation was on time can reach
the upstream a little later than the one before it, which makes two arrivals look closer
than the sends were; the checks allow JITTER for that and no more. With the limits used here
a real violation is far larger: a sixth send in "5/2s" at 300 ms spacing would arrive 0.5 s
inside the window, a fixed-bucket reset a whole period inside.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from structlog.testing import capture_logs

from relayd.daemon.relayd import Relayd
from relayd.types import MessageView, RecipientState
from relayd.units import format_iso
from tests.conftest import ConfigFactory, running
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream, Received
from tests.support.waits import until

pytestmark = pytest.mark.slow

JITTER = 0.15  # seconds of arrival-time noise allowed (see the module docstring)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def generic(port: int, extra: str = "") -> str:
    return (
        f'provider = "generic"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        f'auth = "none"\ntimeout = "2s"\nconnect_timeout = "2s"\n{extra}\n'
    )


def port_of(daemon: Relayd) -> int:
    return daemon.addresses[0][1]


def max_in_window(received: Sequence[Received], period: float, weigh: bool = False) -> int:
    """The largest count (or recipient total) in any trailing window (t - period, t]."""
    sends = [(r.at, len(r.recipients) if weigh else 1) for r in received]
    return max(sum(w for s, w in sends if t - period < s <= t) for t, _ in sends)


def subjects(received: Sequence[Received]) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for r in received
        for line in r.data.decode().splitlines()
        if line.startswith("Subject:")
    ]


async def pending(daemon: Relayd) -> list[MessageView]:
    assert daemon.store is not None
    views = await daemon.store.list_messages()
    return [v for v in views if any(not r.state.is_final for r in v.recipients)]


async def reasons(daemon: Relayd) -> list[str | None]:
    return [r.wait_reason for v in await pending(daemon) for r in v.recipients]


async def test_the_ceiling_and_the_spacing_hold_in_every_trailing_window(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(generic(upstream.port, 'rate_limits = ["5/2s"]\nmin_interval = "300ms"'))
    async with running(config) as daemon:
        for index in range(11):
            await send(port_of(daemon), message(subject=f"n{index}"))
        got = await upstream.wait_for(11, timeout=20)

    assert max_in_window(got, 2.0 - JITTER) <= 5
    assert min(b.at - a.at for a, b in pairwise(got)) >= 0.3 - JITTER
    assert subjects(got) == [f"n{index}" for index in range(11)]  # oldest first
    # The allowance is used: 0, 0.3 .. 1.2 | 2.0 .. 3.2 | 4.0 -- not a bunch, not a crawl.
    assert got[5].at - got[0].at == pytest.approx(2.0, abs=0.5)
    assert got[10].at - got[0].at == pytest.approx(4.0, abs=1.0)


async def test_a_restart_keeps_the_ceiling(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(generic(upstream.port, 'rate_limits = ["4/4s"]'))
    async with running(config) as daemon:
        for index in range(4):
            await send(port_of(daemon), message(subject=f"before{index}"))
        await upstream.wait_for(4)
    # A new daemon on the same queue file: the ledger remembers the four sends.
    async with running(config) as daemon:
        for index in range(3):
            await send(port_of(daemon), message(subject=f"after{index}"))

        async def waits_for_the_ledger() -> bool:
            return any(
                (r or "").startswith("rate limit 4/4s until ") for r in await reasons(daemon)
            )

        await until(waits_for_the_ledger, timeout=3)
        assert len(upstream.received) == 4
        got = await upstream.wait_for(7, timeout=15)

    assert max_in_window(got, 4.0 - JITTER) <= 4
    assert got[4].at >= got[0].at + 4.0 - JITTER


async def test_a_421_pauses_the_upstream_and_mail_resumes_after_the_cool_down(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.data_replies.append("421 4.7.0 Try again later, closing connection")
    config = make_config(generic(upstream.port, 'throttle_backoff = ["2s"]'))
    with capture_logs() as logs:
        async with running(config) as daemon:
            assert daemon.store is not None
            await send(port_of(daemon), message(subject="first"))

            async def held() -> bool:
                assert daemon.store is not None
                return await daemon.store.upstream_hold("main") is not None

            await until(held)
            hold = await daemon.store.upstream_hold("main")
            assert hold is not None and hold.until is not None
            await send(port_of(daemon), message(subject="second"))
            await send(port_of(daemon), message(subject="third"))
            why = f"upstream throttled until {format_iso(hold.until)}"

            async def every_message_says_why() -> bool:
                return await reasons(daemon) == [why, why, why]

            await until(every_message_says_why, timeout=hold.until - time.time())
            got = await upstream.wait_for(3, timeout=15)

            async def released() -> bool:
                assert daemon.store is not None
                return await daemon.store.upstream_hold("main") is None

            await until(released)
    assert min(r.at for r in got) >= hold.until - 0.05
    # The throttled message was deferred to the end of the pause; the others were due before.
    assert subjects(got) == ["second", "third", "first"]
    throttled = [e for e in logs if e["event"] == "upstream_throttled"]
    assert len(throttled) == 1 and throttled[0]["resume_at"] == format_iso(hold.until)
    assert any(e["event"] == "upstream_paused" and e["reason"] == why for e in logs)
    assert not any(e["event"] == "failed" for e in logs)


def two_upstreams(fast_port: int, main_extra: str = "") -> str:
    """[upstreams.main] (senders @slow.example) is the test's; [upstreams.fast] takes the rest."""
    return f'{main_extra}\n[upstreams.fast]\n{generic(fast_port)}\n[routing]\ndefault = "fast"\n'


async def test_a_closed_window_keeps_mail_queued_and_says_until_when(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """Open only on the day after tomorrow (UTC), so it is closed now and stays closed for the
    test even across midnight; mail for the other upstream keeps flowing meanwhile."""
    opens = datetime.now(UTC).date() + timedelta(days=2)
    window = (
        f'[upstreams.main.window]\ntimezone = "UTC"\ndays = "{DAYS[opens.weekday()]}"\n'
        'hours = ["00:00-24:00"]\n'
    )
    async with FakeUpstream() as fast:
        config = make_config(
            generic(upstream.port, 'senders = ["*@slow.example"]'),
            extra=two_upstreams(fast.port, window),
        )
        with capture_logs() as logs:
            async with running(config) as daemon:
                await send(port_of(daemon), message(subject="waits"), mail_from="a@slow.example")
                for index in range(3):
                    await send(port_of(daemon), message(subject=f"flows{index}"))
                await fast.wait_for(3)
                why = f"window closed until {opens.isoformat()}T00:00+00:00"

                async def says_why() -> bool:
                    return await reasons(daemon) == [why]

                await until(says_why)
                (waiting,) = await pending(daemon)
                shown = await queue_show(config.source, waiting.queue_id)
    assert upstream.received == []
    assert waiting.upstream == "main"
    assert waiting.recipients[0].state is RecipientState.QUEUED
    assert f"waiting for    {why}" in shown  # queue show's text (queuefmt.show_text)
    assert any(e["event"] == "window_closed" and e["reason"] == why for e in logs)


async def queue_show(config_path: object, queue_id: str) -> str:
    """`relayd queue show ID` as an operator runs it, beside the running daemon."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relayd",
        "queue",
        "show",
        queue_id,
        "-c",
        str(config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_mail_for_another_upstream_flows_while_one_is_throttled(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.data_replies.append("421 4.7.0 Try again later, closing connection")
    async with FakeUpstream() as fast:
        config = make_config(
            generic(upstream.port, 'senders = ["*@slow.example"]\nthrottle_backoff = ["1h"]'),
            extra=two_upstreams(fast.port),
        )
        async with running(config) as daemon:
            assert daemon.store is not None
            await send(port_of(daemon), message(subject="throttled"), mail_from="a@slow.example")
            await send(port_of(daemon), message(subject="held"), mail_from="b@slow.example")
            for index in range(3):
                await send(port_of(daemon), message(subject=f"flows{index}"))
            got = await fast.wait_for(3)
            hold = await daemon.store.upstream_hold("main")
            assert hold is not None and hold.until is not None
            why = f"upstream throttled until {format_iso(hold.until)}"

            async def both_say_why() -> bool:
                return await reasons(daemon) == [why, why]

            await until(both_say_why)
    assert subjects(got) == ["flows0", "flows1", "flows2"]
    assert upstream.received == []


async def test_count_recipients_weighs_each_message_by_its_recipients(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(generic(upstream.port, 'rate_limits = ["4/2s"]\ncount = "recipients"'))
    sizes = [2, 2, 3, 1]
    async with running(config) as daemon:
        for index, size in enumerate(sizes):
            rcpts = [f"r{n}@example.net" for n in range(size)]
            await send(port_of(daemon), message(subject=f"m{index}"), rcpts=rcpts)
        got = await upstream.wait_for(4, timeout=15)

    assert [len(r.recipients) for r in got] == sizes  # oldest first, the big one not skipped
    assert max_in_window(got, 2.0 - JITTER, weigh=True) <= 4
    # 2 + 2 fill the window; the 3 waits for both to leave, and the 1 fits beside it.
    assert got[2].at >= got[0].at + 2.0 - JITTER
    assert got[3].at - got[2].at < 0.5
