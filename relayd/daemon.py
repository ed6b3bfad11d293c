"""Wiring and lifecycle: startup -> run -> shutdown, signals, sd_notify.

Signal handlers only set flags (uvicorn's habit); the work happens in serve(). Shutdown is
ordered and bounded: stop accepting, let SMTP transactions in progress finish, stop leasing,
wait for in-flight deliveries up to queue.shutdown_timeout, cancel the rest (their leases
expire and the mail is retried), close the store last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from typing import Any

from relayd.clock import Clock, SystemClock
from relayd.config import Config
from relayd.delivery import open_session
from relayd.dispatch import Dispatcher, SessionFactory
from relayd.intake import IntakeHandler, make_server_factory
from relayd.logs import get_logger
from relayd.sdnotify import notify
from relayd.store import open_store
from relayd.store.base import Store

log = get_logger("daemon")

STARTUP_FAILURE = 3
SERVICE_FAILURE = 1
CANCEL_GRACE = 1.0  # seconds for cancelled deliveries to unwind at shutdown


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
        session_factory: SessionFactory = open_session,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.handle_signals = handle_signals
        self.session_factory = session_factory
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.store: Store | None = None
        self.handler: IntakeHandler | None = None
        self.servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        self._force = False
        self.failure: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self) -> None:
        for name, upstream in self.config.upstreams.items():
            if upstream.provider != "directory" and not upstream.tls_verify:
                log.warning("tls_verify_disabled", upstream=name)
        self.store = open_store(self.config.queue.backend, self.config.queue.path)
        await self.store.open()
        dispatcher = Dispatcher(
            self.config, self.store, self.clock, self.worker, self.session_factory
        )
        delivery = asyncio.create_task(dispatcher.run(), name="dispatcher")
        try:
            await self._start_intake(self.store)
            self._install_signals()
            notify("READY=1")
            self.started.set()
            log.info(
                "started",
                listen=[f"{h}:{p}" for h, p in self.addresses],
                upstreams=list(self.config.upstreams),
                worker=self.worker,
            )
            await self._run(delivery)
        finally:
            await self._shutdown(dispatcher, delivery)

    async def _start_intake(self, store: Store) -> None:
        loop = asyncio.get_running_loop()
        self.handler = IntakeHandler(self.config, store, self.clock)
        factory = make_server_factory(self.handler)
        for listen in self.config.server.listen:
            host, port = split_listen(listen)
            server = await loop.create_server(factory, host, port, reuse_address=True)
            self.servers.append(server)
            for sock in server.sockets:
                self.addresses.append(sock.getsockname()[:2])

    async def _run(self, delivery: asyncio.Task[None]) -> None:
        stop = asyncio.create_task(self.stop_event.wait(), name="stop-event")
        done, _ = await asyncio.wait({stop, delivery}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if delivery in done:
            # The dispatcher never ends by itself: whatever ended it is a failure, and the
            # exit code must say so (systemd's Restart=on-failure).
            self.failure = delivery.exception() or RuntimeError("the dispatcher stopped")
            log.error("service_failed", service="dispatcher", error=repr(self.failure))

    async def _shutdown(self, dispatcher: Dispatcher, delivery: asyncio.Task[None]) -> None:
        notify("STOPPING=1")
        log.info("stopping")
        for server in self.servers:
            server.close()
        if self.handler is not None:
            await self.handler.close_sessions(self.config.queue.shutdown_timeout)
        dispatcher.stop()
        done, _ = await asyncio.wait({delivery}, timeout=self.config.queue.shutdown_timeout)
        if not done:
            log.warning("shutdown_cancelled", in_flight=dispatcher.in_flight)
            delivery.cancel()
            # Bounded too: a cancelled send drops its connection rather than waiting on it.
            await asyncio.wait({delivery}, timeout=CANCEL_GRACE)
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

    def _restore_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, *_: Any) -> None:
        """Only sets flags: the first TERM/INT stops gracefully, a second INT forces."""
        if self.stop_event.is_set() and sig == signal.SIGINT:
            self._force = True
            os._exit(1)
        self.stop_event.set()

    def run(self) -> int:
        """Run until stopped (the CLI's entry point)."""
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            runner = asyncio.run
        runner(self.serve())
        return SERVICE_FAILURE if self.failure is not None else 0
