"""`relayd-sendmail` as cron and PHP run it: through a running daemon, into the queue when
the daemon is down, and the sysexits codes for what goes wrong."""

from __future__ import annotations

import asyncio
import email
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, child_env, relayd_command, run_cli, write_config
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

EX_USAGE, EX_DATAERR, EX_TEMPFAIL, EX_CONFIG = 64, 65, 75, 78


def sendmail_command() -> list[str]:
    """The installed relayd-sendmail script (what /usr/sbin/sendmail links to)."""
    script = Path(sys.executable).parent / "relayd-sendmail"
    return [str(script)] if script.exists() else [*relayd_command(), "sendmail"]


def sendmail(
    config: Path | None, *args: str, stdin: bytes, **env: str
) -> subprocess.CompletedProcess[bytes]:
    options = ["-c", str(config)] if config is not None else []
    return subprocess.run(
        [*sendmail_command(), *options, *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        env=child_env(LOGNAME="cronuser", **env),
        check=False,
    )


async def asendmail(
    config: Path | None, *args: str, stdin: bytes, **env: str
) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(sendmail, config, *args, stdin=stdin, **env)


PHP_MESSAGE = (
    b"To: Someone <someone@example.net>\n"
    b"Cc: copy@example.net\n"
    b"Bcc: hidden@example.net\n"
    b"Subject: from php\n"
    b"\n"
    b"line one\n"
    b".\n"
    b"line after a dot\n"
)


async def test_through_a_running_daemon(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    daemon = await launch.start_ready(config, port)

    # PHP mail(): -t -i; the dot line is content, Bcc is a recipient but not a header.
    php = await asendmail(config, "-t", "-i", "-f", "web@example.org", stdin=PHP_MESSAGE)
    assert php.returncode == 0, php.stderr
    (first,) = await upstream.wait_for(1)
    assert first.mail_from == "web@example.org"
    assert first.recipients == ["someone@example.net", "copy@example.net", "hidden@example.net"]
    assert b"Bcc" not in first.data and b"hidden@" not in first.data
    assert b"\r\nline one\r\n.\r\nline after a dot\r\n" in first.data
    assert b"From: web@example.org\r\n" in first.data

    # Debian cron: -FCronDaemon -i -B8BITMIME -oem USER; default sender is user@hostname.
    cron = await asendmail(
        config,
        "-FCronDaemon",
        "-i",
        "-B8BITMIME",
        "-oem",
        "admin@example.net",
        stdin="Subject: Cron <root@h> backup\n\nsauvegardé\n".encode(),
    )
    assert cron.returncode == 0, cron.stderr
    second = (await upstream.wait_for(2))[1]
    assert second.mail_from == "cronuser@relay.test"
    assert b"From: CronDaemon <cronuser@relay.test>\r\n" in second.data
    assert "sauvegardé".encode() in second.data

    # Without -i a lone dot ends the message (old sendmail semantics).
    dotted = await asendmail(config, "x@example.net", stdin=b"Subject: d\n\nkept\n.\ndropped\n")
    assert dotted.returncode == 0, dotted.stderr
    third = (await upstream.wait_for(3))[2]
    assert b"kept\r\n" in third.data and b"dropped" not in third.data
    code, _ = await daemon.terminate()
    assert code == 0
    assert [e["client"] for e in daemon.find("queued")] == ["127.0.0.1"] * 3  # via SMTP


async def test_daemon_down_queues_directly_and_the_daemon_sends_it_later(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    result = await asendmail(config, "-t", stdin=b"To: late@example.net\nSubject: queued\n\nbody\n")
    assert result.returncode == 0, result.stderr
    listed = run_cli("queue", "list", "-c", str(config))
    assert "late@example.net" in listed.stdout and "queued" in listed.stdout
    assert upstream.received == []

    daemon = await launch.start_ready(config, port)
    (received,) = await upstream.wait_for(1)
    assert received.mail_from == "cronuser@relay.test" and received.recipients == [
        "late@example.net"
    ]
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"Received: by relay.test (relayd sendmail, from userid ")
    assert b"\r\nMessage-ID: <relayd." in head and b"\r\nDate: " in head
    code, _ = await daemon.terminate()
    assert code == 0


async def test_exit_codes(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    message = b"Subject: s\n\nbody\n"
    usage = [
        await asendmail(config, stdin=message),  # no recipients
        await asendmail(config, "-bs", stdin=message),
        await asendmail(config, "-f", stdin=message),
    ]
    assert [r.returncode for r in usage] == [EX_USAGE] * 3
    assert b"no recipients" in usage[0].stderr
    bad = await asendmail(config, "-t", stdin=b"To: not an address\n\nx\n")
    assert bad.returncode == EX_DATAERR and b"bad address" in bad.stderr

    # A configuration that cannot be loaded (here: its password file is unreadable, as for
    # www-data) and nothing listening at its server.listen: temporary failure, nothing
    # queued, and the caller keeps the message.
    unreadable = tmp_path / "unreadable.toml"
    unreadable.write_text(
        config.read_text().replace(
            'auth = "none"',
            'auth = "password"\nusername = "u"\npassword_file = "/nonexistent/secret"\n'
            "allow_plaintext_auth = true",
        )
    )
    down = await asendmail(unreadable, "a@example.net", stdin=message)
    assert down.returncode == EX_TEMPFAIL, down.stderr
    assert b"nothing was queued" in down.stderr and b"/nonexistent/secret" in down.stderr

    # The daemon refuses: oversize is permanent (552 -> EX_DATAERR); a client outside
    # allowed_networks is a configuration problem (554 at the greeting -> EX_CONFIG).
    text = config.read_text().replace(
        'hostname = "relay.test"', 'hostname = "relay.test"\nmax_message_size = "2KB"'
    )
    config.write_text(text)
    daemon = await launch.start_ready(config, port)
    big = await asendmail(
        config, "a@example.net", stdin=b"Subject: big\n\n" + b"x" * 900 + b"\n" * 4 * 1
    )
    assert big.returncode == 0, big.stderr
    huge = await asendmail(
        config, "a@example.net", stdin=b"Subject: big\n\n" + (b"x" * 900 + b"\n") * 4
    )
    assert huge.returncode == EX_DATAERR and b"552" in huge.stderr
    code, _ = await daemon.terminate()
    assert code == 0
    config.write_text(
        text.replace(
            'hostname = "relay.test"', 'hostname = "relay.test"\nallowed_networks = ["10.0.0.0/8"]'
        )
    )
    daemon = await launch.start_ready(config, port)
    denied = await asendmail(config, "a@example.net", stdin=message)
    assert denied.returncode == EX_CONFIG and b"554" in denied.stderr
    code, _ = await daemon.terminate()
    assert code == 0


LONG_HTML = "<p>" + "<b>caf\u00e9</b> = 1 " * 130 + "</p>"  # 1,562 bytes on one line


def wire_lines_and_payload(data: bytes) -> tuple[int, bytes]:
    """The longest line the upstream received, and the body as a mail program decodes it."""
    payload = email.message_from_bytes(data).get_payload(decode=True)
    assert isinstance(payload, bytes)
    return max(len(line) for line in re.split(rb"\r\n|\r|\n", data)), payload


async def test_php_mail_with_a_long_html_line(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    """Issue 15: PHP's mail() returned false (relayd-sendmail exit 65) for a 1,560-byte line."""
    php = shutil.which("php")
    if php is None:
        if os.environ.get("CI") == "true":
            pytest.fail("php-cli is required under CI (apt-get install php-cli)")
        pytest.skip("php-cli is not installed (apt-get install php-cli)")
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    await launch.start_ready(config, port)
    sendmail_path = shlex.join([*sendmail_command(), "-c", str(config), "-t", "-i"])
    script = (
        "exit(mail('someone@example.net', 'report', getenv('BODY'),"
        ' "MIME-Version: 1.0\\r\\nContent-Type: text/html; charset=utf-8\\r\\n'
        'From: web@example.org") ? 0 : 1);'
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [php, "-d", f"sendmail_path={sendmail_path}", "-r", script],
        capture_output=True,
        timeout=30,
        env=child_env(LOGNAME="www-data", BODY=LONG_HTML + "\nthe end\n"),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr  # mail() returned true
    (received,) = await upstream.wait_for(1)
    longest, payload = wire_lines_and_payload(received.data)
    assert longest <= 998
    assert payload.rstrip(b"\r\n") == (LONG_HTML + "\r\nthe end").encode()  # PHP adds a newline


async def test_daemon_down_a_long_line_is_queued_wire_safe(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    body = LONG_HTML.encode() + b"\n"
    stdin = b"To: a@example.net\nSubject: s\n\n" + body
    strict = tmp_path / "strict.toml"
    strict.write_text(
        config.read_text().replace(
            'hostname = "relay.test"', 'hostname = "relay.test"\nmax_line_length = 998'
        )
    )
    refused = await asendmail(strict, "-t", stdin=stdin)
    assert refused.returncode == EX_DATAERR
    assert b"a line is longer than server.max_line_length (998 bytes)" in refused.stderr
    queued = await asendmail(config, "-t", stdin=stdin)
    assert queued.returncode == 0, queued.stderr
    await launch.start_ready(config, port)
    (received,) = await upstream.wait_for(1)
    longest, payload = wire_lines_and_payload(received.data)
    assert longest <= 998 and payload == body.replace(b"\n", b"\r\n")
