"""Operator notices end to end: an upstream outage makes ONE digest at the notification
mailbox and a "resolved" one when it is over; a refused login raises auth_failed with the
provider's hint (delivered through notifications.via, a directory upstream)."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from relayd.config.model import load
from relayd.daemon import schedule
from tests.conftest import ConfigFactory, running
from tests.support.client import message, send
from tests.support.fake_provider import FakeProvider
from tests.support.fake_upstream import FakeUpstream, Received
from tests.support.tls import PrivateCA
from tests.support.waits import until

from .test_delivery import generic, port_of
from .test_provider_errors import GMAIL_535, config_for

NOTIFICATIONS = """
[notifications]
mailbox = "ops@practice.example"
from = "relayd@relay.test"
digest_interval = "1s"
unreachable_after = "1s"
"""


@pytest.fixture(autouse=True)
def _fast_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "NOTICES_EVERY", 0.1)


def _text(received: Received) -> tuple[EmailMessage, str]:
    parsed = email.message_from_bytes(received.data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(("plain",))
    assert body is not None
    return parsed, str(body.get_content())


async def test_an_outage_makes_one_digest_then_a_resolved_notice(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    upstream.script.drop_in_data = 10**6  # every DATA: the connection drops (UpstreamUnavailable)
    config = make_config(generic(upstream.port), extra=NOTIFICATIONS)

    def notices() -> list[Received]:
        return [r for r in upstream.received if r.mail_from == "relayd@relay.test"]

    async with running(config) as daemon:
        for _ in range(5):
            await send(port_of(daemon), message(), rcpts=["someone@example.net"])
        await until(lambda: any(c[0] == "upstream_unreachable" for c in daemon.notifier.active()))
        await until(lambda: daemon.notifier._last_digest is not None, timeout=15)
        upstream.script.drop_in_data = 0  # the provider is back
        await until(lambda: len(notices()) >= 2, timeout=20)
        await until(lambda: len(upstream.received) >= 7, timeout=10)
    problem, resolved = notices()[:2]
    assert len(notices()) == 2
    assert problem.recipients == ["ops@practice.example"]
    head, text = _text(problem)
    assert head["Subject"] == "[relayd relay.test] Upstream main cannot be reached"
    assert head["Auto-Submitted"] == "auto-generated"
    assert "PROBLEM: Upstream main cannot be reached  [upstream_unreachable]" in text
    assert "Since:" in text
    # the dropped connection, after the final dot: the upstream may have had the message
    assert "Detail:     no reply to the final dot (connection dropped: Unexpected EOF" in text
    affected = int(text.split("Affected:")[1].split()[0])
    assert affected >= 5
    assert "What to do: Check the network" in text
    head, text = _text(resolved)
    assert "1 resolved" in head["Subject"]
    assert "RESOLVED: Upstream main cannot be reached" in text
    assert daemon.notifier.active() == []


async def test_a_refused_login_raises_auth_failed_with_the_gmail_hint(tmp_path: Path) -> None:
    ca = PrivateCA()
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.auth_reply = GMAIL_535
        config = config_for(tmp_path, ca, fake.port, "gmail")
        assert config.source is not None
        outbox = tmp_path / "outbox"
        with config.source.open("a") as toml:
            toml.write(
                NOTIFICATIONS
                + 'via = "ops"\n\n[upstreams.ops]\nprovider = "directory"\n'
                + f'path = "{outbox}"\n\n[routing]\ndefault = "practice"\n'
            )
        config = load(config.source, environ={})
        async with running(config) as daemon:
            await send(port_of(daemon), message(), rcpts=["someone@example.net"])
            await until(lambda: outbox.exists() and any(outbox.glob("*.eml")), timeout=15)
    (path,) = outbox.glob("*.eml")
    parsed = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == "[relayd relay.test] Upstream practice refuses relayd's credentials"
    body = parsed.get_body(("plain",))
    assert body is not None
    text = " ".join(str(body.get_content()).split())
    assert "[auth_failed]" in text
    assert "535 5.7.8 Username and Password not accepted" in text
    assert "https://myaccount.google.com/apppasswords" in text
