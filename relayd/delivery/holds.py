"""Holding a whole upstream: a reply that blames the account, not the message (a throttle, an
auth failure), pauses every message of the upstream. A throttle backs off, longer each time it
comes again (upstreams.NAME.throttle_backoff); an account problem waits for an operator."""

from __future__ import annotations

from relayd.config.model import UpstreamConfig
from relayd.logs import get_logger
from relayd.policy.outcome import Action, RecipientReply, throttle_until
from relayd.policy.providers import hint_for
from relayd.policy.waits import Wait, hold_wait
from relayd.store.base import UpstreamHolds
from relayd.types import UpstreamHold
from relayd.units import format_duration, format_iso

log = get_logger("dispatch")


async def hold_upstream(
    store: UpstreamHolds, upstream: UpstreamConfig, held: RecipientReply, now: float
) -> Wait:
    """Pause the whole upstream for `held`'s reply; returns the wait it imposes."""
    reply, name = held.reply, upstream.name
    previous = await store.upstream_hold(name)
    level = previous.level + 1 if previous is not None else 0
    until = None
    fields = {"upstream": name, "smtp_code": reply.code, "smtp_response": reply.message}
    fields["hint"] = hint_for(upstream.provider, reply, None) or ""  # what to do
    if held.action is Action.AUTH_FAILED:
        log.error("upstream_auth_failed", **fields)
    else:
        until = throttle_until(level, now, upstream.throttle_backoff)
        pause = format_duration(until - now)
        log.warning("upstream_throttled", **fields, resume_at=format_iso(until), pause=pause)
    hold = UpstreamHold(name, until, str(reply), level)
    await store.hold_upstream(hold)
    return hold_wait(hold)
