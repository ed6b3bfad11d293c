"""The status page's queue pages and buttons: the queue tool's list, show and changes
(tools/queue.py), test-upstream (tools/probe.py) and send-test (tools/sendtest.py), with
the same semantics as the CLI's, rendered for the browser."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from relayd.clock import Clock
from relayd.config.model import Config, UpstreamConfig
from relayd.errors import StoreError
from relayd.reports.dsn_reports import ReportStore, deletion_report
from relayd.tools import queue
from relayd.tools.probe import Step, can_send
from relayd.tools.sendtest import SendTestError, enqueue_test, plan_send_test, wait_for_outcome
from relayd.types import QueueId, RecipientState
from relayd.units import parse_duration
from relayd.web.http import Request, Response, redirect
from relayd.web.status import StatusStore

LIST_LIMIT = 200  # messages on one page of the queue
SEND_TEST_WAIT = 5.0  # seconds the send-test answer waits for the outcome before saying why not
PAST = {"retry": "retried", "hold": "held", "release": "released"}
CONFIRM = {
    "retry": "Try this message's waiting recipients now?",
    "hold": "Hold this message? relayd will not try it until you release it.",
    "release": "Release this message? Its held recipients are tried now.",
    "delete": "Delete this message? Its waiting recipients will never get it.",
}


Probe = Callable[[UpstreamConfig, str, Clock], Awaitable[list[Step]]]


class PageStore(StatusStore, ReportStore, Protocol):
    """What the page reads, and what its buttons write (send-test, the queue actions)."""


class StatusApp(Protocol):
    """What these pages need of web/app.py's StatusApp."""

    store: PageStore
    config: Callable[[], Config]
    clock: Clock
    probe: Probe

    def page(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response: ...

    def not_found(self, request: Request, error: str) -> Response: ...

    def limited(self, request: Request, kind: str, key: str = "") -> Response | None: ...


async def queue_list(app: StatusApp, request: Request) -> Response:
    query = request.query
    error = None
    try:
        filters = queue.Filters(
            state=RecipientState(query["state"]) if query.get("state") else None,
            upstream=query.get("upstream") or None,
            sender=query.get("sender") or None,
            older_than=parse_duration(query["older"]) if query.get("older") else None,
        )
    except ValueError as exc:
        filters, error = queue.Filters(), f"Filter not applied: {exc}"
    now = app.clock.now()
    views = await queue.list_views(app.store, filters, now, LIST_LIMIT)
    return app.page(
        request,
        "queue.html",
        title="Queue",
        views=views,
        query=query,
        error=error,
        states=[s.value for s in RecipientState],
        upstreams=list(app.config().upstreams),
        limit=LIST_LIMIT,
        done=query.get("done"),
    )


async def message(app: StatusApp, request: Request, queue_id: str) -> Response:
    detail = await queue.show(app.store, QueueId(queue_id))
    if detail is None:
        return app.not_found(request, f"No message {queue_id} in the queue.")
    return app.page(
        request,
        "message.html",
        title=f"Message {queue_id}",
        detail=detail,
        done=request.query.get("done"),
    )


async def confirm(app: StatusApp, request: Request, queue_id: str, action: str) -> Response:
    detail = await queue.show(app.store, QueueId(queue_id))
    if detail is None:
        return app.not_found(request, f"No message {queue_id} in the queue.")
    return app.page(
        request,
        "confirm.html",
        title=f"{action.title()} {queue_id}",
        detail=detail,
        action=action,
        question=CONFIRM[action],
    )


async def change(app: StatusApp, request: Request, queue_id: str, action: str) -> Response:
    limited = app.limited(request, "queue")
    if limited is not None:
        return limited
    qid = QueueId(queue_id)
    config, now = app.config(), app.clock.now()
    if await app.store.show(qid) is None:
        return app.not_found(request, f"No message {queue_id} in the queue.")
    if action == "delete" and request.form.get("dsn") == "yes":
        await deletion_report(config, app.store, qid, now)  # queued before the message goes
    affected = await queue.change(app.store, action, qid, now, list(config.upstreams))
    if action == "delete":
        return redirect(f"/queue?done=deleted+{queue_id}")
    done = f"{PAST[action]}+{affected}+recipient{'' if affected == 1 else 's'}"
    return redirect(f"/queue/{queue_id}?done={done}")


async def test_credentials(app: StatusApp, request: Request, name: str) -> Response:
    config = app.config()
    upstream = config.upstreams.get(name)
    if upstream is None:
        return app.not_found(request, f"No upstream {name}.")
    limited = app.limited(request, "test", name)
    if limited is not None:
        return limited
    steps = await app.probe(upstream, config.server.hostname, app.clock)
    return app.page(
        request,
        "tested.html",
        title=f"Test credentials: {name}",
        name=name,
        steps=steps,
        ok=can_send(steps),
    )


async def send_test(app: StatusApp, request: Request) -> Response:
    config = app.config()
    form = request.form
    try:
        plan = plan_send_test(
            config,
            form.get("to") or None,
            None,
            form.get("upstream") or None,
            f"{SEND_TEST_WAIT:g}s",
        )
    except SendTestError as exc:
        return app.page(request, "error.html", 400, title="Send test", error=str(exc))
    limited = app.limited(request, "send-test")
    if limited is not None:
        return limited
    try:
        queue_id = await enqueue_test(app.store, config, plan, app.clock.now())
    except StoreError as exc:
        return app.page(
            request,
            "error.html",
            503,
            title="Send test",
            error=f"The queue did not take the message: {exc}",
        )
    result = await wait_for_outcome(app.store, queue_id, app.clock, plan.timeout)
    return app.page(
        request, "sent.html", title="Send test", queue_id=queue_id, result=result, plan=plan
    )
