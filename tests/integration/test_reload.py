"""SIGHUP reload of an in-process daemon: what changes at once, what waits for a restart,
and that a bad file changes nothing."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from relayd.config.model import Config
from relayd.daemon import schedule
from relayd.daemon.relayd import Relayd
from relayd.types import RecipientState, UpstreamHold
from tests.conftest import ConfigFactory, running
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream
from tests.support.waits import until


def generic(port: int, extra: str = "") -> str:
    return (
        f'provider = "generic"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        f'auth = "none"\ntimeout = "2s"\nconnect_timeout = "1s"\n{extra}\n'
    )


def source(config: Config) -> Path:
    assert config.source is not None
    return config.source


async def reload(daemon: Relayd, logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    """Ask for a reload as SIGHUP does (the handler only sets this event); its result event."""
    seen = len(logs)
    daemon.reload_requested.set()

    async def done() -> bool:
        return any(e["event"] in ("config_reloaded", "config_reload_failed") for e in logs[seen:])

    await until(done)
    return next(e for e in logs[seen:] if e["event"] in ("config_reloaded", "config_reload_failed"))


async def test_a_reload_fixes_an_upstream_and_its_queued_mail_goes_out(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """Mail deferred against a wrong port is delivered once a reload points at the right one,
    and a new upstream and its route work at once."""
    async with FakeUpstream() as other:
        config = make_config(generic(9))  # port 9: nothing listens, every attempt defers
        path = source(config)
        with capture_logs() as logs:
            async with running(config) as daemon:
                port = daemon.addresses[0][1]
                for index in range(3):
                    await send(port, message(subject=f"m{index}"))

                async def deferred() -> bool:
                    return sum(1 for e in logs if e["event"] == "deferred") >= 3

                await until(deferred)
                text = path.read_text().replace("port = 9\n", f"port = {upstream.port}\n")
                text += '\n[routing]\ndefault = "main"\n\n[upstreams.second]\n'
                text += generic(other.port, 'senders = ["*@second.example"]')
                path.write_text(text)
                result = await reload(daemon, logs)
                assert result["event"] == "config_reloaded"
                assert result["changed"] == ["main"] and result["added"] == ["second"]
                await upstream.wait_for(3)
                await send(port, message(subject="routed"), mail_from="app@second.example")
                (routed,) = await other.wait_for(1)
                assert daemon.config.upstreams["main"].port == upstream.port
    assert b"Subject: routed" in routed.data
    assert sorted(r.data.count(b"Subject: m") for r in upstream.received) == [1, 1, 1]
    assert any(e["event"] == "lane_stopped" and e["upstream"] == "main" for e in logs)


async def test_a_bad_file_is_refused_and_the_old_configuration_keeps_running(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    config = make_config(generic(upstream.port))
    path = source(config)
    good = path.read_text()
    with capture_logs() as logs:
        async with running(config) as daemon:
            for broken in (good + "\n[queue\n", good.replace("timeout = ", "timeout = 5 #")):
                path.write_text(broken)
                result = await reload(daemon, logs)
                assert result["event"] == "config_reload_failed" and result["error"]
                assert daemon.config is config
            assert [a[:2] for a in daemon.notifier.active()] == [
                ("config_reload_failed", str(path))
            ]
            await send(daemon.addresses[0][1], message(subject="still works"))
            await upstream.wait_for(1)
            path.write_text(good)
            assert (await reload(daemon, logs))["event"] == "config_reloaded"
            assert daemon.notifier.active() == []  # cleared: a "resolved" notice follows
    failures = [e for e in logs if e["event"] == "config_reload_failed"]
    assert "invalid TOML" in failures[0]["error"]
    assert "has no unit" in failures[1]["error"]
    assert failures[0]["log_level"] == "error"


async def test_listen_changes_need_a_restart_and_holds_follow_the_settings(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """Changed upstream: new lane, its account pause lifted (the operator changed something);
    unchanged upstream: its pause stays. A new listen address is reported, not bound."""
    async with FakeUpstream() as other:
        extra = '[routing]\ndefault = "main"\n[upstreams.other]\n' + generic(other.port)
        config = make_config(generic(upstream.port), extra=extra)
        path = source(config)
        with capture_logs() as logs:
            async with running(config) as daemon:
                store = daemon.store
                assert store is not None
                for name in ("main", "other"):
                    await store.hold_upstream(UpstreamHold(name, None, "535 5.7.8 bad login"))
                text = path.read_text().replace(
                    'listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:1"]'
                )
                text = text.replace(
                    f"port = {upstream.port}\n", f'port = {upstream.port}\nmin_interval = "1s"\n'
                )
                path.write_text(text)
                result = await reload(daemon, logs)
                assert result["changed"] == ["main"]
                assert await store.upstream_hold("main") is None
                assert await store.upstream_hold("other") is not None
                (restart,) = [e for e in logs if e["event"] == "config_reload_restart_needed"]
                assert restart["keys"] == ["server.listen"]
                # The intake kept its socket; the new config's listen is only reported.
                await send(daemon.addresses[0][1], message(subject="after"))
                await upstream.wait_for(1)

                async def delivered() -> bool:
                    return len(await store.list_messages(state=RecipientState.DELIVERED)) == 1

                await until(delivered)


NOTIFICATIONS = """
[notifications]
mailbox = "ops@old.example"
from = "relayd@relay.test"
digest_interval = "1s"
"""


async def test_a_reload_sends_the_next_notice_to_the_new_mailbox_and_keeps_raised_ones(
    make_config: ConfigFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule, "NOTICES_EVERY", 0.1)
    config = make_config(generic(upstream.port), extra=NOTIFICATIONS)
    path = source(config)

    async def notices(count: int) -> bool:
        return sum(r.mail_from == "relayd@relay.test" for r in upstream.received) >= count

    with capture_logs() as logs:
        async with running(config) as daemon:
            refused = "535 5.7.8 bad login"
            daemon.notifier.raise_("auth_failed", "practice", refused, now=daemon.clock.now())
            await until(lambda: notices(1))
            path.write_text(path.read_text().replace("ops@old.example", "ops@new.example"))
            assert (await reload(daemon, logs))["event"] == "config_reloaded"
            daemon.notifier.raise_("disk_low", "/srv/relayd", "1 MiB free", now=daemon.clock.now())
            await until(lambda: notices(2))
            active = [kind for kind, _, _ in daemon.notifier.active()]
    first, second = [r for r in upstream.received if r.mail_from == "relayd@relay.test"]
    assert first.recipients == ["ops@old.example"]
    assert second.recipients == ["ops@new.example"]
    assert b"Disk space is low (/srv/relayd)" in second.data
    assert b"refuses relayd's credentials" not in second.data  # still raised, told already
    assert active == ["auth_failed", "disk_low"]


async def test_notifications_added_by_a_reload_start_the_notice_round(
    make_config: ConfigFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon started without [notifications] mails what it has raised meanwhile once a
    reload adds the table."""
    monkeypatch.setattr(schedule, "NOTICES_EVERY", 0.1)
    config = make_config(generic(upstream.port))
    path = source(config)
    with capture_logs() as logs:
        async with running(config) as daemon:
            daemon.notifier.raise_("disk_low", "/srv/relayd", "1 MiB free", now=daemon.clock.now())
            path.write_text(path.read_text() + NOTIFICATIONS)
            assert (await reload(daemon, logs))["event"] == "config_reloaded"
            (notice,) = await upstream.wait_for(1)
    assert notice.recipients == ["ops@old.example"]
    assert b"Disk space is low (/srv/relayd)" in notice.data


async def test_a_changed_bounce_imap_account_needs_a_restart(
    make_config: ConfigFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The IMAP poller is built at start: a new [bounces.imap] is named, its password never."""
    monkeypatch.setenv("RELAYD_TEST_IMAP_PASSWORD", "imap-secret-9")
    config = make_config(generic(upstream.port), extra='[bounces]\nmailbox = "b@x.example"\n')
    path = source(config)
    with capture_logs() as logs:
        async with running(config) as daemon:
            imap = '[bounces.imap]\nhost = "127.0.0.1"\nusername = "u"\n'
            path.write_text(
                path.read_text() + imap + 'password_env = "RELAYD_TEST_IMAP_PASSWORD"\n'
            )
            result = await reload(daemon, logs)
            assert result["event"] == "config_reloaded"
            assert daemon.config.bounces is not None and daemon.config.bounces.imap is not None
    (restart,) = [e for e in logs if e["event"] == "config_reload_restart_needed"]
    assert restart["keys"] == ["bounces.imap"]
    assert "imap-secret-9" not in repr(logs)


async def test_a_key_put_back_as_it_runs_needs_no_restart(
    make_config: ConfigFactory, upstream: FakeUpstream
) -> None:
    """Issue 15: admin.listen changed, reloaded (restart needed), changed back to the port
    actually bound, reloaded: that second reload needs no restart (compared with what runs,
    not with the file read last)."""
    config = make_config(generic(upstream.port), extra='[admin]\nlisten = "127.0.0.1:0"\n')
    path = source(config)
    bound = path.read_text()
    with capture_logs() as logs:
        async with running(config) as daemon:
            path.write_text(bound.replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:1"'))
            assert (await reload(daemon, logs))["event"] == "config_reloaded"
            first = [e for e in logs if e["event"] == "config_reload_restart_needed"]
            assert [e["keys"] for e in first] == [["admin.listen"]]
            seen = len(logs)
            path.write_text(bound)
            assert (await reload(daemon, logs))["event"] == "config_reloaded"
            again = [e for e in logs[seen:] if e["event"] == "config_reload_restart_needed"]
            assert again == []
