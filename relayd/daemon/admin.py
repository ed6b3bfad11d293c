"""The admin HTTP endpoint ([admin] listen): the status page, /healthz, /readyz and /metrics.

The server is web/http.py's (one request per connection, bounded reads, security headers);
this module answers the three machine routes and hands every other path to the status page
(web/app.py). The machine routes change no mail and need no token: a scraper, Docker's
HEALTHCHECK or a load balancer reads them.

- /healthz: the process and its event loop answer (200 always).
- /readyz: 200 when relayd can accept mail: the store commits a durable write (and, on
  SQLite, has room to grow) and every intake listener is serving; otherwise 503. A paused
  upstream (throttled, or AUTH failing) does not make it unready: mail is still accepted and
  queued, and a 503 would get a healthy relay restarted or taken out of service by Docker or
  a load balancer for a provider's quota. The JSON body names every paused upstream under
  "warnings" and gives each upstream's state and last delivery result; the operator notices
  (notices/notifier.py) report pauses too.
- /metrics: Prometheus text format (metrics.py), queue gauges refreshed from the store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from relayd import metrics
from relayd.clock import Clock
from relayd.config.model import Config
from relayd.config.values import is_loopback_host, parse_listen
from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.notices.notifier import Notifier
from relayd.store.base import QueueStats, Readiness, UpstreamHolds
from relayd.tools.probe import probe_upstream
from relayd.units import format_iso
from relayd.web.actions import PageStore
from relayd.web.http import Handler, HttpServer, Request, Response

log = get_logger("admin")

STORE_PROBE_TIMEOUT = 3.0  # a store slower than this to commit a write is not ready
JSON_TYPE = "application/json"
MACHINE_ROUTES = ("/healthz", "/readyz", "/metrics")


class AdminStore(QueueStats, Readiness, UpstreamHolds, Protocol):
    """What the endpoint reads: the depth for /metrics, the readiness probe (a durable
    write), and each upstream's hold."""


class AdminPageStore(AdminStore, PageStore, Protocol):
    """The endpoint's and the status page's (web/) verbs."""


def admin_server(
    store: AdminPageStore,
    clock: Clock,
    config: Callable[[], Config],
    notifier: Notifier,
    listening: Callable[[], list[str]],
) -> AdminServer:
    """The endpoint with the status page on [admin] listen; off loopback the page needs the
    token to be read too (config.model.AdminConfig refuses such a listen without one)."""
    # Imported only here: Jinja2 and the page's modules cost each process that loads them
    # about 2 MiB, and intake workers or a daemon without [admin] listen never serve them.
    from relayd.web.app import StatusApp

    assert config().admin.listen is not None
    host, _ = parse_listen(config().admin.listen or "")
    page = StatusApp(
        store,
        config,
        clock,
        notifier.active,
        probe_upstream,
        loopback=is_loopback_host(host),
    )

    def upstreams() -> list[str]:
        return list(config().upstreams)

    return AdminServer(store, clock, upstreams, listening, page)


def _iso(at: float | None) -> str | None:
    return None if at is None else format_iso(at)


def _json(status: int, document: object) -> Response:
    return Response(status, JSON_TYPE, json.dumps(document, indent=2).encode() + b"\n")


class AdminServer:
    """Serves the machine routes and, when given, the status page (`page`) on every other
    path; `upstreams()` and `listening()` are read on every request, so a reloaded
    configuration is reported at once."""

    def __init__(
        self,
        store: AdminStore,
        clock: Clock,
        upstreams: Callable[[], list[str]],
        listening: Callable[[], list[str]],
        page: Handler | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.upstreams = upstreams
        self.listening = listening
        self.page = page
        self._http = HttpServer(self._route)

    @property
    def address(self) -> tuple[str, int] | None:
        return self._http.address

    async def start(self, host: str, port: int) -> None:
        await self._http.start(host, port)

    async def close(self) -> None:
        await self._http.close()

    async def _route(self, request: Request) -> Response:
        if request.path not in MACHINE_ROUTES:
            if self.page is not None:
                return await self.page(request)
            return _json(404, {"error": "not found", "routes": list(MACHINE_ROUTES)})
        if request.method not in ("GET", "HEAD"):
            return Response(405, JSON_TYPE, b'{"error": "use GET"}\n', (("Allow", "GET, HEAD"),))
        if request.path == "/healthz":
            return _json(200, {"status": "ok"})
        if request.path == "/readyz":
            ready, document = await self.readiness()
            return _json(200 if ready else 503, document)
        metrics.refresh_queue(await self.store.depth(), self.clock.now())
        return Response(200, metrics.CONTENT_TYPE, metrics.render())

    # -- readiness ----------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the JSON document saying why or why not)."""
        problems: list[str] = []
        store_ok, store_error = await self._probe_store()
        if not store_ok:
            problems.append(f"store: {store_error}")
        listening = self.listening()
        if not listening:
            problems.append("intake: not listening")
        upstreams: dict[str, Any] = {}
        warnings: list[str] = []
        for name in self.upstreams():
            upstreams[name] = await self._upstream(name) if store_ok else {"state": "unknown"}
            if upstreams[name]["state"] not in ("ok", "unknown"):
                warnings.append(f"upstream {name}: {upstreams[name]['state']}")
        document = {
            "ready": not problems,
            "problems": problems,
            "warnings": warnings,
            "store": {"ok": store_ok, "error": store_error},
            "intake": {"ok": bool(listening), "listening": listening},
            "upstreams": upstreams,
        }
        return not problems, document

    async def _probe_store(self) -> tuple[bool, str | None]:
        try:
            await asyncio.wait_for(self.store.check_writable(), STORE_PROBE_TIMEOUT)
        except TimeoutError:
            return False, (
                f"no durable write within {STORE_PROBE_TIMEOUT:g}s: another process may hold the "
                "queue's lock (queue.lock_timeout), or the disk or database is too slow"
            )
        except StoreError as exc:
            return False, str(exc)
        return True, None

    async def _upstream(self, name: str) -> dict[str, Any]:
        now = self.clock.now()
        hold = await self.store.upstream_hold(name)
        state, reason, until = "ok", None, None
        if hold is not None and hold.until is None:
            state, reason = "auth_failing", hold.reason
        elif hold is not None and hold.until is not None and hold.until > now:
            state, reason, until = "throttled", hold.reason, hold.until
        last = metrics.last_result(name)
        return {
            "state": state,
            "reason": reason,
            "until": _iso(until),
            "last_result": None
            if last is None
            else {"state": last.state, "reply": last.reply, "at": _iso(last.at)},
        }
