"""Authenticated local apps over loopback: STARTTLS, AUTH PLAIN/LOGIN, lockout, routing.

Clients are the stdlib smtplib in a worker thread, as an app would be. A client "from
another host" is simulated by making auth.is_loopback answer False (every test
connection comes from 127.0.0.1, and the rule under test is "loopback or TLS").
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from relayd.config.model import Config
from relayd.intake import auth as intake_auth
from relayd.intake.replies import R454_AUTH_LOCKED, R535_AUTH_FAILED, R553_SENDER_NOT_ALLOWED
from relayd.policy.localauth import hash_password
from relayd.types import RecipientState
from tests.conftest import ConfigFactory, running
from tests.support.client import message
from tests.support.tls import PrivateCA

PASSWORD = "s3cret-Billing-Pass"
OTHER_PASSWORD = "another-Pass-9"
# Hashing takes 0.1 s; once per test session is enough.
HASHES = {"billing-app": hash_password(PASSWORD), "crm": hash_password(OTHER_PASSWORD)}


@pytest.fixture(autouse=True)
def _no_failure_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_auth, "FAILURE_DELAY", 0.0)


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients count as coming from another host (not loopback)."""
    monkeypatch.setattr(intake_auth, "is_loopback", lambda peer: False)


@pytest.fixture
def ca() -> PrivateCA:
    return PrivateCA()


def users_toml(**extra: str) -> str:
    blocks = []
    for name, stored in HASHES.items():
        more = extra.get(name.replace("-", "_"), "")
        blocks.append(f'[[server.users]]\nname = "{name}"\npassword_hash = "{stored}"\n{more}\n')
    return "\n".join(blocks)


@pytest.fixture
def auth_config(make_config: ConfigFactory, tmp_path: Path, ca: PrivateCA) -> Callable[..., Config]:
    """Two capture upstreams: `main` for everyone, `billing` for the user billing-app."""

    def factory(server: str = "", users: str | None = None, tls: bool = True) -> Config:
        if tls:
            cert, key = ca.save_server_files(tmp_path / "tls")
            server += f'\ntls_cert = "{cert}"\ntls_key = "{key}"'
        extra = f"""
[upstreams.billing]
provider = "directory"
path = "{tmp_path / "billing"}"
senders = ["user:billing-app"]

{users_toml() if users is None else users}
"""
        body = f'provider = "directory"\npath = "{tmp_path / "main"}"\nsenders = ["*"]'
        return make_config(body, extra=extra, server=server)

    return factory


def port_of(daemon: Any) -> int:
    return int(daemon.addresses[0][1])


def _session(
    port: int,
    steps: Callable[[smtplib.SMTP], Any],
    context: ssl.SSLContext | None,
) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("app.test")
        if context is not None:
            client.starttls(context=context)
            client.ehlo("app.test")
        return steps(client)


async def session(
    port: int, steps: Callable[[smtplib.SMTP], Any], context: ssl.SSLContext | None = None
) -> Any:
    return await asyncio.to_thread(_session, port, steps, context)


def login_and_send(user: str, password: str, mail_from: str = "app@example.org") -> Any:
    def steps(client: smtplib.SMTP) -> Any:
        # One mechanism: smtplib's login() would try PLAIN, then LOGIN (two failures).
        client.user, client.password = user, password
        client.auth("PLAIN", client.auth_plain)
        return client.sendmail(mail_from, ["someone@example.net"], message())

    return steps


def reply_of(exc: smtplib.SMTPResponseException) -> str:
    assert isinstance(exc.smtp_error, bytes)
    return f"{exc.smtp_code} {exc.smtp_error.decode()}"


async def upstream_of(daemon: Any) -> list[tuple[str, str]]:
    views = await daemon.store.list_messages()
    return [(view.upstream, view.mail_from) for view in views]


# -- over STARTTLS from another host ---------------------------------------------------------


@pytest.mark.usefixtures("remote")
async def test_auth_is_offered_only_after_starttls_and_routes_by_user(
    auth_config: Callable[..., Config], ca: PrivateCA
) -> None:
    config = auth_config()
    async with running(config) as daemon:
        port = port_of(daemon)
        before = await session(port, lambda c: dict(c.esmtp_features))
        after = await session(port, lambda c: dict(c.esmtp_features), ca.client_context())
        with capture_logs() as logs:
            refused = await session(
                port, login_and_send("billing-app", PASSWORD), ca.client_context()
            )
        routes = await upstream_of(daemon)

    assert "starttls" in before
    assert "auth" not in before
    assert "starttls" not in after
    assert after["auth"].split() == ["LOGIN", "PLAIN"]
    assert refused == {}
    assert routes == [("billing", "app@example.org")]
    event = next(e for e in logs if e["event"] == "auth_succeeded")
    assert (event["user"], event["client"]) == ("billing-app", "127.0.0.1")
    assert all(PASSWORD not in repr(entry) for entry in logs)


@pytest.mark.usefixtures("remote")
async def test_auth_without_tls_from_another_host_is_refused(
    auth_config: Callable[..., Config],
) -> None:
    async with running(auth_config()) as daemon:
        offered = await session(port_of(daemon), lambda c: c.has_extn("auth"))
        code, text = await session(port_of(daemon), lambda c: c.docmd("AUTH", "PLAIN AAAA"))

    assert not offered
    assert (code, text.decode()) == (
        538,
        "5.7.11 Encryption required for requested authentication mechanism",
    )


@pytest.mark.usefixtures("remote")
async def test_a_user_without_a_route_of_its_own_goes_the_main_way(
    auth_config: Callable[..., Config], ca: PrivateCA, tmp_path: Path
) -> None:
    async with running(auth_config()) as daemon:
        await session(port_of(daemon), login_and_send("crm", OTHER_PASSWORD), ca.client_context())
        routes = await upstream_of(daemon)
        for _ in range(200):
            files = list((tmp_path / "main").glob("*.eml")) if (tmp_path / "main").exists() else []
            if files:
                break
            await asyncio.sleep(0.05)
    assert routes == [("main", "app@example.org")]
    (eml,) = files
    assert b"with ESMTPSA id " in eml.read_bytes()  # RFC 3848: TLS and AUTH


# -- from loopback -------------------------------------------------------------------------


async def test_loopback_may_auth_without_tls_with_login(
    auth_config: Callable[..., Config],
) -> None:
    async with running(auth_config(tls=False)) as daemon:
        features = await session(port_of(daemon), lambda c: dict(c.esmtp_features))

        def steps(client: smtplib.SMTP) -> Any:
            client.user, client.password = "billing-app", PASSWORD
            code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            assert code == 235
            return client.sendmail("app@example.org", ["someone@example.net"], message())

        assert await session(port_of(daemon), steps) == {}
        routes = await upstream_of(daemon)

    assert features["auth"].split() == ["LOGIN", "PLAIN"]
    assert routes == [("billing", "app@example.org")]


async def test_without_users_no_auth_is_offered_even_over_tls(
    make_config: ConfigFactory, tmp_path: Path, ca: PrivateCA
) -> None:
    cert, key = ca.save_server_files(tmp_path / "tls")
    config = make_config(
        f'provider = "directory"\npath = "{tmp_path / "out"}"',
        server=f'tls_cert = "{cert}"\ntls_key = "{key}"',
    )
    async with running(config) as daemon:
        plain = await session(port_of(daemon), lambda c: dict(c.esmtp_features))
        tls = await session(port_of(daemon), lambda c: dict(c.esmtp_features), ca.client_context())
        code, _ = await session(port_of(daemon), lambda c: c.docmd("AUTH", "PLAIN AGEAYg=="))

    assert "starttls" in plain
    assert "auth" not in plain
    assert "auth" not in tls
    assert code in (535, 538)


# -- require_auth, failures, lockout, allowed senders --------------------------------------


async def test_require_auth_refuses_mail_before_auth(
    auth_config: Callable[..., Config],
) -> None:
    async with running(auth_config(server="require_auth = true", tls=False)) as daemon:
        code, text = await session(port_of(daemon), lambda c: c.docmd("MAIL", "FROM:<a@b.example>"))
        assert await session(port_of(daemon), login_and_send("crm", OTHER_PASSWORD)) == {}

    assert (code, text.decode()) == (530, "5.7.0 Authentication required")


async def test_a_wrong_password_gets_535_and_five_failures_lock_the_client_out(
    auth_config: Callable[..., Config],
) -> None:
    async with running(auth_config(tls=False)) as daemon:
        port = port_of(daemon)
        with capture_logs() as logs:
            for _ in range(5):
                with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                    await session(port, login_and_send("billing-app", "wrong"))
                assert reply_of(caught.value) == R535_AUTH_FAILED
            # Now even the right password is not checked.
            with pytest.raises(smtplib.SMTPResponseException) as locked:
                await session(port, login_and_send("billing-app", PASSWORD))
        assert daemon.store is not None
        assert await daemon.store.list_messages() == []

    assert reply_of(locked.value) == R454_AUTH_LOCKED
    failed = [e for e in logs if e["event"] == "auth_failed"]
    assert [e["failures"] for e in failed] == [1, 2, 3, 4, 5]
    assert all(e["user"] == "billing-app" for e in failed)
    assert any(e["event"] == "auth_locked" for e in logs)
    assert not any(e["event"] == "auth_succeeded" for e in logs)
    assert all("wrong" not in repr(e) and PASSWORD not in repr(e) for e in logs)


async def test_an_unknown_user_is_not_logged_by_name(auth_config: Callable[..., Config]) -> None:
    async with running(auth_config(tls=False)) as daemon:
        with capture_logs() as logs, pytest.raises(smtplib.SMTPAuthenticationError):
            await session(port_of(daemon), login_and_send("my-Password-typo", "x"))

    (event,) = [e for e in logs if e["event"] == "auth_failed"]
    assert event["user"] == "(unknown user)"


async def test_allowed_senders_restrict_the_envelope_sender(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    users = users_toml(billing_app='allowed_senders = ["billing@practice.example"]')
    config = make_config(f'provider = "directory"\npath = "{tmp_path / "out"}"', extra=users)
    async with running(config) as daemon:
        port = port_of(daemon)
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            await session(port, login_and_send("billing-app", PASSWORD, "boss@practice.example"))
        ok = await session(
            port, login_and_send("billing-app", PASSWORD, "billing@practice.example")
        )
        other = await session(port, login_and_send("crm", OTHER_PASSWORD, "boss@practice.example"))
        assert daemon.store is not None
        views = await daemon.store.list_messages()

    assert (caught.value.smtp_code, caught.value.smtp_error.decode()) == (
        553,
        R553_SENDER_NOT_ALLOWED.format(user="billing-app")[4:],
    )
    assert ok == {} and other == {}
    assert sorted(view.mail_from for view in views) == [
        "billing@practice.example",
        "boss@practice.example",
    ]
    assert all(r.state is not RecipientState.FAILED for v in views for r in v.recipients)


async def test_a_reload_brings_new_users_and_keeps_lockouts(
    auth_config: Callable[..., Config], tmp_path: Path
) -> None:
    only_billing = users_toml().split("\n\n[[server.users]]")[0] + "\n"
    config = auth_config(tls=False, users=only_billing)
    assert config.source is not None
    async with running(config) as daemon:
        port = port_of(daemon)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            await session(port, login_and_send("crm", OTHER_PASSWORD))
        assert daemon.handler is not None
        daemon.handler.accounts.limiter.max_failures = 2
        with pytest.raises(smtplib.SMTPAuthenticationError):
            await session(port, login_and_send("billing-app", "wrong"))
        config.source.write_text(config.source.read_text() + "\n" + users_toml().split("\n\n")[1])
        await daemon.reload()
        with pytest.raises(smtplib.SMTPResponseException) as locked:
            await session(port, login_and_send("crm", OTHER_PASSWORD))
        daemon.handler.accounts.limiter.succeeded("127.0.0.1")  # the lockout has passed
        assert await session(port, login_and_send("crm", OTHER_PASSWORD)) == {}

    assert reply_of(locked.value) == R454_AUTH_LOCKED  # the reload forgave nothing
    assert [u.name for u in daemon.config.server.users] == ["billing-app", "crm"]
