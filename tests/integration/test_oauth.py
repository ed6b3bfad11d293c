"""OAuth2 XOAUTH2 against a local token endpoint and a provider-like SMTP server.

TokenSource: the grants' request bodies, caching and refresh before expiry (virtual time),
rotation written back atomically with mode 0600, refusals, the idle-expiry warning. Then the
daemon end to end: a Microsoft-like upstream that verifies the XOAUTH2 SASL string, and an
`invalid_grant` that holds the upstream with the mail still queued. Then test-upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from relayd import metrics
from relayd.clock import SystemClock
from relayd.config.model import Config, UpstreamConfig, load
from relayd.delivery.oauth import OAuthRefused, TokenSource, TokenSources
from relayd.errors import UpstreamUnavailable
from relayd.tools.probe import probe_upstream
from relayd.types import Notice, RecipientState
from tests.conftest import running
from tests.support.client import message, send
from tests.support.fake_provider import FakeProvider, Login
from tests.support.fakes import FakeClock
from tests.support.tls import PrivateCA
from tests.support.token_endpoint import TokenEndpoint, grant, refusal

REFRESH = "1//refresh-DISTINCTIVE-token-0001"
SECRET = "client-SECRET-distinctive-42"
USER = "reception@thepractice.example"
DAY = 86400.0


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    async with TokenEndpoint() as fake:
        yield fake


@pytest.fixture
def ca() -> PrivateCA:
    return PrivateCA()


def write_files(tmp_path: Path) -> None:
    (tmp_path / "oauth").mkdir(exist_ok=True)
    (tmp_path / "oauth" / "refresh").write_text(REFRESH + "\n")
    (tmp_path / "oauth" / "secret").write_text(SECRET + "\n")


def config_text(
    tmp_path: Path,
    endpoint: TokenEndpoint,
    *,
    provider: str = "microsoft365",
    port: int = 587,
    ca_file: Path | None = None,
    flow: str = "refresh",
) -> str:
    write_files(tmp_path)
    grant_keys = (
        f'refresh_token_file = "{tmp_path / "oauth" / "refresh"}"'
        if flow == "refresh"
        else 'tenant_id = "contoso.example"'
    )
    tls = f'tls_ca_file = "{ca_file}"' if ca_file else ""
    return textwrap.dedent(
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

        [upstreams.office]
        provider = "{provider}"
        host = "127.0.0.1"
        port = {port}
        {tls}
        username = "{USER}"
        auth = "xoauth2"
        client_id = "00000000-app-id"
        client_secret_file = "{tmp_path / "oauth" / "secret"}"
        {grant_keys}
        token_url = "{endpoint.url}"
        connect_timeout = "5s"
        timeout = "5s"
        """
    )


def load_config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "relayd.toml"
    path.write_text(text)
    return load(path, environ={})


def office(tmp_path: Path, endpoint: TokenEndpoint, **kwargs: Any) -> UpstreamConfig:
    return load_config(tmp_path, config_text(tmp_path, endpoint, **kwargs)).upstreams["office"]


# -- the token protocol -----------------------------------------------------------------------


async def test_refresh_grant_request_and_caching(tmp_path: Path, endpoint: TokenEndpoint) -> None:
    clock = FakeClock()
    source = TokenSource(office(tmp_path, endpoint), clock)
    first = await source.token()
    clock.at += 3600 - 301  # still more than REFRESH_MARGIN (300 s) before expiry
    again = await source.token()

    assert first.value == again.value == "access-token-1"
    assert first.expires_at == clock.at - (3600 - 301) + 3600
    assert endpoint.requests == [
        {
            "grant_type": "refresh_token",
            "client_id": "00000000-app-id",
            "client_secret": SECRET,
            "refresh_token": REFRESH,
            "scope": "https://outlook.office.com/SMTP.Send offline_access",
        }
    ]


async def test_a_token_is_refreshed_before_it_expires(
    tmp_path: Path, endpoint: TokenEndpoint
) -> None:
    clock = FakeClock()
    source = TokenSource(office(tmp_path, endpoint), clock)
    await source.token()
    clock.at += 3600 - 299  # inside the margin: refresh although the token is still valid
    renewed = await source.token()

    assert renewed.value == "access-token-2"
    assert len(endpoint.requests) == 2


async def test_each_new_token_sets_the_expiry_gauge(
    tmp_path: Path, endpoint: TokenEndpoint
) -> None:
    clock = FakeClock()
    source = TokenSource(office(tmp_path, endpoint), clock)

    def gauge() -> float | None:
        name = "relayd_oauth_token_expiry_timestamp_seconds"
        return metrics.REGISTRY.get_sample_value(name, {"upstream": "office"})

    first = await source.token()
    assert gauge() == first.expires_at
    clock.at += 3600 - 299
    renewed = await source.token()
    assert gauge() == renewed.expires_at > first.expires_at


async def test_concurrent_connections_share_one_refresh(
    tmp_path: Path, endpoint: TokenEndpoint
) -> None:
    source = TokenSource(office(tmp_path, endpoint), FakeClock())
    tokens = await asyncio.gather(*(source.token() for _ in range(5)))
    assert {token.value for token in tokens} == {"access-token-1"}
    assert len(endpoint.requests) == 1


async def test_a_rotated_refresh_token_is_written_back_atomically_with_mode_0600(
    tmp_path: Path, endpoint: TokenEndpoint
) -> None:
    clock = FakeClock()
    upstream = office(tmp_path, endpoint)
    token_file = tmp_path / "oauth" / "refresh"
    token_file.chmod(0o644)
    inode = token_file.stat().st_ino
    endpoint.replies.append(grant("access-A", refresh_token="1//rotated-token-0002"))
    source = TokenSource(upstream, clock)
    with capture_logs() as logs:
        await source.token(force=True)
        await source.token(force=True)

    assert token_file.read_text() == "1//rotated-token-0002\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(p.name for p in token_file.parent.iterdir()) == [
        "refresh",
        "refresh.last-used",
        "secret",
    ]  # no temp file left behind
    assert endpoint.requests[1]["refresh_token"] == "1//rotated-token-0002"
    state = json.loads((tmp_path / "oauth" / "refresh.last-used").read_text())
    assert state == {"last_used": clock.at}
    assert any(e["event"] == "oauth_rotated" for e in logs)
    text = repr(logs)
    for secret in (REFRESH, "1//rotated-token-0002", SECRET, "access-A"):
        assert secret not in text


async def test_client_credentials_grant(tmp_path: Path, endpoint: TokenEndpoint) -> None:
    upstream = office(tmp_path, endpoint, flow="client_credentials")
    await TokenSource(upstream, FakeClock()).token()

    assert upstream.oauth_scope == "https://outlook.office365.com/.default"
    assert endpoint.requests == [
        {
            "grant_type": "client_credentials",
            "client_id": "00000000-app-id",
            "client_secret": SECRET,
            "scope": "https://outlook.office365.com/.default",
        }
    ]


async def test_invalid_grant_is_refused_logged_and_noticed_without_secrets(
    tmp_path: Path, endpoint: TokenEndpoint
) -> None:
    notices: list[Notice] = []
    endpoint.replies.append(
        refusal("invalid_grant", f"AADSTS70008: The refresh token {REFRESH} has expired.")
    )
    source = TokenSource(office(tmp_path, endpoint), FakeClock(), notices.append)
    with capture_logs() as logs, pytest.raises(OAuthRefused) as caught:
        await source.token()

    assert caught.value.error == "invalid_grant"
    assert "invalid_grant" in str(caught.value)
    assert REFRESH not in str(caught.value)
    (event,) = [e for e in logs if e["event"] == "oauth_refresh_failed"]
    assert (event["upstream"], event["error"], event["flow"]) == (
        "office",
        "invalid_grant",
        "refresh_token",
    )
    assert event["endpoint"] == endpoint.url
    (notice,) = notices
    assert (notice.kind, notice.upstream) == ("oauth_refresh_failed", "office")
    assert "refresh_token_file" in notice.action
    assert REFRESH not in repr(logs) + repr(notices)
    assert SECRET not in repr(logs) + repr(notices)


async def test_server_errors_and_unreachable_endpoints_are_transient(
    tmp_path: Path, endpoint: TokenEndpoint
) -> None:
    upstream = office(tmp_path, endpoint)
    endpoint.replies.append(refusal("temporarily_unavailable"))
    endpoint.replies.append(refusal("boom", status=503))
    source = TokenSource(upstream, FakeClock())
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await source.token()
    gone = upstream.model_copy(update={"token_url": "http://127.0.0.1:1/token"})
    with pytest.raises(UpstreamUnavailable, match="token endpoint"):
        await TokenSource(gone, FakeClock()).token()


# -- known expiries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "idle_days", "warned"),
    [("microsoft365", 81, True), ("microsoft365", 79, False), ("gmail", 200, False)],
)
async def test_a_refresh_token_unused_for_80_days_is_warned_about_and_renewed(
    tmp_path: Path, endpoint: TokenEndpoint, provider: str, idle_days: int, warned: bool
) -> None:
    clock = FakeClock()
    upstream = office(tmp_path, endpoint, provider=provider)
    state = tmp_path / "oauth" / "refresh.last-used"
    state.write_text(json.dumps({"last_used": clock.at - idle_days * DAY}))
    seen: list[Notice] = []
    sources = TokenSources([upstream], clock, seen.append)
    with capture_logs() as logs:
        notices = await sources.check_expiries()

    assert bool(notices) is warned
    assert [n.kind for n in seen] == (["oauth_token_expiring"] if warned else [])
    assert any(e["event"] == "oauth_token_expiring" for e in logs) is warned
    if warned:
        assert f"last used {idle_days}d ago" in notices[0].summary
        assert "in 9d" in notices[0].summary
        assert len(endpoint.requests) == 1  # renewed by using it
        assert json.loads(state.read_text()) == {"last_used": clock.at}
    else:
        assert endpoint.requests == []


# -- the daemon end to end --------------------------------------------------------------------


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_the_daemon_delivers_with_xoauth2_to_a_microsoft_like_upstream(
    tmp_path: Path, endpoint: TokenEndpoint, ca: PrivateCA
) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.xoauth2_tokens = {"access-token-1"}
        text = config_text(tmp_path, endpoint, port=fake.port, ca_file=ca.save(tmp_path / "ca"))
        config = load_config(tmp_path, text)
        async with running(config) as daemon:
            port = daemon.addresses[0][1]
            with capture_logs() as logs:
                await send(port, message(), mail_from="app@example.org")
                await send(port, message(subject="two"), mail_from="app@example.org")
                await wait_for(lambda: len(fake.messages) == 2)

    assert fake.sasl[0] == f"user={USER}\x01auth=Bearer access-token-1\x01\x01".encode()
    assert fake.logins == [Login("XOAUTH2", USER, "access-token-1")]  # one connection, reused
    assert len(endpoint.requests) == 1
    # Microsoft 365 wants the account as envelope sender.
    assert [mail_from for mail_from, _ in fake.envelopes] == [USER, USER]
    assert "access-token-1" not in repr(logs)


async def test_invalid_grant_holds_the_upstream_and_keeps_the_mail_queued(
    tmp_path: Path, endpoint: TokenEndpoint, ca: PrivateCA
) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.xoauth2_tokens = {"access-token-1"}
        endpoint.replies.append(refusal("invalid_grant", "Token has been expired or revoked."))
        text = config_text(tmp_path, endpoint, port=fake.port, ca_file=ca.save(tmp_path / "ca"))
        config = load_config(tmp_path, text)
        async with running(config) as daemon:
            store = daemon.store
            assert store is not None
            with capture_logs() as logs:
                await send(daemon.addresses[0][1], message())
                await wait_for(lambda: any(e["event"] == "upstream_auth_failed" for e in logs))
                # The outcome is written after that line is logged: wait for its own line.
                await wait_for(lambda: any(e["event"] == "deferred" for e in logs))
                hold = await store.upstream_hold("office")
                (view,) = await store.list_messages()
                await asyncio.sleep(0.5)  # the held upstream makes no further attempt

    assert hold is not None and hold.until is None
    assert "OAuth2" in hold.reason and "invalid_grant" in hold.reason
    (rcpt,) = view.recipients
    assert rcpt.state is RecipientState.DEFERRED
    assert rcpt.wait_reason is not None and "upstream paused" in rcpt.wait_reason
    assert [e["event"] for e in logs].count("oauth_refresh_failed") == 1
    (held,) = [e for e in logs if e["event"] == "upstream_auth_failed"]
    assert "write it to refresh_token_file" in held["hint"]
    assert len(endpoint.requests) == 1
    assert fake.logins == [] and fake.messages == []
    assert REFRESH not in repr(logs) and SECRET not in repr(logs)


# -- test-upstream --------------------------------------------------------------------------------


async def test_test_upstream_refreshes_the_token_then_logs_in(
    tmp_path: Path, endpoint: TokenEndpoint, ca: PrivateCA
) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.xoauth2_tokens = {"access-token-1"}
        upstream = office(tmp_path, endpoint, port=fake.port, ca_file=ca.save(tmp_path / "ca"))
        steps = await probe_upstream(upstream, "relay.test", SystemClock())

    assert [(s.name, s.ok) for s in steps][-2:] == [("token", True), ("auth", True)]
    assert steps[-2].detail == f"access token from {endpoint.url}, valid for 1h"
    assert steps[-1].detail.startswith("235 ")
    assert "XOAUTH2 as " + USER in steps[-1].detail


async def test_test_upstream_explains_a_refused_refresh_token(
    tmp_path: Path, endpoint: TokenEndpoint, ca: PrivateCA
) -> None:
    endpoint.replies.append(refusal("invalid_grant", "Token has been expired or revoked."))
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.xoauth2_tokens = set()
        upstream = office(tmp_path, endpoint, port=fake.port, ca_file=ca.save(tmp_path / "ca"))
        steps = await probe_upstream(upstream, "relay.test", SystemClock())

    token = steps[-1]
    assert (token.name, token.ok) == ("token", False)
    assert "invalid_grant (Token has been expired or revoked.)" in token.detail
    assert token.hint is not None and "refresh_token_file" in token.hint
    assert fake.logins == []


async def test_test_upstream_masks_a_token_the_server_echoes(
    tmp_path: Path, endpoint: TokenEndpoint, ca: PrivateCA
) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.xoauth2_tokens = set()  # refuses access-token-1 with Google's challenge
        upstream = office(tmp_path, endpoint, port=fake.port, ca_file=ca.save(tmp_path / "ca"))
        steps = await probe_upstream(upstream, "relay.test", SystemClock())

    auth = steps[-1]
    assert (auth.name, auth.ok) == ("auth", False)
    assert auth.detail.startswith("535 5.7.8")
    assert all("access-token-1" not in step.detail for step in steps)


def test_token_files_keep_their_owner_only_mode(tmp_path: Path) -> None:
    from relayd.delivery.oauth import write_private

    path = tmp_path / "t"
    write_private(path, "x\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
