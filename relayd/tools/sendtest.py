"""`relayd send-test`: queue a real test message through the store and wait for its outcome.

The message goes in exactly as intake would put it (a Received line, Message-ID, Date), so
the running daemon delivers it with the upstream's limits, window and from_policy; this
command only watches `store.show()` until every recipient is final or the timeout passes.
A timeout is not a failure of the message: it stays queued, and the answer says why it
waits ("window closed until ...", "upstream paused: ...") or that no daemon seems to run.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.clock import Clock
from relayd.config.model import Config
from relayd.errors import RelaydError
from relayd.policy.addresses import AddressError, check_address
from relayd.policy.headers import prepare, received_header
from relayd.policy.routing import Routes
from relayd.store import store_for
from relayd.store.base import MessageIntake, QueueAdmin
from relayd.types import MessageView, NewMessage, QueueId, Recipient, RecipientState, new_queue_id
from relayd.units import format_duration, format_rfc5322, parse_duration

POLL = 1.0  # seconds between looks at the store


class SendTestError(RelaydError):
    """The test message cannot be sent as asked."""


@dataclass(frozen=True)
class SendTestPlan:
    recipient: str
    sender: str
    upstream: str
    timeout: float


@dataclass(frozen=True)
class SendTestResult:
    delivered: bool
    text: str
    view: MessageView | None = None


def plan_send_test(
    config: Config, to: str | None, sender: str | None, upstream: str | None, timeout: str
) -> SendTestPlan:
    """Who the test goes to and from, and through which upstream; SendTestError if unclear.

    The recipient defaults to the notification mailbox ([notifications] mailbox) when the
    configuration has one. The upstream is the one named, else the one the sender routes
    to; the sender defaults to that upstream's account (username), else relayd@hostname.
    """
    notifications = getattr(config, "notifications", None)  # [notifications] comes later
    recipient = to or getattr(notifications, "mailbox", None)
    if not recipient:
        raise SendTestError("no recipient: give --to ADDRESS (there is no [notifications] mailbox)")
    if upstream is not None and upstream not in config.upstreams:
        raise SendTestError(f'no upstream "{upstream}" (known: {", ".join(config.upstreams)})')
    name = upstream or Routes.from_config(config).pick(sender or "", None)
    chosen = config.upstreams[name]
    default_sender = chosen.username if chosen.username and "@" in chosen.username else None
    from_address = sender or default_sender or f"relayd@{config.server.hostname}"
    for label, address in (("--to", recipient), ("--from", from_address)):
        try:
            check_address(address, utf8=True)
        except AddressError as exc:
            raise SendTestError(f"{label} {address!r}: {exc}") from None
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise SendTestError(f"--timeout: {exc}") from None
    return SendTestPlan(str(recipient), from_address, name, seconds)


def build_test_message(plan: SendTestPlan, hostname: str, queue_id: QueueId, at: float) -> bytes:
    """The raw test message (headers prepared as intake prepares an app's message)."""
    head = (
        f"From: relayd test <{plan.sender}>\r\n"
        f"To: <{plan.recipient}>\r\n"
        f"Subject: relayd test message via {plan.upstream}\r\n"
        f"Date: {format_rfc5322(at)}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
    )
    text = (
        f"This is a test message from relayd on {hostname}, sent through the upstream "
        f'"{plan.upstream}" by `relayd send-test`.\r\n'
        "If you can read it, mail from this host reaches its recipients.\r\n"
    )
    received = received_header(
        helo=hostname,
        client_ip="127.0.0.1",
        hostname=hostname,
        protocol="local",
        queue_id=queue_id,
        recipients=(plan.recipient,),
        at=at,
    )
    body, _ = prepare(
        (head + text).encode(), received=received, queue_id=queue_id, hostname=hostname, at=at
    )
    return body


async def send_test(
    config: Config, plan: SendTestPlan, clock: Clock, poll: float = POLL
) -> SendTestResult:
    """Enqueue the test message and wait until it is final or `plan.timeout` passes."""
    store = store_for(config.queue)
    await store.open()
    try:
        queue_id = await enqueue_test(store, config, plan, clock.now())
        return await wait_for_outcome(store, queue_id, clock, plan.timeout, poll)
    finally:
        await store.close()


async def enqueue_test(
    store: MessageIntake, config: Config, plan: SendTestPlan, now: float
) -> QueueId:
    """Put the test message in the queue (committed when this returns); its queue id."""
    queue_id = new_queue_id(now)
    body = build_test_message(plan, config.server.hostname, queue_id, now)
    await store.enqueue(
        NewMessage(
            mail_from=plan.sender,
            recipients=(Recipient(plan.recipient),),
            body=body,
            upstream=plan.upstream,
            message_id=f"<relayd.{queue_id}@{config.server.hostname}>",
            received_at=now,
            client="send-test",
            queue_id=queue_id,
        )
    )
    return queue_id


async def wait_for_outcome(
    store: QueueAdmin, queue_id: QueueId, clock: Clock, timeout: float, poll: float = POLL
) -> SendTestResult:
    """Watch the message until every recipient is final or `timeout` passes; what it says."""
    deadline = clock.monotonic() + timeout
    view = await store.show(queue_id)
    while not _final(view) and clock.monotonic() < deadline:
        await clock.sleep(poll)
        view = await store.show(queue_id)
    return _result(queue_id, view, timeout)


def _final(view: MessageView | None) -> bool:
    return view is None or all(rcpt.state.is_final for rcpt in view.recipients)


def _result(queue_id: QueueId, view: MessageView | None, timeout: float) -> SendTestResult:
    if view is None:
        return SendTestResult(False, f"{queue_id}: the message was deleted from the queue")
    rcpt = view.recipients[0]
    reply = f": {rcpt.last_reply}" if rcpt.last_reply else ""
    if rcpt.state is RecipientState.DELIVERED:
        return SendTestResult(True, f"delivered: {queue_id} to <{rcpt.address}>{reply}", view)
    if rcpt.state.is_final:
        return SendTestResult(False, f"{rcpt.state.value}: {queue_id}{reply}", view)
    why = rcpt.wait_reason or (
        "not attempted yet: is `relayd run` running with this configuration?"
        if rcpt.attempts == 0
        else "waiting for the next attempt"
    )
    text = (
        f"not delivered within {format_duration(timeout)}: {queue_id} is {rcpt.state.value} "
        f"({why}){reply}; it stays queued (relayd queue show {queue_id})"
    )
    return SendTestResult(False, text, view)
