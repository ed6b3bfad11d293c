"""The daemon's one APScheduler (3.x AsyncIOScheduler) and the periodic jobs it runs.

Jobs (`DaemonJobs`): "notices" (the queue checks, then this node's digest), "disk"
(disk_low), "bounces" (one late-bounce poll round, when IMAP IDLE is not in use),
"retention" (the purge of finished messages), "history" (the status page's per-minute
samples) and "status" (systemd STATUS=). Each body is a plain async
function of `now` (notice watches, bounce jobs, retention, heartbeat), tested on an injected
clock without a scheduler; this module only says when they run. Every job is an interval job
with max_instances=1 (a slow round never overlaps the next), coalesce=True (rounds missed
while the loop was busy run once, not in a burst) and a misfire_grace_time of one interval
(a round later than that is skipped: the next one is due soon anyway). The wrapper reads the
injected clock for `now` and logs a job that raises (`job_failed`); the scheduler goes on.
A reload does not restart the scheduler: DaemonJobs.apply gives it the new configuration's
jobs ([notifications], queue.retention), keeping each unchanged job's next run time.

Not jobs, but tasks of the daemon: the IMAP IDLE session (bounces/jobs.polls_with_idle; one
long-lived connection that the server wakes, not a periodic round) and the systemd watchdog
ping (heartbeat.run_watchdog says why).

APScheduler logs through stdlib logging, "Running job ..." at info on every run. Its loggers
are raised to WARNING here, and what is left (a missed or skipped run) goes to structlog as
`scheduler_log`, so the JSON log keeps one JSON event per line and nothing per routine run.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from relayd.bounces.jobs import poll_bounces, polls_with_idle, retarget_poller
from relayd.bounces.poller import BouncePoller
from relayd.clock import Clock
from relayd.config.model import Config
from relayd.daemon.heartbeat import update_status
from relayd.daemon.retention import purge_history
from relayd.logs import get_logger
from relayd.notices.notifier import Notifier
from relayd.notices.watches import DiskWatch, NoticeRound, disk_paths
from relayd.store.base import QueueAdmin, QueueStats, StatusHistory
from relayd.web.history import HistorySampler, first_delay

log = get_logger("schedule")

JobBody = Callable[[float], Awaitable[object]]  # called with the injected clock's `now`
Job = tuple[float, JobBody, float | None]  # Schedule.every's interval, body and first

NOTICES_EVERY = 5.0  # seconds between notice rounds (a digest at most every digest_interval)
DISK_EVERY = 5.0  # seconds between free-space checks (statvfs is cheap; a full disk is urgent)
STATUS_EVERY = 15.0  # seconds between systemd STATUS= updates
RETENTION_EVERY = 3600.0  # seconds between history purges
HISTORY_EVERY = 60.0  # the status page's history is per minute (web/history.py)
RETENTION_FIRST = 60.0  # the first purge waits until startup traffic has settled


class _ToStructlog(logging.Handler):
    """APScheduler's remaining records (WARNING and up) as structlog events."""

    def emit(self, record: logging.LogRecord) -> None:
        method = log.error if record.levelno >= logging.ERROR else log.warning
        method(
            "scheduler_log",
            logger=record.name,
            message=record.getMessage(),
            exc_info=record.exc_info or False,
        )


def quiet_apscheduler() -> None:
    """Route the `apscheduler` loggers to structlog at WARNING (idempotent)."""
    logger = logging.getLogger("apscheduler")
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # the root logger would print plain text into the JSON stream
    if not any(isinstance(handler, _ToStructlog) for handler in logger.handlers):
        logger.addHandler(_ToStructlog())


class Schedule:
    """One AsyncIOScheduler; `every` registers jobs, `run` is the daemon's side task.

    `clock` gives the jobs their `now`; `timeline` is the clock APScheduler runs on, the
    system's whatever clock the jobs are given (a fake clock's time there would schedule
    years of missed runs)."""

    def __init__(self, clock: Clock, timeline: Clock, grace: float = 1.0) -> None:
        quiet_apscheduler()
        self.clock = clock
        self.timeline = timeline
        self.grace = grace  # seconds cancelled jobs get to unwind at shutdown
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._running: dict[asyncio.Task[Any], str] = {}
        self._stopping = False

    def every(
        self, name: str, interval: float, body: JobBody, *, first: float | None = None
    ) -> None:
        """Run `body(now)` every `interval` seconds; the first time after `first` seconds
        when given (0: at start), else after one interval.

        A name already scheduled at the same interval gets the new body and keeps its next
        run time (a reload neither runs it early nor puts it off); at another interval it
        starts over. A run in progress finishes, and max_instances counts it (per name)."""
        job = self.scheduler.get_job(name)
        if job is not None:
            if job.trigger.interval_length == interval:
                job.modify(args=(name, body))
                return
            self.scheduler.remove_job(name)
        when: dict[str, Any] = {}
        if first is not None:
            start = self.timeline.now() + first  # on APScheduler's timeline
            when["next_run_time"] = datetime.fromtimestamp(start, UTC)
        self.scheduler.add_job(
            self._run_job,
            IntervalTrigger(seconds=interval, timezone=UTC),
            args=(name, body),
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, math.ceil(interval)),  # APScheduler wants whole seconds
            **when,
        )

    def job_names(self) -> list[str]:
        return sorted(job.id for job in self.scheduler.get_jobs())

    def keep_only(self, names: Collection[str]) -> None:
        """Remove the other jobs (a run in progress finishes)."""
        for name in self.job_names():
            if name not in names:
                self.scheduler.remove_job(name)

    async def run(self) -> None:
        """Start the scheduler and hold it until cancelled; then shut it down (which cancels
        running jobs) and give them `grace` seconds to unwind, so none outlives the store."""
        self.scheduler.start()
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled at shutdown
        finally:
            await self._stop()

    async def _stop(self) -> None:
        self._stopping = True
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        # AsyncIOScheduler.shutdown only queues the stop (call_soon_threadsafe): let it run.
        await asyncio.sleep(0)
        running = dict(self._running)
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self.grace)
        if late:
            log.warning("jobs_abandoned", jobs=sorted(running[task] for task in late))

    async def _run_job(self, name: str, body: JobBody) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = name
        try:
            await body(self.clock.now())
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cancelled by our own shutdown: end quietly rather than let APScheduler log
            # the CancelledError as a job that raised.
        except Exception as exc:  # logged; the scheduler and the next run go on
            log.error("job_failed", job=name, error=f"{type(exc).__name__}: {exc}")
        finally:
            del self._running[task]


class JobStore(QueueStats, QueueAdmin, StatusHistory, Protocol):
    """What the jobs do to the store: measure the queue (notices, status, the status page's
    history) and purge its finished messages (retention). The bounce poll works through its
    own (BouncePoller.store); of this one it only asks who leads, as the notice round does
    (store.base.leads)."""


class DaemonJobs:
    """The daemon's jobs on one Schedule, for the configuration in force: `apply` at start
    and after every reload adds, keeps and removes them. The notice round and the disk watch
    are kept across reloads and take the new thresholds, so the bounce-rate window and the
    record of what they raised carry over; a condition they can no longer measure is cleared
    (QueueWatch.check, DiskWatch.retarget), not left raised for ever."""

    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        notifier: Notifier,
        poller: BouncePoller | None,
        environ: Mapping[str, str],
        *,
        timeline: Clock,
        grace: float = 1.0,
    ) -> None:
        self.schedule = Schedule(clock, timeline, grace)
        self.store = store
        self.notifier = notifier
        self.poller = poller  # built once at start: [bounces.imap] needs a restart
        self.environ = dict(environ)
        self.notices: NoticeRound | None = None
        self.disk: DiskWatch | None = None
        self.history = HistorySampler(store)

    def apply(self, config: Config, now: float) -> None:
        """Schedule the jobs `config` asks for, with its values; remove the others."""
        store, poller = self.store, self.poller
        jobs = self._notice_jobs(config, now)
        jobs["history"] = (HISTORY_EVERY, self.history.sample, first_delay(now))
        if poller is not None:
            retarget_poller(poller, config)
            if not polls_with_idle(poller, store):
                poll = partial(poll_bounces, poller, store)
                jobs["bounces"] = (poller.settings.poll_interval, poll, 0.0)
        if config.queue.retention > 0:
            purge = partial(purge_history, store, retention=config.queue.retention)
            jobs["retention"] = (RETENTION_EVERY, purge, RETENTION_FIRST)
        if self.environ.get("NOTIFY_SOCKET"):
            status = partial(update_status, store, environ=self.environ)
            jobs["status"] = (STATUS_EVERY, status, 0.0)
        self.schedule.keep_only(jobs)
        for name, (interval, body, first) in jobs.items():
            self.schedule.every(name, interval, body, first=first)

    def _notice_jobs(self, config: Config, now: float) -> dict[str, Job]:
        jobs: dict[str, Job] = {}
        n = config.notifications
        if n is None:
            if self.notices is not None:
                self.notices.watch.release(now)  # no longer measured, and no mailbox to tell
            self.notices = None
        else:
            if self.notices is None:
                self.notices = NoticeRound(self.notifier, self.store, n)
            self.notices.reconfigure(n)
            jobs["notices"] = (NOTICES_EVERY, self.notices, None)
        paths = disk_paths(config)
        minimum = n.disk_free_min if n is not None else None
        if minimum is not None and paths:
            if self.disk is None:
                self.disk = DiskWatch(self.notifier, minimum, paths)
            self.disk.retarget(minimum, paths, now)
            jobs["disk"] = (DISK_EVERY, self.disk.check, 0.0)
        elif self.disk is not None:
            self.disk.retarget(0, [], now)
            self.disk = None
        return jobs
