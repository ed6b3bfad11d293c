"""The status page's routes: who may see and do what (web/auth.py), then the page.

GET  /                         the status page (refreshes itself)
GET  /queue, /queue/ID         the queue with filters, one message
GET  /send-test                the send-test form
GET  /queue/ID/ACTION          "are you sure?" for retry, hold, release, delete
POST /queue/ID/ACTION          do it (token)
POST /upstreams/NAME/test      test credentials: test-upstream's steps (token)
POST /send-test                send a test message and say what became of it (token)
GET|POST /login, POST /logout  enter the token once per browser session

Every POST needs the token, the form's CSRF token (or the bearer header) and its rate limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2

from relayd.clock import Clock
from relayd.config.model import Config
from relayd.units import format_clock
from relayd.web import actions
from relayd.web.actions import PageStore, Probe
from relayd.web.auth import Guard, RateLimit
from relayd.web.charts import DEPTH, TRAFFIC, chart
from relayd.web.http import Request, Response, redirect, text
from relayd.web.status import gather

REFRESH = 5  # seconds between the status page's reloads
HTML = "text/html; charset=utf-8"
_MESSAGE = re.compile(r"^/queue/([\w.-]+)(?:/(retry|hold|release|delete))?$")
_TEST = re.compile(r"^/upstreams/([\w.-]+)/test$")
_LOCAL_PATH = re.compile(r"^/(?![/\\])[\w./?=&+%@*-]*$")  # a path here, no CR/LF, no //host

Notices = Callable[[], Sequence[tuple[str, str, float]]]


class StatusApp:
    """A web/http.py Handler; `config()` is read per request, so a reload shows at once."""

    def __init__(
        self,
        store: PageStore,
        config: Callable[[], Config],
        clock: Clock,
        notices: Notices,
        probe: Probe,
        *,
        loopback: bool,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.notices = notices
        self.probe = probe
        self.loopback = loopback
        self.guard = Guard(lambda: self.config().admin.token)
        self.limits = {
            "login": RateLimit(5, 60.0),
            "test": RateLimit(1, 10.0),  # per upstream: a provider counts failed logins
            "send-test": RateLimit(3, 60.0),
            "queue": RateLimit(30, 60.0),
        }
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("relayd.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["clock"] = format_clock

    async def __call__(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/style.css":
            css = resources.files("relayd.web").joinpath("static/style.css").read_bytes()
            return Response(200, "text/css; charset=utf-8", css)
        if path in ("/login", "/logout"):
            return self._login(request)
        if not self.loopback and not self.guard.authorized(request):
            return redirect("/login")  # off loopback, reading needs the token too
        if method == "POST":
            return await self._post(request)
        if method not in ("GET", "HEAD"):
            return text(405, "use GET or POST\n", (("Allow", "GET, HEAD, POST"),))
        return await self._get(request)

    async def _get(self, request: Request) -> Response:
        path = request.path
        if path == "/":
            return await self._status(request)
        if path == "/queue":
            return await actions.queue_list(self, request)
        if path == "/send-test":  # its own page: a refreshing one would wipe what is typed
            upstreams = list(self.config().upstreams)
            return self.page(request, "send.html", title="Send test", upstreams=upstreams)
        match = _MESSAGE.match(path)
        if match and match.group(2):
            return await actions.confirm(self, request, match.group(1), match.group(2))
        if match:
            return await actions.message(self, request, match.group(1))
        return self.not_found(request, f"No page {path}.")

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        """Render `template` with what every page needs (the CSRF token, who is signed in)."""
        csrf, cookie = self.guard.csrf(request)
        body = self.templates.get_template(template).render(
            csrf=csrf,
            signed_in=self.guard.authorized(request),
            actions_enabled=self.guard.enabled,
            now=self.clock.now(),
            **context,
        )
        headers = (("Set-Cookie", cookie),) if cookie else ()
        return Response(status, HTML, body.encode(), headers)

    def not_found(self, request: Request, error: str) -> Response:
        return self.page(request, "error.html", 404, title="Not found", error=error)

    async def _status(self, request: Request) -> Response:
        now = self.clock.now()
        view = await gather(self.store, self.config(), self.notices(), now)
        samples = await self.store.minutes(int(now) - 24 * 3600 - 60)
        charts = [
            chart("Recipients per minute, last 24 hours", TRAFFIC, samples, now),
            chart("Queue depth, last 24 hours", DEPTH, samples, now),
        ]
        return self.page(
            request,
            "status.html",
            view=view,
            charts=charts,
            refresh=0 if request.query.get("refresh") == "off" else REFRESH,
            title="relayd",
            zone=datetime.fromtimestamp(now).astimezone().tzname(),
        )

    async def _post(self, request: Request) -> Response:
        if not self.guard.enabled:
            return self.page(
                request,
                "error.html",
                403,
                title="Read-only",
                error=(
                    "This page is read-only: set [admin] token_file in relayd's configuration "
                    "to allow actions, then reload relayd."
                ),
            )
        if not self.guard.authorized(request):
            return self.page(
                request,
                "login.html",
                401,
                title="Sign in",
                error=("This needs the admin token."),
                next="/",
            )
        if not self.guard.csrf_ok(request):
            return self.page(
                request,
                "error.html",
                403,
                title="Form expired",
                error=(
                    "The form was not this page's (or the browser dropped its cookie): go back, "
                    "reload the page and try again."
                ),
            )
        path = request.path
        if path == "/send-test":
            return await actions.send_test(self, request)
        match = _TEST.match(path)
        if match:
            return await actions.test_credentials(self, request, match.group(1))
        match = _MESSAGE.match(path)
        if match and match.group(2):
            return await actions.change(self, request, match.group(1), match.group(2))
        return self.not_found(request, f"No action {path}.")

    def limited(self, request: Request, kind: str, key: str = "") -> Response | None:
        """The 429 page when `kind` (for `key`) ran out of its rate limit, else None."""
        wait = self.limits[kind].wait(key, self.clock.monotonic())
        if not wait:
            return None
        return self.page(
            request,
            "error.html",
            429,
            title="Too many requests",
            error=(f"Too many requests: try again in {max(1, round(wait))} s."),
        )

    def _login(self, request: Request) -> Response:
        target = request.form.get("next") or request.query.get("next") or "/"
        target = target if _LOCAL_PATH.match(target) else "/"  # no header, no other site
        if request.path == "/logout" and request.method == "POST":
            return redirect("/", (("Set-Cookie", self.guard.logout(request)),))
        if request.method != "POST":
            return self.page(request, "login.html", title="Sign in", error=None, next=target)
        if not self.guard.csrf_ok(request):
            return self.page(
                request,
                "login.html",
                403,
                title="Sign in",
                next=target,
                error="The form expired: enter the token again.",
            )
        limited = self.limited(request, "login")
        if limited is not None:
            return limited
        cookie = self.guard.login(request.form.get("token", ""))
        if cookie is None:
            return self.page(
                request,
                "login.html",
                401,
                title="Sign in",
                next=target,
                error="That is not the admin token ([admin] token_file).",
            )
        return redirect(target, (("Set-Cookie", cookie),))
