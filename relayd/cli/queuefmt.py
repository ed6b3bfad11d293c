"""Text and JSON for the queue tool: functions from queuetool results to strings.

cli/main.py prints what these return. JSON documents keep field names stable for scripts: a
message is MessageView's fields (times as Unix seconds), recipients RecipientView's.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from relayd.tools.queue import Detail, Summary
from relayd.types import MessageView, RecipientState, RecipientView, UpstreamHold
from relayd.units import format_age, format_utc_seconds


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    stamp = format_utc_seconds(at)
    delta = at - now
    if abs(delta) < 1:
        return f"{stamp} (now)"
    return f"{stamp} ({'in ' + format_age(delta) if delta > 0 else format_age(-delta) + ' ago'})"


def _dump(document: object) -> str:
    return json.dumps(document, indent=2, default=str, ensure_ascii=False) + "\n"


def _hold_document(hold: UpstreamHold | None) -> dict[str, Any] | None:
    return None if hold is None else {"until": hold.until, "reason": hold.reason}


def _hold_text(hold: UpstreamHold | None, now: float) -> str:
    if hold is None or (hold.until is not None and hold.until <= now):
        return ""
    if hold.until is None:
        return f"  [paused until released: {hold.reason}]"
    return f"  [throttled until {_when(hold.until, now)}: {hold.reason}]"


# -- list ------------------------------------------------------------------------------


def list_json(views: list[MessageView]) -> str:
    return _dump([asdict(view) for view in views])


def list_text(views: list[MessageView], now: float) -> str:
    if not views:
        return "the queue has no matching messages\n"
    lines = []
    for view in views:
        age = format_age(now - view.received_at)
        lines.append(
            f"{view.queue_id}  {view.upstream}  <{view.mail_from}>  {view.size} bytes  "
            f"{age} old  {view.message_id}"
        )
        for rcpt in view.recipients:
            why = f"  ({rcpt.wait_reason})" if rcpt.wait_reason else ""
            last = f"  last: {rcpt.last_reply}" if rcpt.last_reply else ""
            lines.append(
                f"    {rcpt.state.value:9} {rcpt.address}  attempts={rcpt.attempts}{why}{last}"
            )
    noun = "message" if len(views) == 1 else "messages"
    lines.append(f"-- {len(views)} {noun}")
    return "\n".join(lines) + "\n"


# -- show ------------------------------------------------------------------------------


def show_json(detail: Detail) -> str:
    document = asdict(detail.view)
    document["headers"] = None if detail.headers is None else [list(h) for h in detail.headers]
    document["upstream_hold"] = _hold_document(detail.hold)
    return _dump(document)


def _recipient_lines(rcpt: RecipientView, now: float) -> list[str]:
    lines = [f"  {rcpt.address}", f"    state          {rcpt.state.value}"]
    lines.append(f"    attempts       {rcpt.attempts}")
    lines.append(f"    last reply     {rcpt.last_reply or '-'}")
    if rcpt.state.is_final:
        return lines
    lines.append(f"    next attempt   {_when(rcpt.next_attempt_at, now)}")
    lines.append(f"    waiting for    {rcpt.wait_reason or _default_wait(rcpt, now)}")
    return lines


def _default_wait(rcpt: RecipientView, now: float) -> str:
    if rcpt.state is RecipientState.HELD:
        return "held by operator (relayd queue release ID)"
    if rcpt.next_attempt_at is not None and rcpt.next_attempt_at > now:
        return "its next attempt"
    return "nothing: due now (a free delivery slot)"


def show_text(detail: Detail, now: float) -> str:
    view = detail.view
    lines = [
        f"queue id       {view.queue_id}",
        f"message-id     {view.message_id}",
        f"upstream       {view.upstream}{_hold_text(detail.hold, now)}",
        f"sender         <{view.mail_from}>",
        f"received       {_when(view.received_at, now)}",
        f"size           {view.size} bytes",
        "headers:",
    ]
    if detail.headers is None:
        lines.append("  (not kept: every recipient is final, so the message body was dropped)")
    else:
        lines += [f"  {name}: {value}" for name, value in detail.headers]
    lines.append("recipients:")
    for rcpt in view.recipients:
        lines += _recipient_lines(rcpt, now)
    return "\n".join(lines) + "\n"


# -- summary ---------------------------------------------------------------------------

_COLUMNS = (
    RecipientState.QUEUED,
    RecipientState.DEFERRED,
    RecipientState.HELD,
    RecipientState.DELIVERED,
    RecipientState.FAILED,
    RecipientState.BOUNCED,
)


def summary_json(result: Summary, now: float) -> str:
    oldest = result.oldest
    document = {
        "messages": result.messages,
        "upstreams": {
            name: {state.value: count for state, count in states.items()}
            for name, states in result.depth.items()
        },
        "totals": {state.value: count for state, count in result.totals().items()},
        "oldest_pending": None
        if oldest is None
        else {
            "queue_id": oldest.queue_id,
            "received_at": oldest.received_at,
            "age_seconds": round(now - oldest.received_at, 3),
        },
        "holds": {name: _hold_document(hold) for name, hold in result.holds.items()},
    }
    return _dump(document)


def summary_text(result: Summary, now: float) -> str:
    """Recipients per upstream and state (a table), then the oldest pending message."""
    width = max([len("upstream"), *(len(name) for name in result.depth)])
    header = "upstream".ljust(width) + "".join(f"{s.value:>11}" for s in _COLUMNS)
    lines = [header]
    for name, states in sorted(result.depth.items()):
        row = name.ljust(width) + "".join(f"{states.get(s, 0):>11}" for s in _COLUMNS)
        lines.append(row + _hold_text(result.holds.get(name), now))
    totals = result.totals()
    lines.append("total".ljust(width) + "".join(f"{totals[s]:>11}" for s in _COLUMNS))
    lines.append("(recipients; delivered, failed and bounced stay listed until purged)")
    if result.oldest is None:
        lines.append("oldest pending message: none")
    else:
        age = format_age(now - result.oldest.received_at)
        lines.append(f"oldest pending message: {result.oldest.queue_id}, {age} old")
    return "\n".join(lines) + "\n"


def change_json(action: str, affected: int) -> str:
    return json.dumps({"action": action, "affected": affected}) + "\n"


def change_text(action: str, affected: int) -> str:
    return f"{action}: {affected}\n"
