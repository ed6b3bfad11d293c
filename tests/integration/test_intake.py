"""Intake over loopback: what local apps see, including every kind of bad input."""

from __future__ import annotations

import asyncio
import email
import json
import os
import re
import shutil
import smtplib
import sqlite3
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from relayd.config.model import Config
from relayd.daemon.relayd import Relayd
from relayd.types import NewMessage, QueueId
from tests.conftest import ConfigFactory, running
from tests.support.client import RawClient, message, send
from tests.support.fake_upstream import FakeUpstream

CAPTURE = 'provider = "directory"\npath = "{path}"'


@pytest.fixture
def capture_config(make_config: ConfigFactory, tmp_path: Path) -> Config:
    return make_config(
        CAPTURE.format(path=tmp_path / "outbox"),
        server='max_message_size = "50KB"\nmax_recipients = 3',
    )


def port_of(daemon: Relayd) -> int:
    return daemon.addresses[0][1]


async def wait_files(folder: Path, count: int, timeout: float = 10) -> list[Path]:
    for _ in range(int(timeout / 0.05)):
        files = sorted(folder.glob("*.eml")) if folder.exists() else []
        if len(files) >= count:
            return files
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} files expected in {folder}")


async def test_the_capture_keeps_the_envelope_beside_the_message(
    capture_config: Config, tmp_path: Path
) -> None:
    """Issue 15: a Bcc recipient is in no header, so `<queue-id>.json` carries the envelope;
    LF-only lines from the app are written in wire form (CRLF throughout)."""
    data = message(body="one\ntwo\n\nthree\r\n").replace(b"\r\nSubject", b"\nSubject")
    rcpts = ["someone@example.net", "hidden@example.net"]
    async with running(capture_config) as daemon:
        assert await send(port_of(daemon), data, rcpts=rcpts) == {}
        (eml,) = await wait_files(tmp_path / "outbox", 1)
    envelope = json.loads(eml.with_suffix(".json").read_text())
    assert envelope["mail_from"] == "app@example.org"
    assert envelope["rcpt_to"] == rcpts
    assert envelope["upstream"] == next(iter(capture_config.upstreams))
    assert abs(datetime.fromisoformat(envelope["time"]).timestamp() - time.time()) < 60
    stored = eml.read_bytes()
    assert b"hidden@example.net" not in stored
    assert stored.count(b"\n") == stored.count(b"\r\n") == stored.count(b"\r")
    assert b"\r\none\r\ntwo\r\n\r\nthree\r\n" in stored


async def test_message_reaches_capture_folder_byte_for_byte(
    capture_config: Config, tmp_path: Path
) -> None:
    body = "Line one\r\n.starts with a dot\r\n\r\nUnicode caf\u00e9 8bit\r\n"
    data = message(
        body=body,
        extra="Message-ID: <abc@example.org>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n",
    )
    async with running(capture_config) as daemon:
        refused = await send(port_of(daemon), data)
        assert refused == {}
        (eml,) = await wait_files(tmp_path / "outbox", 1)
    stored = eml.read_bytes()
    assert stored.startswith(b"Received: from ")
    assert b"by relay.test (relayd) with ESMTP id " in stored
    # Everything after the added trace header is exactly what the app sent.
    first_original = stored.index(b"From: App")
    assert stored[first_original:] == data
    assert stored.count(b"Message-ID:") == 1


async def test_missing_message_id_and_date_are_added(
    capture_config: Config, tmp_path: Path
) -> None:
    data = b"Subject: bare\r\n\r\nbody\r\n"
    async with running(capture_config) as daemon:
        await send(port_of(daemon), data)
        (eml,) = await wait_files(tmp_path / "outbox", 1)
    stored = eml.read_bytes()
    headers = stored.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nMessage-ID: <relayd." in headers
    assert b"\r\nDate: " in headers
    assert stored.endswith(data)


async def test_queued_reply_names_the_queue_id(capture_config: Config) -> None:
    async with running(capture_config) as daemon:
        client = RawClient(port_of(daemon))
        assert (await client.connect()).startswith("220 ")
        ehlo = await client.cmd("EHLO app.test")
        assert "SIZE 50000" in ehlo and "8BITMIME" in ehlo and "SMTPUTF8" in ehlo
        assert (await client.cmd("MAIL FROM:<app@example.org>")).startswith("250 ")
        assert (await client.cmd("RCPT TO:<x@example.net>")).startswith("250 ")
        assert (await client.cmd("DATA")).startswith("354 ")
        reply = await client.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        assert reply.startswith("250 2.0.0 Ok: queued as ")
        await client.cmd("QUIT")
        await client.close()


async def test_oversize_is_refused_with_552(capture_config: Config) -> None:
    async with running(capture_config) as daemon:
        client = RawClient(port_of(daemon))
        await client.connect()
        await client.cmd("EHLO app.test")
        assert (await client.cmd("MAIL FROM:<a@example.org> SIZE=999999")).startswith("552 5.3.4")
        assert (await client.cmd("MAIL FROM:<a@example.org>")).startswith("250")
        await client.cmd("RCPT TO:<b@example.net>")
        await client.cmd("DATA")
        big = (b"x" * 70 + b"\r\n") * 1000  # 72 KB > 50 KB
        assert (await client.cmd(big + b".\r\n")).startswith("552 5.3.4")
        # The session is still usable afterwards.
        assert (await client.cmd("NOOP")).startswith("250")
        await client.close()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("MAIL FROM:<no-at-sign>", "553 5.1.3"),
        ("MAIL FROM:<a b@example.org>", "553 5.1.3"),
        ("MAIL FROM:<a@exa_mple..org>", "553 5.1.3"),
        ("MAIL FROM:<a@example.org", "553 5.1.3"),
        ("MAIL FROM:<a@example.org> FOO=BAR", "555 5.5.4"),
        ("MAIL TO:<a@example.org>", "501 5.5.4"),
        ("MAIL FROM:<caf\u00e9@example.org>", "553 5.1.3"),
    ],
)
async def test_bad_sender_addresses(capture_config: Config, command: str, expected: str) -> None:
    async with running(capture_config) as daemon:
        client = RawClient(port_of(daemon))
        await client.connect()
        await client.cmd("EHLO app.test")
        assert (await client.cmd(command)).startswith(expected)
        await client.close()


async def test_bad_recipients_and_too_many(capture_config: Config) -> None:
    async with running(capture_config) as daemon:
        client = RawClient(port_of(daemon))
        await client.connect()
        await client.cmd("EHLO app.test")
        assert (await client.cmd("RCPT TO:<x@example.net>")).startswith("503 5.5.1")
        assert (await client.cmd("MAIL FROM:<>")).startswith("250")  # null sender is valid
        assert (await client.cmd("RCPT TO:<bad address>")).startswith("553 5.1.3")
        assert (await client.cmd("RCPT TO:<@example.net>")).startswith("553 5.1.3")
        for index in range(3):
            assert (await client.cmd(f"RCPT TO:<r{index}@example.net>")).startswith("250")
        assert (await client.cmd("RCPT TO:<r4@example.net>")).startswith("452 4.5.3")
        await client.close()


async def test_utf8_addresses_with_smtputf8(capture_config: Config, tmp_path: Path) -> None:
    async with running(capture_config) as daemon:
        client = RawClient(port_of(daemon))
        await client.connect()
        await client.cmd("EHLO app.test")
        assert (await client.cmd("MAIL FROM:<caf\u00e9@example.org> SMTPUTF8")).startswith("250")
        assert (await client.cmd("RCPT TO:<j\u00f6rg@example.net>")).startswith("250")
        await client.cmd("DATA")
        assert (await client.cmd("Subject: \u00e9\r\n\r\nhi\r\n.\r\n".encode())).startswith("250")
        await client.close()
        await wait_files(tmp_path / "outbox", 1)


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\u00a0", "\x0b"])
async def test_an_address_no_command_line_may_carry_is_refused(
    capture_config: Config, char: str
) -> None:
    """aiosmtplib would refuse to send it; accepted, the message could never leave."""
    async with running(capture_config) as daemon:
        client = RawClient(port_of(daemon))
        await client.connect()
        await client.cmd("EHLO app.test")
        sender = await client.cmd(f"MAIL FROM:<a{char}b@example.org> SMTPUTF8")
        assert (await client.cmd("MAIL FROM:<a@example.org> SMTPUTF8")).startswith("250")
        recipient = await client.cmd(f"RCPT TO:<c{char}d@example.net>")
        await client.close()
    for reply in (sender, recipient):
        assert reply.startswith(f"553 5.1.3 Bad {'sender' if reply is sender else 'recipient'}")
        assert f"contains U+{ord(char):04X}" in reply


async def test_bare_lf_dot_does_not_end_data(capture_config: Config, tmp_path: Path) -> None:
    """SMTP smuggling: only CRLF.CRLF ends DATA; "\\n.\\r\\n" and "\\r.\\r\\n" are content."""
    async with running(capture_config) as daemon:
        client = RawClient(port_of(daemon))
        await client.connect()
        await client.cmd("EHLO app.test")
        await client.cmd("MAIL FROM:<a@example.org>")
        await client.cmd("RCPT TO:<b@example.net>")
        await client.cmd("DATA")
        smuggle = (
            b"Subject: s\r\n\r\nbefore\n.\r\nMAIL FROM:<evil@example.org>\r\n"
            b"still body\r.\r\nmore\r\n.\r\n"
        )
        reply = await client.cmd(smuggle)
        assert reply.startswith("250 2.0.0")  # one message, one reply
        assert (await client.cmd("NOOP")).startswith("250")
        await client.close()
        (eml,) = await wait_files(tmp_path / "outbox", 1)
    # One message, the smuggled command inside it (the capture writes wire form: CRLF).
    assert (
        b"before\r\n.\r\nMAIL FROM:<evil@example.org>\r\nstill body\r\n.\r\nmore\r\n"
        in eml.read_bytes()
    )


async def test_long_lines_and_garbage_get_reply_codes(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(CAPTURE.format(path=tmp_path / "outbox"), server='max_line_length = "2KB"')
    async with running(config) as daemon:
        client = RawClient(port_of(daemon))
        await client.connect()
        assert (await client.cmd("EHLO " + "x" * 10_000)).startswith("500")
        await client.cmd("EHLO app.test")
        assert (await client.cmd("FROBNICATE now")).startswith("500")
        assert (await client.cmd(b"\x00\xff\xfe junk")).startswith("500")
        await client.cmd("MAIL FROM:<a@example.org>")
        await client.cmd("RCPT TO:<b@example.net>")
        await client.cmd("DATA")
        reply = await client.cmd(b"Subject: long\r\n\r\n" + b"y" * 10_000 + b"\r\n.\r\n")
        assert (
            reply == "500 5.5.2 Line too long (this relay's server.max_line_length is 2000 bytes)"
        )
        assert (await client.cmd("QUIT")).startswith("221")
        await client.close()


async def test_a_long_html_line_is_accepted_and_delivered_wire_safe(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """Issue 15: a 1,560-byte HTML line got 500 5.5.2; now 250, and the upstream gets lines
    of at most 998 octets that decode to the same HTML."""
    html = "<p>" + "<b>caf\u00e9</b> = 1 " * 130 + "</p>"
    assert len(html.encode()) > 1_500
    data = message(
        body=html + "\r\nthe end\r\n",
        extra="MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n",
    )
    upstream_config = (
        f'provider = "generic"\nhost = "127.0.0.1"\nport = {upstream.port}\n'
        'security = "none"\nauth = "none"'
    )
    async with running(make_config(upstream_config)) as daemon:
        assert await send(port_of(daemon), data) == {}  # 250
        (delivered,) = await upstream.wait_for(1)
    assert max(len(line) for line in re.split(rb"\r\n|\r|\n", delivered.data)) <= 998
    sent = email.message_from_bytes(delivered.data)
    assert sent["Content-Transfer-Encoding"] == "quoted-printable"
    assert sent.get_payload(decode=True) == (html + "\r\nthe end\r\n").encode()


@pytest.fixture
def second_loopback() -> str:
    """127.0.0.2 is loopback on Linux without configuration; check it can be bound."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError as exc:  # pragma: no cover - depends on the host
            pytest.skip(f"cannot bind 127.0.0.2: {exc}")
    return "127.0.0.2"


async def test_client_outside_allowed_networks_is_refused(
    make_config: ConfigFactory, tmp_path: Path, second_loopback: str
) -> None:
    config = make_config(
        CAPTURE.format(path=tmp_path / "outbox"), server='allowed_networks = ["127.0.0.1/32"]'
    )
    async with running(config) as daemon:
        outsider = RawClient(port_of(daemon), source=second_loopback)
        assert (await outsider.connect()).startswith("554 5.7.1")
        await outsider.close()
        insider = RawClient(port_of(daemon))
        assert (await insider.connect()).startswith("220")
        await insider.close()


async def test_store_failure_answers_451_not_5xx(capture_config: Config) -> None:
    """A writer holding the database lock makes the commit fail: the app must retry."""
    async with running(capture_config) as daemon:
        blocker = sqlite3.connect(capture_config.queue.path, timeout=0.1)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(smtplib.SMTPDataError) as info:
                await send(port_of(daemon))
        finally:
            blocker.rollback()
            blocker.close()
        assert info.value.smtp_code == 451
        assert isinstance(info.value.smtp_error, bytes)
        assert info.value.smtp_error.startswith(b"4.3.0")
        assert b"Error" not in info.value.smtp_error  # no exception text leaks
        assert await send(port_of(daemon)) == {}  # and it recovers


def swaks() -> str:
    """swaks, a real SMTP client with a pipelining mode; skipped (failed under CI) without."""
    path = shutil.which("swaks")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("swaks is required under CI (apt-get install swaks)")
        pytest.skip("swaks is not installed (apt-get install swaks)")
    return path


async def run_swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [swaks(), "--server", f"127.0.0.1:{port}", "--from", "app@example.org", *args]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=30, check=False
    )


async def test_swaks_can_send(capture_config: Config, tmp_path: Path) -> None:
    async with running(capture_config) as daemon:
        result = await run_swaks(
            port_of(daemon), "--to", "x@example.net", "--header", "Subject: swaks"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "250 2.0.0 Ok: queued as" in result.stdout
        await wait_files(tmp_path / "outbox", 1)


async def test_a_pipelining_client_sends_its_commands_in_one_batch(
    capture_config: Config, tmp_path: Path
) -> None:
    """PIPELINING (RFC 2920) is advertised, and swaks --pipeline sends MAIL, RCPT, RCPT and
    DATA in one write and reads the four replies after (issue 15)."""
    async with running(capture_config) as daemon:
        result = await run_swaks(
            port_of(daemon), "--pipeline", "--to", "x@example.net,y@example.net"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "250-PIPELINING" in result.stdout
        assert "250 2.0.0 Ok: queued as" in result.stdout
        (eml,) = await wait_files(tmp_path / "outbox", 1)
    assert json.loads(eml.with_suffix(".json").read_text())["rcpt_to"] == [
        "x@example.net",
        "y@example.net",
    ]


async def test_a_flood_of_noops_is_cut_off_with_421(capture_config: Config) -> None:
    """Issue 13: commands that carry no mail are limited per session (aiosmtpd's
    command_call_limit): the 1001st NOOP gets 421 and the connection closes."""

    def flood(port: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("flood.example")
            for _ in range(1000):
                assert client.noop()[0] == 250
            code, text = client.noop()
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
            return code, text

    async with running(capture_config) as daemon:
        code, text = await asyncio.to_thread(flood, port_of(daemon))
    assert (code, text) == (421, b"4.7.0 NOOP sent too many times")


async def test_only_the_one_session_a_process_serves_enqueues_alone(
    capture_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store may commit the message of a process's only session on the loop's thread:
    nothing else there could share its commit or needs the loop meanwhile. With a second
    session connected (even one that only said hello), it must not."""
    seen: list[bool] = []
    async with running(capture_config) as daemon:
        assert daemon.handler is not None
        store = daemon.handler.store
        enqueue = store.enqueue

        async def recording(message: NewMessage, *, alone: bool = False) -> QueueId:
            seen.append(alone)
            return await enqueue(message, alone=alone)

        monkeypatch.setattr(store, "enqueue", recording)
        assert await send(port_of(daemon), message()) == {}
        idle = RawClient(port_of(daemon))
        assert (await idle.connect()).startswith("220")
        try:
            assert await send(port_of(daemon), message()) == {}
        finally:
            await idle.close()
    assert seen == [True, False]
