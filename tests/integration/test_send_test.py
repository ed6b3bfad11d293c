"""`relayd send-test`: a real message through the store, and its outcome waited for."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import pytest

from relayd.cli.main import main
from relayd.clock import SystemClock
from relayd.config.model import Config
from relayd.tools.sendtest import SendTestError, plan_send_test, send_test
from tests.conftest import ConfigFactory, running


@pytest.fixture
def capture(make_config: ConfigFactory, tmp_path: Path) -> Config:
    return make_config(f'provider = "directory"\npath = "{tmp_path / "outbox"}"')


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code
    assert isinstance(code, int)
    return code, out.getvalue(), err.getvalue()


async def test_the_running_daemon_delivers_the_test_message(
    capture: Config, tmp_path: Path
) -> None:
    plan = plan_send_test(capture, "it@practice.example", None, None, "20s")
    async with running(capture):
        result = await send_test(capture, plan, SystemClock(), poll=0.1)

    assert result.delivered, result.text
    assert result.text.startswith("delivered: ")
    (eml,) = (tmp_path / "outbox").glob("*.eml")
    data = eml.read_bytes()
    assert b"Subject: relayd test message via main\r\n" in data
    assert b"To: <it@practice.example>\r\n" in data
    assert b"From: relayd test <relayd@relay.test>\r\n" in data
    assert b"Message-ID: <relayd." in data


async def test_the_cli_waits_for_the_outcome_and_exits_0(capture: Config) -> None:
    assert capture.source is not None
    async with running(capture):
        code, out, err = await asyncio.to_thread(
            run_cli, "send-test", "--to", "it@practice.example", "-c", str(capture.source)
        )

    assert code == 0
    # Only log lines on stderr (the in-process daemon's too): stdout is the command's own.
    assert all(line.startswith("20") for line in err.splitlines()), err
    lines = out.splitlines()
    assert lines[0] == (
        "queueing a test message from <relayd@relay.test> to <it@practice.example> via main"
    )
    assert lines[1].startswith("delivered: ")


async def test_without_a_daemon_it_times_out_and_says_the_message_waits(capture: Config) -> None:
    plan = plan_send_test(capture, "it@practice.example", None, None, "300ms")
    result = await send_test(capture, plan, SystemClock(), poll=0.1)

    assert not result.delivered
    assert "not delivered within 300ms" in result.text
    assert "is `relayd run` running" in result.text
    assert "it stays queued" in result.text


def test_a_recipient_is_required_without_a_notification_mailbox(capture: Config) -> None:
    assert capture.source is not None
    code, _, err = run_cli("send-test", "-c", str(capture.source))
    assert code == 2
    assert "no recipient: give --to ADDRESS" in err


def test_plan_checks_its_arguments(capture: Config) -> None:
    with pytest.raises(SendTestError, match="no upstream"):
        plan_send_test(capture, "a@b.example", None, "nope", "1m")
    with pytest.raises(SendTestError, match="--to"):
        plan_send_test(capture, "not an address", None, None, "1m")
    with pytest.raises(SendTestError, match="--timeout"):
        plan_send_test(capture, "a@b.example", None, None, "soon")
    plan = plan_send_test(capture, "a@b.example", "boss@practice.example", None, "1m")
    assert (plan.sender, plan.upstream, plan.timeout) == ("boss@practice.example", "main", 60)
