"""relayd.notices.notifier: de-duplication, digests, grace periods and resolved notices, in virtual
time (every call is given `now`; the NoticeHook reads an injected clock)."""

from __future__ import annotations

import email
from email import policy

import pytest
from structlog.testing import capture_logs

from relayd.dsn.build import is_dsn
from relayd.notices.notifier import NoticeKind, Notifier, NotifySettings, render_notice
from relayd.types import Notice
from tests.support.fakes import T0, FakeClock, Sink

HINT = "Gmail needs an app password: turn on 2-Step Verification, then create one."


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def notifier(sink: Sink) -> Notifier:
    return Notifier(sink, NotifySettings(hostname="relay.test", digest_interval=900))


def auth_failed(notifier: Notifier, now: float, upstream: str = "practice") -> None:
    notifier.raise_(
        "auth_failed",
        upstream,
        "535 5.7.8 Username and Password not accepted",
        affected=1,
        hint=HINT,
        now=now,
    )


async def test_a_notice_says_what_since_when_how_many_and_what_to_do(
    notifier: Notifier, sink: Sink
) -> None:
    with capture_logs() as logs:
        auth_failed(notifier, T0)
        sent = await notifier.flush(T0 + 30)

    assert sent
    [(subject, body, at)] = sink.sent
    assert at == T0 + 30
    assert subject == "[relayd relay.test] Upstream practice refuses relayd's credentials"
    assert "PROBLEM: Upstream practice refuses relayd's credentials  [auth_failed]" in body
    assert "Since:      2024-01-02 10:00 UTC (under a minute)" in body
    assert "Affected:   1 message (seen 1 times)" in body
    assert "Detail:     535 5.7.8 Username and Password not accepted" in body
    assert f"What to do: {HINT}" in body
    [raised] = [e for e in logs if e["event"] == "notice"]
    assert raised["log_level"] == "error"
    assert (raised["kind"], raised["key"], raised["hint"]) == ("auth_failed", "practice", HINT)


async def test_an_outage_is_one_notice_not_thousands(notifier: Notifier, sink: Sink) -> None:
    with capture_logs() as logs:
        for n in range(5000):
            auth_failed(notifier, T0 + n)
        await notifier.flush(T0 + 5000)
        for n in range(5000, 6000):
            auth_failed(notifier, T0 + n)
        await notifier.flush(T0 + 6000 + 900)

    assert len(sink.sent) == 1
    assert "Affected:   5000 messages (seen 5000 times)" in sink.sent[0][1]
    assert len([e for e in logs if e["event"] == "notice"]) == 1
    assert notifier.active() == [("auth_failed", "practice", T0)]


async def test_one_digest_per_interval(notifier: Notifier, sink: Sink) -> None:
    auth_failed(notifier, T0)
    assert await notifier.flush(T0)
    notifier.raise_(NoticeKind.DISK_LOW, "/var/lib/relayd", "3% free", affected=0, now=T0 + 60)
    quota = "550 5.4.5 Daily user sending quota exceeded"
    notifier.raise_(NoticeKind.UPSTREAM_THROTTLED, "practice", quota, affected=1, now=T0 + 120)

    assert not await notifier.flush(T0 + 600)  # the last digest is 10 minutes old
    assert await notifier.flush(T0 + 900)
    assert not await notifier.flush(T0 + 2000)  # nothing new

    assert len(sink.sent) == 2
    subject, body, _ = sink.sent[1]
    assert subject == "[relayd relay.test] 2 problems"
    assert "Disk space is low (/var/lib/relayd)" in body
    assert "Upstream practice is throttling relayd" in body
    assert "refuses relayd's credentials" not in body  # told already


async def test_resolved_notice(notifier: Notifier, sink: Sink) -> None:
    auth_failed(notifier, T0)
    await notifier.flush(T0)
    notifier.clear("auth_failed", "practice", T0 + 2 * 3600)

    assert await notifier.flush(T0 + 2 * 3600)
    subject, body, _ = sink.sent[1]
    assert subject == "[relayd relay.test] 1 resolved"
    assert "RESOLVED: Upstream practice refuses relayd's credentials" in body
    assert "From 2024-01-02 10:00 UTC to 2024-01-02 12:00 UTC (2 h); 1 message affected." in body
    assert notifier.active() == []
    assert not await notifier.flush(T0 + 10 * 3600)


async def test_a_condition_that_comes_and_goes_between_digests(
    notifier: Notifier, sink: Sink
) -> None:
    auth_failed(notifier, T0, "practice")
    await notifier.flush(T0)
    auth_failed(notifier, T0 + 10, "backup")
    notifier.clear("auth_failed", "backup", T0 + 70)

    await notifier.flush(T0 + 900)
    subject, body, _ = sink.sent[1]
    assert subject == "[relayd relay.test] 1 resolved"
    assert "RESOLVED: Upstream backup refuses relayd's credentials" in body
    assert "(1 min)" in body
    assert "Detail:     535 5.7.8" in body  # never reported as a problem: say what it was


async def test_unreachable_is_reported_only_past_its_threshold(
    notifier: Notifier, sink: Sink
) -> None:
    with capture_logs() as logs:
        notifier.raise_("upstream_unreachable", "practice", "connection refused", now=T0)
        notifier.raise_("upstream_unreachable", "practice", "connection refused", now=T0 + 300)
        assert not await notifier.flush(T0 + 300)
        notifier.clear("upstream_unreachable", "practice", T0 + 400)  # a blip: no notice
        assert not await notifier.flush(T0 + 2000)
        assert not [e for e in logs if e["event"] == "notice"]

        notifier.raise_("upstream_unreachable", "practice", "timed out", affected=3, now=T0 + 3000)
        assert not await notifier.flush(T0 + 3000 + 599)
        assert await notifier.flush(T0 + 3000 + 600)  # ten minutes down: now it is news

    assert len(sink.sent) == 1
    assert "cannot be reached" in sink.sent[0][0]
    assert "Since:      2024-01-02 10:50 UTC (10 min)" in sink.sent[0][1]
    assert len([e for e in logs if e["event"] == "notice"]) == 1


async def test_thresholds_are_configurable(sink: Sink) -> None:
    notifier = Notifier(sink, NotifySettings(grace={NoticeKind.UPSTREAM_UNREACHABLE: 60}))
    notifier.raise_("upstream_unreachable", "practice", "refused", now=T0)
    assert await notifier.flush(T0 + 60)


async def test_gauges_take_the_latest_value(notifier: Notifier, sink: Sink) -> None:
    for depth in (120, 450, 300):
        notifier.raise_("queue_backlog", "queue", f"{depth} queued", affected=depth, now=T0)
    await notifier.flush(T0)
    body = sink.sent[0][1]
    assert "Affected:   300 messages\n" in body
    assert "Detail:     300 queued" in body


@pytest.mark.parametrize(
    "path", ["/var/lib/relayd", "/var/log/relayd/transcripts"], ids=["queue", "transcripts"]
)
async def test_disk_low_counts_no_messages_and_names_the_path_in_its_advice(
    notifier: Notifier, sink: Sink, path: str
) -> None:
    """The key is the directory measured (the SQLite queue's or the transcripts'): the
    advice names it and fits either; a disk has no "Affected: 0 messages"."""
    detail = f"500.0 MiB free of 100.0 GiB on the file system holding {path}"
    notifier.raise_(NoticeKind.DISK_LOW, path, detail, now=T0)
    notifier.raise_(NoticeKind.DISK_LOW, path, detail, now=T0 + 60)
    assert await notifier.flush(T0 + 60)
    notifier.clear(NoticeKind.DISK_LOW, path, T0 + 3600)
    assert await notifier.flush(T0 + 3600)

    (subject, body, _), (_, resolved, _) = sink.sent
    assert subject == f"[relayd relay.test] Disk space is low ({path})"
    lines = body.splitlines()
    assert lines[2:7] == [
        f"PROBLEM: Disk space is low ({path})  [disk_low]",
        "  Since:      2024-01-02 10:00 UTC (1 min)",
        f"  Detail:     {detail}",
        f"  What to do: Free space on the file system holding {path}. If the queue is "
        "there, relayd refuses new mail with 451 while it is full (apps retry) and never "
        "loses queued mail; SMTP transcripts written there are lost while it is full.",
        "",
    ]
    assert "Affected" not in body
    assert "queue's file system" not in body
    assert f"RESOLVED: Disk space is low ({path})  [disk_low]" in resolved
    assert "  From 2024-01-02 10:00 UTC to 2024-01-02 11:00 UTC (60 min).\n" in resolved
    assert "affected" not in resolved


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        (NoticeKind.CONFIG_RELOAD_FAILED, "/etc/relayd/relayd.toml"),
        (NoticeKind.OAUTH_TOKEN_EXPIRING, "m365"),
        (NoticeKind.OAUTH_REFRESH_FAILED, "m365"),
    ],
)
async def test_notices_that_count_no_messages_print_no_count(
    notifier: Notifier, sink: Sink, kind: NoticeKind, key: str
) -> None:
    notifier.raise_(kind, key, "what happened", now=T0)
    assert await notifier.flush(T0)
    assert "Affected" not in sink.sent[0][1]
    assert "Detail:     what happened" in sink.sent[0][1]


async def test_a_long_condition_is_repeated_after_a_day(notifier: Notifier, sink: Sink) -> None:
    auth_failed(notifier, T0)
    await notifier.flush(T0)
    auth_failed(notifier, T0 + 3600)
    assert not await notifier.flush(T0 + 3600)
    assert await notifier.flush(T0 + 86400)
    assert sink.sent[1][1].startswith("relayd on relay.test")
    assert "STILL A PROBLEM: Upstream practice refuses" in sink.sent[1][1]
    assert "(24 h)" in sink.sent[1][1]


async def test_new_settings_apply_to_the_conditions_already_raised(
    notifier: Notifier, sink: Sink
) -> None:
    """A reload's settings: what was raised stays raised and reported (no second "PROBLEM"),
    and the new digest interval, reminder age, grace and hostname apply from now on."""
    auth_failed(notifier, T0)
    notifier.raise_("upstream_unreachable", "backup", "connection refused", now=T0)
    assert await notifier.flush(T0)  # auth_failed only: unreachable is in its 10-minute grace
    notifier.reconfigure(
        NotifySettings(
            hostname="relay2.test",
            digest_interval=60,
            remind_after=3600,
            grace={NoticeKind.UPSTREAM_UNREACHABLE: 30},
        )
    )
    assert await notifier.flush(T0 + 60)  # 900 s before; past the new 30 s grace
    subject, body, _ = sink.sent[1]
    assert subject == "[relayd relay2.test] Upstream backup cannot be reached"
    assert "refuses relayd's credentials" not in body  # reported before the new settings
    assert await notifier.flush(T0 + 3600)
    assert "STILL A PROBLEM: Upstream practice refuses" in sink.sent[2][1]
    assert [kind for kind, _, _ in notifier.active()] == ["auth_failed", "upstream_unreachable"]


async def test_a_digest_that_cannot_be_enqueued_is_sent_later(
    notifier: Notifier, sink: Sink
) -> None:
    sink.failing = True
    auth_failed(notifier, T0)
    with capture_logs() as logs:
        assert not await notifier.flush(T0)
    [failed] = [e for e in logs if e["event"] == "notice_send_failed"]
    assert failed["log_level"] == "error"

    sink.failing = False
    assert await notifier.flush(T0 + 30)  # no digest went out, so no interval to wait
    assert "refuses relayd's credentials" in sink.sent[0][0]


async def test_hook_for_notice_producers(notifier: Notifier, sink: Sink) -> None:
    clock = FakeClock()
    hook = notifier.hook(clock)
    hook(Notice("oauth_refresh_failed", "m365", "invalid_grant", "Sign in again at ..."))
    await clock.sleep(30)
    with capture_logs() as logs:
        hook(Notice("made_up", "m365", "?"))

    assert notifier.active() == [("oauth_refresh_failed", "m365", T0)]
    assert [e["event"] for e in logs] == ["notice_unknown_kind"]
    await notifier.flush(clock.now())
    assert "What to do: Sign in again at ..." in sink.sent[0][1]


def test_unknown_kinds_are_refused(notifier: Notifier) -> None:
    with pytest.raises(ValueError, match="made_up"):
        notifier.raise_("made_up", "x", "y", now=T0)
    notifier.clear("disk_low", "/never/raised", T0)  # clearing nothing is fine


def test_render_notice() -> None:
    raw = render_notice(
        "[relayd relay.test] 2 problems",
        "relayd on relay.test.\nPROBLEM: ...\n",
        from_addr="relayd@practice.example",
        to="it-alerts@practice.example",
        now=T0,
        message_id="<relayd.238HJPJKCKJLFMR2K@relay.test>",
    )
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["From"] == "relayd@practice.example"
    assert message["To"] == "it-alerts@practice.example"
    assert message["Subject"] == "[relayd relay.test] 2 problems"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"] == "Tue, 02 Jan 2024 10:00:00 +0000"
    assert message.get_content().startswith("relayd on relay.test.")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert not is_dsn(raw)  # if a notice bounces, the bounce mailbox hears of it
