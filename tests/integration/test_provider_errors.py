"""The daemon against Gmail-like and Microsoft-like upstreams (STARTTLS, a test CA) that answer
with the providers' documented errors: account problems pause the upstream with the mail still
queued and the log event carrying the hint; per-message refusals fail only that message; the
envelope sender and from_policy reach the provider as the preset and the table say.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from relayd.config.model import Config, load
from relayd.types import RecipientState
from tests.conftest import running
from tests.support.client import message, send
from tests.support.fake_provider import FakeProvider
from tests.support.tls import PrivateCA

SECRET = "app-password-DISTINCTIVE-77"
USER = "practice@gmail.com"


@pytest.fixture
def ca() -> PrivateCA:
    return PrivateCA()


def config_for(tmp_path: Path, ca: PrivateCA, port: int, provider: str, extra: str = "") -> Config:
    (tmp_path / "secret").write_text(SECRET + "\n")
    auth = 'auth = "password"' if provider == "microsoft365" else ""
    text = textwrap.dedent(
        f"""
        [server]
        listen = ["127.0.0.1:0"]
        hostname = "relay.test"

        [queue]
        path = "{tmp_path / "queue.db"}"
        retry = ["200ms", "400ms"]
        lease_time = "10s"
        shutdown_timeout = "5s"

        [log]
        format = "console"

        [upstreams.practice]
        provider = "{provider}"
        host = "127.0.0.1"
        port = {port}
        tls_ca_file = "{ca.save(tmp_path / "ca")}"
        username = "{USER}"
        password_file = "{tmp_path / "secret"}"
        rate_limits = []
        {auth}
        {extra}
        """
    )
    path = tmp_path / "relayd.toml"
    path.write_text(text)
    return load(path, environ={})


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


GMAIL_535 = (
    "535 5.7.8 Username and Password not accepted. Learn more at "
    "https://support.google.com/mail/?p=BadCredentials"
)
GMAIL_534_14 = (
    "534 5.7.14 <https://accounts.google.com/signin/continue> Please log in via your web "
    "browser and then try again."
)
MS_139 = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
)
ACCOUNT_ERRORS = [
    ("gmail", GMAIL_535, "https://myaccount.google.com/apppasswords"),
    ("gmail", "534 5.7.9 Application-specific password required.", "2-Step Verification"),
    ("gmail", GMAIL_534_14, "sign in to the account in a web browser"),
    ("microsoft365", MS_139, "SMTP AUTH is disabled for the tenant or the mailbox"),
    (
        "microsoft365",
        "535 5.7.3 Authentication unsuccessful [LO2P265CA0123.GBRP265.PROD.OUTLOOK.COM]",
        "username is the mailbox's full address",
    ),
    (
        "microsoft365",
        "550 5.7.30 Basic authentication is not supported for Client Submission.",
        'auth = "xoauth2"',
    ),
]


@pytest.mark.parametrize(
    ("provider", "reply", "advice"),
    ACCOUNT_ERRORS,
    ids=[f"{provider}-{reply.split()[1]}" for provider, reply, _ in ACCOUNT_ERRORS],
)
async def test_an_account_error_at_login_pauses_the_upstream_with_the_hint(
    tmp_path: Path, ca: PrivateCA, provider: str, reply: str, advice: str
) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.auth_reply = reply
        config = config_for(tmp_path, ca, fake.port, provider)
        async with running(config) as daemon:
            with capture_logs() as logs:
                await send(daemon.addresses[0][1], message())
                await wait_for(lambda: any(e["event"] == "upstream_auth_failed" for e in logs))
                await asyncio.sleep(0.6)  # past two retry steps: no new attempt while paused
            assert daemon.store is not None
            hold = await daemon.store.upstream_hold("practice")
            (view,) = await daemon.store.list_messages()

    assert hold is not None and hold.until is None and hold.reason == reply
    (rcpt,) = view.recipients
    assert rcpt.state is RecipientState.DEFERRED
    assert rcpt.wait_reason == f"upstream paused: {reply}"
    (event,) = [e for e in logs if e["event"] == "upstream_auth_failed"]
    assert event["smtp_code"] == int(reply[:3])
    assert advice in " ".join(event["hint"].split())
    # One failed login (not one per mechanism: providers lock accounts after a few), then
    # the pause.
    assert [login.mechanism for login in fake.logins] == ["PLAIN"]
    assert fake.messages == []
    assert SECRET not in repr(logs)


async def test_microsoft_tenant_blocked_at_mail_from_pauses_the_upstream(
    tmp_path: Path, ca: PrivateCA
) -> None:
    reply = "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP."
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.mail_reply = reply
        config = config_for(tmp_path, ca, fake.port, "microsoft365")
        async with running(config) as daemon:
            with capture_logs() as logs:
                await send(daemon.addresses[0][1], message())
                await wait_for(lambda: any(e["event"] == "upstream_auth_failed" for e in logs))
                # the outcome is written after the hold: logged once it is in the store
                await wait_for(lambda: any(e["event"] == "deferred" for e in logs))
            assert daemon.store is not None
            (view,) = await daemon.store.list_messages()

    assert view.recipients[0].state is RecipientState.DEFERRED
    (event,) = [e for e in logs if e["event"] == "upstream_auth_failed"]
    assert "release the tenant" in " ".join(event["hint"].split())


async def test_send_as_denied_defers_that_message_and_holds_no_upstream(
    tmp_path: Path, ca: PrivateCA
) -> None:
    """Issue 13: SendAsDenied is the account's permission on one sender; the message waits
    (deferred, failing at max_lifetime) and the upstream is not held for other senders."""
    reply = (
        "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied"
    )
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.mail_reply = reply
        config = config_for(tmp_path, ca, fake.port, "microsoft365")
        async with running(config) as daemon:
            assert daemon.store is not None
            await send(daemon.addresses[0][1], message())
            await wait_for(lambda: bool(fake.logins))
            for _ in range(100):
                (view,) = await daemon.store.list_messages()
                if view.recipients[0].attempts:
                    break
                await asyncio.sleep(0.05)
            hold = await daemon.store.upstream_hold("practice")

    assert view.recipients[0].state is RecipientState.DEFERRED
    assert view.recipients[0].last_reply == reply
    assert hold is None


# -- what the provider receives -----------------------------------------------------------------


async def test_gmail_gets_the_account_as_envelope_sender_and_a_bare_from(
    tmp_path: Path, ca: PrivateCA
) -> None:
    data = message(extra="").replace(
        b"From: App <app@example.org>", b'From: "The Practice" <app@example.org>'
    )
    async with FakeProvider("starttls", ca.server_context()) as fake:
        config = config_for(tmp_path, ca, fake.port, "gmail", extra='from_policy = "bare"')
        async with running(config) as daemon:
            await send(daemon.addresses[0][1], data, mail_from="app@example.org")
            await wait_for(lambda: len(fake.messages) == 1)
            assert daemon.store is not None
            (view,) = await daemon.store.list_messages()

    assert fake.envelopes == [(USER, ["someone@example.net"])]
    (received,) = fake.messages
    headers = received.partition(b"\r\n\r\n")[0]
    assert b"\r\nFrom: app@example.org\r\n" in headers
    assert b"The Practice" not in headers
    # Everything but the From line reaches the provider as the app sent it.
    assert received.replace(
        b"From: app@example.org", b'From: "The Practice" <app@example.org>'
    ).endswith(data)
    assert view.mail_from == "app@example.org"  # the queue keeps what the app sent


async def test_rewrite_from_through_a_generic_upstream(tmp_path: Path, ca: PrivateCA) -> None:
    account = "relay@thepractice.example"
    async with FakeProvider("starttls", ca.server_context()) as fake:
        config = config_for(tmp_path, ca, fake.port, "gmail", extra='from_policy = "rewrite"')
        text = (tmp_path / "relayd.toml").read_text()
        text = text.replace('provider = "gmail"', 'provider = "generic"').replace(USER, account)
        (tmp_path / "relayd.toml").write_text(text)
        config = load(tmp_path / "relayd.toml", environ={})
        async with running(config) as daemon:
            await send(daemon.addresses[0][1], message(), mail_from="app@example.org")
            await wait_for(lambda: len(fake.messages) == 1)

    assert fake.envelopes == [(account, ["someone@example.net"])]  # rewrite: the account sends
    (received,) = fake.messages
    assert (
        f'\r\nFrom: "App" <{account}>\r\nReply-To: App <app@example.org>\r\n'.encode() in received
    )
