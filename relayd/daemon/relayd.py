"""Wiring and lifecycle: startup -> run -> shutdown, signals, sd_notify.

Signal handlers only set flags (uvicorn's habit); the work happens in serve(). Shutdown is
ordered and bounded: stop accepting, let SMTP transactions in progress finish, stop leasing,
wait for in-flight deliveries up to queue.shutdown_timeout, cancel the rest (their leases
are released: the next start tries them at once), close the store last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from typing import Any

import structlog

from relayd.bounces.jobs import bounce_poller, polls_with_idle
from relayd.clock import Clock, SystemClock
from relayd.config.model import Config, load
from relayd.daemon.admin import AdminServer, admin_server
from relayd.daemon.heartbeat import run_watchdog, watchdog_interval
from relayd.daemon.reload import reload_config, serve_reloads
from relayd.daemon.schedule import DaemonJobs
from relayd.daemon.sdnotify import notify
from relayd.delivery import transcripts
from relayd.delivery.lane import SessionFactory
from relayd.delivery.lanes import LaneSet
from relayd.delivery.notices import UpstreamNotices
from relayd.delivery.opener import SessionOpener
from relayd.errors import ConfigError
from relayd.intake.handler import IntakeHandler
from relayd.intake.server import IntakeServerFactory
from relayd.intake.workers import KILL_WAIT, IntakeWorkers, check_workers, report_to_main
from relayd.logs import get_logger, set_level
from relayd.notices.sink import make_notifier, reconfigure_notices
from relayd.store import store_for
from relayd.store.base import MessageIntake, QueueOwnership, Store
from relayd.store.instrumented import instrument
from relayd.types import NoticeHook

log = get_logger("daemon")

SERVICE_FAILURE = 1
CANCEL_GRACE = 1.0  # seconds for cancelled deliveries to unwind at shutdown


def node_id(config: Config) -> str:
    """This node's name on a shared queue: queue.node_id, else the host name and the first
    intake address, which two daemons on one host cannot share and a restart keeps."""
    return config.queue.node_id or f"{socket.gethostname()}/{config.server.listen[0]}"


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Relayd:
    """The daemon. `serve()` for tests (in-process), `run()` for the CLI."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        handle_signals: bool = True,
        session_factory: SessionFactory | None = None,
        notices: NoticeHook | None = None,
    ) -> None:
        self.config = config
        self.started_with = config  # what start binds (listen, queue, ...): reloads compare to it
        self.clock = clock or SystemClock()
        self.handle_signals = handle_signals
        self.notifier, self._notice_sink = make_notifier(config)
        notices = notices or self.notifier.hook(self.clock)
        # notices: the operator-notice hook (the Notifier's, when it exists); OAuth2 calls it.
        self.opener = SessionOpener(list(config.upstreams.values()), self.clock, notices)
        self.session_factory = session_factory or self.opener
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.store: Store | None = None
        self.handler: IntakeHandler | None = None
        self.intake: IntakeServerFactory | None = None  # its sessions, closed at shutdown
        self.servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        self.failure: BaseException | None = None
        self.reload_requested = asyncio.Event()  # set by SIGHUP (or a test)
        self.lanes: LaneSet | None = None
        self.admin: AdminServer | None = None
        self._side_tasks: dict[str, asyncio.Task[None]] = {}
        self.jobs: DaemonJobs | None = None  # the periodic jobs; a reload applies its config
        self.workers: IntakeWorkers | None = None  # the intake processes, if serve() has any

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self) -> None:
        for name, upstream in self.config.upstreams.items():
            if upstream.provider != "directory" and not upstream.tls_verify:
                log.warning("tls_verify_disabled", upstream=name)
        if self.config.server.workers > 1:  # intake runs in child processes (intake/workers.py)
            self.workers = IntakeWorkers(self.config)
        self.store = store_for(self.config.queue, node_id(self.config))
        await self.store.open()
        store = instrument(self.store)  # metrics at the verbs (store/instrumented.py)
        log_config = self.config.log
        try:
            await self._claim_queue(self.store)
            transcripts.configure(
                log_config.transcript_dir,
                self.clock,
                log_config.transcript_max_size,
                log_config.transcript_files,
            )
        except BaseException:
            await self.store.close()
            raise
        dispatcher = self.lanes = LaneSet(
            self.config,
            store,
            self.clock,
            self.worker,
            self.session_factory,
            UpstreamNotices(self.notifier),
        )
        delivery = asyncio.create_task(dispatcher.run(), name="dispatcher")
        try:
            if self.workers is None:
                await self._start_intake(store)
            await self._start_admin(store)
            self._start_side_tasks(store)
            self._install_signals()
            if "." not in self.config.server.hostname:
                log.warning(
                    "hostname_not_qualified",
                    hostname=self.config.server.hostname,
                    fix="set server.hostname to this host's fully qualified name (mail.example"
                    ".org): it is in EHLO, Message-IDs and Received lines, which providers check",
                )
            if await self._workers_ready():
                notify("READY=1")
                self.started.set()
                log.info(
                    "started",
                    listen=self.listening(),
                    upstreams=list(self.config.upstreams),
                    worker=self.worker,
                )
            await self._run(delivery)
        finally:
            await self._shutdown(dispatcher, delivery)

    @staticmethod
    async def _claim_queue(store: Store) -> None:
        """One daemon per SQLite queue, or per node id on PostgreSQL: refuse a second, and
        put back at once the mail an earlier run left leased (store/base.py, QueueOwnership)."""
        if isinstance(store, QueueOwnership):
            released = await store.claim_queue()
            if released:
                log.info("leases_released", count=released, reason="left by an earlier run")

    async def _start_intake(self, store: MessageIntake) -> None:
        loop = asyncio.get_running_loop()
        self.handler = IntakeHandler(self.config, store, self.clock)
        factory = self.intake = IntakeServerFactory(self.handler)
        for listen in self.config.server.listen:
            host, port = split_listen(listen)
            server = await loop.create_server(
                factory,
                host,
                port,
                reuse_address=True,
                reuse_port=self.config.server.workers > 1,  # shared with intake workers
            )
            self.servers.append(server)
            for sock in server.sockets:
                self.addresses.append(sock.getsockname()[:2])

    async def _start_admin(self, store: Store) -> None:
        if self.config.admin.listen is not None:
            self.admin = admin_server(
                store, self.clock, self.current_config, self.notifier, self.listening
            )
            await self.admin.start(*split_listen(self.config.admin.listen))

    def current_config(self) -> Config:
        """The configuration in force (read per request by the status page: reloads show)."""
        return self.config

    def _start_side_tasks(self, store: Store) -> None:
        self._notice_sink.store = store
        poller = bounce_poller(self.config, store, self.clock)
        # The periodic jobs run on one scheduler, itself a supervised side task: _shutdown's
        # cancel shuts it down and gives running jobs CANCEL_GRACE (schedule.Schedule.run).
        # APScheduler keeps the system's time, whatever clock the daemon was given.
        self.jobs = DaemonJobs(
            store,
            self.clock,
            self.notifier,
            poller,
            os.environ,
            timeline=SystemClock(),
            grace=CANCEL_GRACE,
        )
        self.jobs.apply(self.config, self.clock.now())
        self._side_tasks = {
            "schedule": asyncio.create_task(self.jobs.schedule.run(), name="schedule"),
            "reload": asyncio.create_task(
                serve_reloads(self.reload_requested, self.reload), name="reload"
            ),
            "oauth-watch": asyncio.create_task(self.opener.tokens.watch(), name="oauth-watch"),
        }
        watchdog = watchdog_interval(os.environ)
        if watchdog is not None:
            task = run_watchdog(watchdog, os.environ)
            self._side_tasks["watchdog"] = asyncio.create_task(task, name="watchdog")
        if poller is not None and polls_with_idle(poller, store):
            task = poller.run(asyncio.Event())  # one IMAP session that IDLEs: not a periodic job
            self._side_tasks["bounce-poller"] = asyncio.create_task(task, name="bounce-poller")
        if self.workers is not None:
            self._side_tasks["intake-workers"] = asyncio.create_task(
                self.workers.run(), name="intake-workers"
            )

    async def _workers_ready(self) -> bool:
        """Wait until every intake worker listens (True), or until one of them fails (False:
        the daemon never says READY=1, and _run reports the failure and stops it)."""
        if self.workers is None:
            return True
        ready = asyncio.ensure_future(self.workers.ready.wait())
        stop = asyncio.ensure_future(self.stop_event.wait())  # SIGTERM while they start
        supervisor = self._side_tasks["intake-workers"]
        await asyncio.wait({ready, stop, supervisor}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        stop.cancel()
        return self.workers.ready.is_set() and not self.stop_event.is_set()

    def listening(self) -> list[str]:
        """The intake addresses that accept connections now."""
        if self.workers is not None:
            return self.workers.listening()
        return [
            f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"
            for server in self.servers
            if server.is_serving()
            for sock in server.sockets
        ]

    async def reload(self) -> None:
        """Re-read the configuration file and swap in what can change (daemon/reload.py)."""
        assert self.lanes is not None
        notify("RELOADING=1")
        config = await reload_config(
            self.config, self.lanes, self._swap_config, self.notifier, self.started_with
        )
        if self.workers is not None and config is not self.config:
            self.workers.reload(config)  # SIGHUP: they read the new file themselves
        self.config = config
        notify("READY=1")

    def _swap_config(self, config: Config) -> None:
        if self.handler is not None:
            self.handler.reconfigure(config)
        if self.jobs is not None:  # the main process: notices and periodic jobs follow
            reconfigure_notices(self.notifier, self._notice_sink, config)
            self.jobs.apply(config, self.clock.now())
        set_level(config.log.level)
        log_config = config.log
        try:
            transcripts.configure(
                log_config.transcript_dir,
                self.clock,
                log_config.transcript_max_size,
                log_config.transcript_files,
            )
        except OSError as exc:
            log.error("transcripts_unavailable", error=str(exc))

    async def _run(self, delivery: asyncio.Task[None]) -> None:
        services = {"dispatcher": delivery, **self._side_tasks}
        stop = asyncio.create_task(self.stop_event.wait(), name="stop-event")
        done, _ = await asyncio.wait(
            {stop, *services.values()}, return_when=asyncio.FIRST_COMPLETED
        )
        stop.cancel()
        for name, task in services.items():
            if task in done and self.failure is None:
                # No service ends by itself: whatever ended it is a failure, and the exit
                # code must say so (systemd's Restart=on-failure).
                self.failure = task.exception() or RuntimeError(f"the {name} stopped")
                log.error("service_failed", service=name, error=repr(self.failure))

    async def _shutdown(self, dispatcher: LaneSet, delivery: asyncio.Task[None]) -> None:
        notify("STOPPING=1")
        log.info("stopping")
        for task in self._side_tasks.values():
            task.cancel()
        if self._side_tasks:
            # Intake workers finish their SMTP transactions like this process does, and are
            # reaped here: they must not outlive the daemon.
            grace = CANCEL_GRACE
            if self.workers is not None:  # intake/workers.py's _stop: its TERM wait, then KILL's
                grace += self.workers.shutdown_timeout + 1 + KILL_WAIT
            await asyncio.wait(self._side_tasks.values(), timeout=grace)
        for server in self.servers:
            server.close()
        if self.intake is not None:
            await self.intake.close_sessions(self.config.queue.shutdown_timeout)
        dispatcher.stop()
        done, _ = await asyncio.wait({delivery}, timeout=self.config.queue.shutdown_timeout)
        if not done:
            log.warning("shutdown_cancelled", in_flight=dispatcher.in_flight)
            delivery.cancel()
            # Bounded too: a cancelled send drops its connection rather than waiting on it.
            await asyncio.wait({delivery}, timeout=CANCEL_GRACE)
        if self.admin is not None:
            await self.admin.close()
        if self.store is not None:
            await self.store.close()
        self._restore_signals()
        log.info("stopped")

    # -- signals --------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)  # only sets a flag

    def _restore_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, *_: Any) -> None:
        """The first TERM/INT only sets the stop flag (graceful); a second INT exits at once."""
        if self.stop_event.is_set() and sig == signal.SIGINT:
            os._exit(1)
        self.stop_event.set()

    async def serve_intake(self) -> None:
        """An intake-only worker process (intake/workers.py): accept and commit, nothing else."""
        structlog.contextvars.bind_contextvars(intake_worker=os.getpid())  # on every event
        self.store = store_for(self.config.queue)
        await self.store.open()
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._start_intake(instrument(self.store))
            self._install_signals()
            log.info("intake_worker_started", listen=self.listening())
            tasks = [
                asyncio.create_task(report_to_main(os.environ, self.stop_event.set)),
                asyncio.create_task(serve_reloads(self.reload_requested, self._reload_intake)),
            ]
            await self.stop_event.wait()
        finally:
            for task in tasks:
                task.cancel()
            for server in self.servers:
                server.close()
            if self.intake is not None:
                await self.intake.close_sessions(self.config.queue.shutdown_timeout)
            await self.store.close()
            self._restore_signals()

    async def _reload_intake(self) -> None:
        """SIGHUP in an intake worker (passed on by the main process): intake policy, log
        level and transcripts, as daemon/reload.py does for the main process."""
        assert self.config.source is not None  # workers need a config file (check_workers)
        try:
            config = await asyncio.to_thread(load, self.config.source)
        except (ConfigError, OSError) as exc:
            log.error("config_reload_failed", config=str(self.config.source), error=str(exc))
            return
        self._swap_config(config)
        self.config = config
        log.info("config_reloaded", config=str(config.source))

    def run(self, *, intake_only: bool = False) -> int:
        """Run until stopped (the CLI's entry point)."""
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            runner = asyncio.run
        if not intake_only:
            check_workers(self.config)
        runner(self.serve_intake() if intake_only else self.serve())
        return SERVICE_FAILURE if self.failure is not None else 0
