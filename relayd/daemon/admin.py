"""The admin HTTP endpoint ([admin] listen): /healthz, /readyz and /metrics.

A minimal HTTP/1.1 server on asyncio.start_server in the daemon's loop: three GET routes, one
request per connection, bounded reads. It reads the store and the metrics; it changes no mail.

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
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relayd import metrics
from relayd.clock import Clock
from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.store.base import QueueStats, Readiness, UpstreamHolds
from relayd.units import format_iso

log = get_logger("admin")

READ_TIMEOUT = 5.0  # seconds for a client to send its request head
MAX_HEAD = 16 * 1024  # bytes of request line and headers
STORE_PROBE_TIMEOUT = 3.0  # a store slower than this to commit a write is not ready

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[503] = "Service Unavailable"
JSON_TYPE = "application/json"


class AdminStore(QueueStats, Readiness, UpstreamHolds, Protocol):
    """What the endpoint reads: the depth for /metrics, the readiness probe (a durable
    write), and each upstream's hold."""


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


def _iso(at: float | None) -> str | None:
    return None if at is None else format_iso(at)


def _json(status: int, document: object) -> Response:
    return Response(status, JSON_TYPE, json.dumps(document, indent=2).encode() + b"\n")


class AdminServer:
    """Serves the three routes; `upstreams()` and `listening()` are read on every request,
    so a reloaded configuration is reported at once."""

    def __init__(
        self,
        store: AdminStore,
        clock: Clock,
        upstreams: Callable[[], list[str]],
        listening: Callable[[], list[str]],
    ) -> None:
        self.store = store
        self.clock = clock
        self.upstreams = upstreams
        self.listening = listening
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve_client, host, port, limit=MAX_HEAD, reuse_address=True
        )
        self.address = self._server.sockets[0].getsockname()[:2]
        log.info("admin_listening", listen=f"{self.address[0]}:{self.address[1]}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # -- HTTP ---------------------------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        method, path = _request_line(head)
        try:
            response = await self._route(method, path)
        except Exception:
            log.exception("admin_error", path=path)
            response = _json(503, {"error": "internal error; see the relayd log"})
        reason = _REASONS.get(response.status, "")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if response.status == 405:
            lines.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if method != "HEAD":
            writer.write(response.body)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    async def _route(self, method: str, path: str) -> Response:
        if not method:
            return _json(400, {"error": "bad request line"})
        if path not in ("/healthz", "/readyz", "/metrics"):
            return _json(404, {"error": "not found", "routes": ["/healthz", "/readyz", "/metrics"]})
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "use GET"})
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
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


def _request_line(head: bytes) -> tuple[str, str]:
    """(method, path without query) from the request head; ("", "") when malformed."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", ""
    return parts[0].upper(), parts[1].split("?", 1)[0]
