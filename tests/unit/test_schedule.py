"""daemon/schedule.py: jobs run on the one AsyncIOScheduler with the injected clock's time, a job
that raises is logged and runs again, runs never overlap, shutdown cancels and bounds running
jobs, APScheduler's own logging stays out of the JSON log; which jobs the daemon gets for a
configuration; and the job bodies that are not notices (bounce round, retention purge).

The scheduler runs in real time here, so those tests use tiny intervals and wait for an
event with a generous timeout; nothing asserts how long anything took."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.testing import capture_logs

from relayd.bounces.jobs import bounce_poller, poll_bounces, polls_with_idle
from relayd.bounces.poller import BouncePoller, ImapSettings, PollResult
from relayd.clock import SystemClock
from relayd.daemon.retention import purge_history
from relayd.daemon.schedule import DaemonJobs, Schedule, quiet_apscheduler
from relayd.errors import StoreError
from relayd.notices.notifier import Notifier
from relayd.store.base import Leadership
from relayd.types import RecipientState
from tests.conftest import ConfigFactory
from tests.support.fakes import T0, FakeClock, QueueStore, Sink

WAIT = 10.0  # generous: only a broken scheduler takes this long
DIRECTORY = 'provider = "directory"\npath = "outbox"'


async def until(check: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)


# -- the scheduler ------------------------------------------------------------------------


async def test_a_job_runs_with_the_injected_clocks_now_and_again_each_interval() -> None:
    clock = FakeClock()
    seen: list[float] = []

    async def job(now: float) -> None:
        seen.append(now)
        clock.at += 60

    schedule = Schedule(clock, SystemClock())
    schedule.every("probe", 0.02, job, first=0.0)
    task = asyncio.create_task(schedule.run())
    await until(lambda: len(seen) >= 3)
    await stop(task)
    assert seen[:3] == [T0, T0 + 60, T0 + 120]
    assert not schedule.scheduler.running


async def test_a_job_that_raises_is_logged_and_runs_again() -> None:
    calls: list[float] = []

    async def flaky(now: float) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("boom")

    schedule = Schedule(FakeClock(), SystemClock())
    schedule.every("flaky", 0.02, flaky, first=0.0)
    with capture_logs() as logs:
        task = asyncio.create_task(schedule.run())
        await until(lambda: len(calls) >= 2)
        await stop(task)
    failed = [e for e in logs if e["event"] == "job_failed"]
    assert failed == [
        {
            "event": "job_failed",
            "component": "schedule",
            "job": "flaky",
            "error": "RuntimeError: boom",
            "log_level": "error",
        }
    ]
    assert not [e for e in logs if e["event"] == "scheduler_log"]  # we logged it, not APScheduler


async def test_a_slow_job_never_overlaps_itself_and_the_skip_is_a_structlog_warning() -> None:
    active, most = 0, 0
    release = asyncio.Event()

    async def slow(now: float) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await release.wait()
        finally:
            active -= 1

    schedule = Schedule(FakeClock(), SystemClock())
    schedule.every("slow", 0.02, slow, first=0.0)
    with capture_logs() as logs:
        task = asyncio.create_task(schedule.run())
        await until(lambda: any(e["event"] == "scheduler_log" for e in logs))
        release.set()
        await stop(task)
    assert most == 1
    skipped = next(e for e in logs if e["event"] == "scheduler_log")
    assert skipped["log_level"] == "warning"
    assert skipped["logger"] == "apscheduler.scheduler"
    assert "maximum number of running instances reached" in skipped["message"]


async def test_shutdown_cancels_a_running_job_quietly() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(now: float) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    schedule = Schedule(FakeClock(), SystemClock(), grace=WAIT)
    schedule.every("forever", 60, forever, first=0.0)
    with capture_logs() as logs:
        task = asyncio.create_task(schedule.run())
        await asyncio.wait_for(started.wait(), WAIT)
        await stop(task)
    assert cancelled.is_set()
    assert [e["event"] for e in logs] == []  # no job_failed, no APScheduler traceback


async def test_a_job_that_will_not_stop_is_abandoned_after_the_grace() -> None:
    started, finish, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def stubborn(now: float) -> None:
        started.set()
        while not finish.is_set():
            try:
                await finish.wait()
            except asyncio.CancelledError:
                continue  # ignores the shutdown
        ended.set()

    schedule = Schedule(FakeClock(), SystemClock(), grace=0.05)
    schedule.every("stubborn", 60, stubborn, first=0.0)
    with capture_logs() as logs:
        task = asyncio.create_task(schedule.run())
        await asyncio.wait_for(started.wait(), WAIT)
        await stop(task)
    finish.set()
    await asyncio.wait_for(ended.wait(), WAIT)
    assert {
        "event": "jobs_abandoned",
        "component": "schedule",
        "jobs": ["stubborn"],
        "log_level": "warning",
    } in logs


def test_apscheduler_logs_only_warnings_and_through_structlog() -> None:
    quiet_apscheduler()
    quiet_apscheduler()  # idempotent: still one handler
    root = logging.getLogger("apscheduler")
    assert root.level == logging.WARNING and root.propagate is False
    assert [type(h).__name__ for h in root.handlers].count("_ToStructlog") == 1
    executor = logging.getLogger("apscheduler.executors.default")
    with capture_logs() as logs:
        executor.info('Running job "notices" (scheduled at ...)')
        executor.warning('Run time of job "%s" was missed by %s', "notices", "0:00:09")
    assert logs == [
        {
            "event": "scheduler_log",
            "component": "schedule",
            "logger": "apscheduler.executors.default",
            "message": 'Run time of job "notices" was missed by 0:00:09',
            "exc_info": False,
            "log_level": "warning",
        }
    ]


# -- the daemon's jobs --------------------------------------------------------------------

NOTIFICATIONS = """
[notifications]
mailbox = "ops@x.example"
disk_free_min = "1GiB"
"""
IMAP = """
[bounces]
mailbox = "bounces@x.example"
[bounces.imap]
host = "127.0.0.1"
tls = false
username = "u"
password_env = "IMAP_TEST_PASSWORD"
poll_interval = "2m"
idle = {idle}
"""


class LeaderStore:
    """Enough of a PostgreSQL store for isinstance(store, Leadership)."""

    async def try_lead(self, name: str) -> bool:
        return True

    async def resign(self, name: str) -> None:
        return None


def jobs_of(schedule: Schedule) -> dict[str, tuple[int, bool, int]]:
    return {
        job.id: (job.max_instances, job.coalesce, job.misfire_grace_time)
        for job in schedule.scheduler.get_jobs()
    }


def test_the_daemon_gets_every_periodic_job_as_one_coalesced_instance(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAP_TEST_PASSWORD", "pw")
    config = make_config(DIRECTORY, extra=NOTIFICATIONS + IMAP.format(idle="false"))
    store: Any = object()
    poller = bounce_poller(config, store, FakeClock())
    env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    jobs = DaemonJobs(store, FakeClock(), Notifier(Sink()), poller, env, timeline=SystemClock())
    jobs.apply(config, T0)
    schedule = jobs.schedule
    assert jobs_of(schedule) == {
        "bounces": (1, True, 120),  # IDLE off: a poll round every poll_interval
        "disk": (1, True, 5),
        "notices": (1, True, 5),
        "retention": (1, True, 3600),
        "history": (1, True, 60),
        "status": (1, True, 15),
    }


def test_an_idle_poller_is_a_task_not_a_job_unless_the_store_elects_a_leader(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAP_TEST_PASSWORD", "pw")
    config = make_config(DIRECTORY, extra=IMAP.format(idle="true"), queue='retention = "0s"')
    single: Any = object()
    poller = bounce_poller(config, single, FakeClock())
    assert poller is not None and polls_with_idle(poller, single)
    alone = DaemonJobs(single, FakeClock(), Notifier(Sink()), poller, {}, timeline=SystemClock())
    alone.apply(config, T0)
    # No notifications, retention off, no systemd, IDLE a task: only the page's history.
    assert alone.schedule.job_names() == ["history"]
    assert isinstance(LeaderStore(), Leadership)
    leader: Any = LeaderStore()
    assert not polls_with_idle(poller, leader)
    shared = DaemonJobs(leader, FakeClock(), Notifier(Sink()), poller, {}, timeline=SystemClock())
    shared.apply(config, T0)
    assert shared.schedule.job_names() == ["bounces", "history"]


# -- job bodies ---------------------------------------------------------------------------


@dataclass
class FakePoller:
    """poll_once and settings.account, as poll_bounces uses them."""

    settings: ImapSettings = field(
        default_factory=lambda: ImapSettings(host="127.0.0.1", username="u", password="p")
    )
    polls: list[float] = field(default_factory=list)
    error: Exception | None = None

    async def poll_once(self, now: float) -> PollResult:
        self.polls.append(now)
        if self.error is not None:
            raise self.error
        return PollResult()


@dataclass
class Leads:
    leading: bool

    async def try_lead(self, name: str) -> bool:
        assert name == "bounces"
        return self.leading

    async def resign(self, name: str) -> None:
        return None


async def test_a_bounce_round_polls_only_on_the_leader_and_logs_a_failure() -> None:
    poller = FakePoller()
    as_poller: BouncePoller = poller  # type: ignore[assignment]
    await poll_bounces(as_poller, Leads(False), T0)
    assert poller.polls == []
    await poll_bounces(as_poller, Leads(True), T0 + 120)
    assert poller.polls == [T0 + 120]
    poller.error = StoreError("database is locked")
    with capture_logs() as logs:
        await poll_bounces(as_poller, Leads(True), T0 + 240)
    assert logs == [
        {
            "event": "bounce_poll_failed",
            "component": "report_tasks",
            "account": "u@127.0.0.1:993/INBOX",
            "error": "StoreError: database is locked",
            "log_level": "error",
        }
    ]


@dataclass
class PurgingStore:
    purged: int = 3
    cutoffs: list[float] = field(default_factory=list)
    error: StoreError | None = None

    async def purge_finished(self, before: float) -> int:
        self.cutoffs.append(before)
        if self.error is not None:
            raise self.error
        return self.purged


async def test_the_retention_purge_deletes_history_older_than_the_retention() -> None:
    store = PurgingStore()
    purge = purge_history
    with capture_logs() as logs:
        assert await purge(store, T0, retention=86400.0) == 3  # type: ignore[arg-type]
    assert store.cutoffs == [T0 - 86400.0]
    assert logs == [
        {
            "event": "history_purged",
            "component": "retention",
            "messages": 3,
            "retention_seconds": 86400.0,
            "log_level": "info",
        }
    ]
    assert await purge(store, T0, retention=0.0) == 0  # type: ignore[arg-type]  # 0 keeps history for ever
    assert store.cutoffs == [T0 - 86400.0]
    store.error = StoreError("disk I/O error")
    with capture_logs() as logs:
        assert await purge(store, T0 + 3600, retention=86400.0) == 0  # type: ignore[arg-type]
    assert logs == [
        {
            "event": "store_error",
            "component": "retention",
            "job": "retention",
            "error": "disk I/O error",
            "log_level": "error",
        }
    ]


def test_misfire_grace_is_one_interval_in_whole_seconds() -> None:
    schedule = Schedule(FakeClock(), SystemClock())

    async def job(now: float) -> None:
        return None

    schedule.every("fast", 0.1, job)
    schedule.every("slow", 90.5, job)
    assert {job.id: job.misfire_grace_time for job in schedule.scheduler.get_jobs()} == {
        "fast": 1,
        "slow": math.ceil(90.5),
    }


# -- a reload ----------------------------------------------------------------------------


def next_runs(schedule: Schedule) -> dict[str, Any]:
    return {job.id: job.next_run_time for job in schedule.scheduler.get_jobs()}


async def test_a_reload_gives_the_jobs_new_values_and_drops_what_is_no_longer_asked_for(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same round object (its state carries over) with the new thresholds; a backlog raised
    under the old threshold ends; the disk check goes and its disk_low with it; unchanged
    jobs keep their next run; the poller forwards to the new bounce mailbox."""
    monkeypatch.setenv("IMAP_TEST_PASSWORD", "pw")
    imap = IMAP.format(idle="false")
    first = make_config(DIRECTORY, extra=NOTIFICATIONS + "backlog_depth = 1\n" + imap)
    store = QueueStore()
    store.counts_[RecipientState.QUEUED] = 2
    notifier = Notifier(Sink())
    poller = bounce_poller(first, store, FakeClock())  # type: ignore[arg-type]
    assert poller is not None
    env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    jobs = DaemonJobs(store, FakeClock(), notifier, poller, env, timeline=SystemClock())  # type: ignore[arg-type]
    jobs.apply(first, T0)
    jobs.schedule.scheduler.start(paused=True)  # next run times, and no run: rounds by hand
    assert jobs.schedule.job_names() == [
        "bounces",
        "disk",
        "history",
        "notices",
        "retention",
        "status",
    ]
    before = next_runs(jobs.schedule)
    notices = jobs.notices
    assert notices is not None
    await notices(T0)
    queue_dir = str(first.queue.path.parent)
    notifier.raise_("disk_low", queue_dir, "1 MiB free", now=T0)  # as the disk check would
    assert sorted(notifier.active()) == [
        ("disk_low", queue_dir, T0),
        ("queue_backlog", "more than 1 recipients waiting", T0),
    ]

    text = NOTIFICATIONS.replace('disk_free_min = "1GiB"', "backlog_depth = 5")
    changed = imap.replace("bounces@x.example", "dsn@x.example")
    second = make_config(DIRECTORY, extra=text + changed, queue='retention = "0s"')
    jobs.apply(second, T0 + 60)
    assert jobs.schedule.job_names() == ["bounces", "history", "notices", "status"]
    assert jobs.notices is notices and notices.watch.n.backlog_depth == 5
    after = next_runs(jobs.schedule)
    assert all(after[name] == before[name] for name in ("bounces", "notices", "status"))
    assert notifier.active() == [("queue_backlog", "more than 1 recipients waiting", T0)]
    assert poller.store.config is second  # type: ignore[attr-defined]
    store.counts_[RecipientState.QUEUED] = 6
    await notices(T0 + 65)
    assert notifier.active() == [("queue_backlog", "more than 5 recipients waiting", T0 + 65)]

    jobs.apply(make_config(DIRECTORY, extra=changed), T0 + 120)  # [notifications] removed
    assert jobs.schedule.job_names() == ["bounces", "history", "retention", "status"]
    assert jobs.notices is None and notifier.active() == []
    jobs.schedule.scheduler.shutdown(wait=False)
