"""[log] transcript_dir: upstream SMTP conversations on disk, AUTH and passwords redacted,
rotated by size."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.clock import SystemClock
from relayd.config.model import Config, load
from relayd.delivery import transcripts
from relayd.delivery.transcripts import MASK, Transcript, redact_command, secret_forms
from tests.conftest import ConfigFactory, running
from tests.support.client import message, send
from tests.support.fake_provider import FakeProvider
from tests.support.tls import PrivateCA
from tests.support.waits import until

PASSWORD = "Tr4nscript-Pa55word-7731"


@pytest.fixture(autouse=True)
def _no_transcripts_after() -> Iterator[None]:
    yield
    transcripts.configure(None, SystemClock())


def with_transcripts(config: Config, directory: Path) -> Config:
    """The same configuration file with [log] transcript_dir set, loaded again."""
    assert config.source is not None
    text = config.source.read_text()
    assert text.count("[log]\n") == 1
    text = text.replace("[log]\n", f'[log]\ntranscript_dir = "{directory}"\n')
    config.source.write_text(text)
    return load(config.source)


def provider_upstream(port: int, ca_file: Path, secret_file: Path) -> str:
    return (
        f'provider = "generic"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "starttls"\n'
        f'tls_ca_file = "{ca_file}"\nusername = "relay@example.net"\nauth = "password"\n'
        f'password_file = "{secret_file}"\ntimeout = "3s"\nconnect_timeout = "3s"\n'
    )


async def test_a_refused_then_accepted_login_is_transcribed_without_secrets(
    tmp_path: Path, make_config: ConfigFactory
) -> None:
    ca = PrivateCA()
    secret = tmp_path / "upstream.secret"
    secret.write_text(PASSWORD + "\n")
    directory = tmp_path / "transcripts"
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.auth_reply = "535 5.7.8 Username and Password not accepted"
        fake.echo_secret = True  # a careless server repeats what it got
        config = with_transcripts(
            make_config(provider_upstream(fake.port, ca.save(tmp_path / "ca"), secret)), directory
        )
        async with running(config) as daemon:
            await send(daemon.addresses[0][1], message(subject="first"))
            store = daemon.store
            assert store is not None
            # The operator retries once the upstream shows as paused: a release before the
            # refused attempt ends would be followed by that attempt's pause.
            await until(lambda: store.upstream_hold("main"))
            assert fake.logins
            fake.auth_reply = None
            await store.release_upstream("main")  # the operator's retry
            await store.retry_now(None, time.time())
            await until(lambda: fake.messages)
    log = (directory / "main.log").read_text()
    encoded = base64.b64encode(f"\0relay@example.net\0{PASSWORD}".encode()).decode()
    assert PASSWORD not in log and encoded not in log
    assert base64.b64encode(PASSWORD.encode()).decode() not in log
    assert f"> AUTH PLAIN {MASK}" in log or f"> AUTH LOGIN {MASK}" in log
    assert "< 535 5.7.8 Username and Password not accepted" in log
    assert "> STARTTLS" in log and "- TLS established" in log
    assert "> MAIL FROM:<app@example.org>" in log and "< 250 2.0.0 OK accepted" in log
    assert "> (message: " in log and "Subject: first" not in log  # no message content
    sessions = {line.split(" ")[1] for line in log.splitlines()}
    assert len(sessions) == 2  # the refused connection and the one that sent


def test_auth_payloads_and_continuations_are_masked() -> None:
    assert redact_command([b"AUTH", b"PLAIN", b"AHVAcA=="], False) == f"AUTH PLAIN {MASK}"
    assert redact_command([b"AUTH", b"LOGIN"], False) == "AUTH LOGIN"
    assert redact_command([b"dXNlcg=="], True) == MASK  # an answer to a 334 challenge
    assert redact_command([b"MAIL", b"FROM:<a@b.example>"], False) == "MAIL FROM:<a@b.example>"
    assert secret_forms("u", "abc") == []  # too short to mask safely
    assert secret_forms("u", "s3cret!") == ["s3cret!", "czNjcmV0IQ==", "AHUAczNjcmV0IQ=="]


def test_files_rotate_and_stay_bounded(tmp_path: Path) -> None:
    transcripts.configure(tmp_path / "t", SystemClock(), max_bytes=2000, files=2)
    transcript = Transcript("busy", ["hidden-secret"])
    for index in range(400):
        transcript.write(">", f"RCPT TO:<user{index}@example.net> hidden-secret")
    transcripts.configure(None, SystemClock())
    files = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert files == ["busy.log", "busy.log.1", "busy.log.2"]
    assert all((tmp_path / "t" / name).stat().st_size <= 2000 for name in files)
    assert "hidden-secret" not in "".join((tmp_path / "t" / n).read_text() for n in files)
    assert "user399@example.net" in (tmp_path / "t" / "busy.log").read_text()
