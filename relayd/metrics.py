"""Prometheus metric objects and the few facts /readyz needs; a leaf for callers.

One registry for the process (not prometheus_client's global one, so nothing else a library
registers leaks into /metrics). Callers record facts through the small functions below, by
upstream name; the gauges that describe the queue are set from the store's depth when scraped
(`refresh_queue`), because the queue tool and other nodes change the queue too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from relayd import __version__
from relayd.types import QueueDepth, RecipientOutcome, RecipientState

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `*_created` series
REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

_INFO = Gauge("relayd_info", "relayd version (always 1)", ["version"], registry=REGISTRY)
_INFO.labels(__version__).set(1)
ACCEPTED = Counter(
    "relayd_messages_accepted",
    "Messages committed to the queue (answered 250 by intake)",
    ["upstream"],
    registry=REGISTRY,
)
RECIPIENTS = Counter(
    "relayd_recipients",
    "Recipient outcomes of delivery attempts: delivered, deferred, failed, bounced",
    ["upstream", "outcome"],
    registry=REGISTRY,
)
LATE_BOUNCES = Counter(
    "relayd_late_bounces",
    "Recipients named by late bounce reports read over IMAP, by kind: failed, delayed",
    ["upstream", "kind"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "relayd_delivery_latency_seconds",
    "Time from acceptance to delivery of a recipient",
    ["upstream"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 86400),
    registry=REGISTRY,
)
RATE_LIMIT_WAITS = Counter(
    "relayd_rate_limit_waits",
    "Sends the rate ledger turned away (rate_limits or min_interval)",
    ["upstream"],
    registry=REGISTRY,
)
THROTTLES = Counter(
    "relayd_upstream_throttles",
    "Provider throttle replies that paused an upstream",
    ["upstream"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "relayd_upstream_auth_failures",
    "Account problems (AUTH refused, account blocked) that paused an upstream",
    ["upstream"],
    registry=REGISTRY,
)
OAUTH_EXPIRY = Gauge(
    "relayd_oauth_token_expiry_timestamp_seconds",
    "When the current OAuth2 access token of an upstream expires (Unix time)",
    ["upstream"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "relayd_queue_recipients",
    "Recipients in the queue store per state (final states until purged)",
    ["state"],
    registry=REGISTRY,
)
OLDEST_AGE = Gauge(
    "relayd_queue_oldest_pending_age_seconds",
    "Age of the oldest message with a queued or deferred recipient (0 when none)",
    registry=REGISTRY,
)
RELOADS = Counter(
    "relayd_config_reloads",
    "Configuration reloads (SIGHUP) by result",
    ["result"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class LastResult:
    """An upstream's most recent recipient outcome, for /readyz."""

    state: str
    reply: str
    at: float


_last: dict[str, LastResult] = {}


def accepted(upstream: str, count: int = 1) -> None:
    ACCEPTED.labels(upstream).inc(count)


def accepted_totals() -> dict[str, int]:
    """This process's accepted count per upstream (an intake worker reports it)."""
    return {
        sample.labels["upstream"]: int(sample.value)
        for metric in ACCEPTED.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def totals() -> dict[str, int]:
    """This process's counts since start, over every upstream: accepted (with what intake
    workers reported) and each recipient outcome; the status page's history samples them."""
    result = {"accepted": sum(accepted_totals().values())}
    for metric in RECIPIENTS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                outcome = sample.labels["outcome"]
                result[outcome] = result.get(outcome, 0) + int(sample.value)
    return result


def outcomes(
    upstream: str, results: Iterable[RecipientOutcome], now: float, received_at: float
) -> None:
    """One attempt's recorded outcomes (InstrumentedStore.record_outcome)."""
    for result in results:
        RECIPIENTS.labels(upstream, result.state.value).inc()
        if result.state is RecipientState.DELIVERED:
            LATENCY.labels(upstream).observe(max(0.0, now - received_at))
        _last[upstream] = LastResult(result.state.value, result.reply, now)


def bounced(upstream: str, kind: str) -> None:
    """A late report arrived for a recipient the upstream had accepted: `failed` (it is
    bounced now, also counted as that outcome) or `delayed` (still in the remote queue)."""
    LATE_BOUNCES.labels(upstream, kind).inc()
    if kind == "failed":
        RECIPIENTS.labels(upstream, RecipientState.BOUNCED.value).inc()


def rate_limit_wait(upstream: str) -> None:
    RATE_LIMIT_WAITS.labels(upstream).inc()


def upstream_held(upstream: str, *, auth: bool) -> None:
    (AUTH_FAILURES if auth else THROTTLES).labels(upstream).inc()


def oauth_token_expiry(upstream: str, expires_at: float) -> None:
    OAUTH_EXPIRY.labels(upstream).set(expires_at)


def reload_result(ok: bool) -> None:
    RELOADS.labels("ok" if ok else "failed").inc()


def last_result(upstream: str) -> LastResult | None:
    return _last.get(upstream)


def refresh_queue(depth: QueueDepth, now: float) -> None:
    """Set the queue gauges from the store's depth (read at scrape time)."""
    for state, count in depth.counts.items():
        QUEUE_DEPTH.labels(state.value).set(count)
    OLDEST_AGE.set(depth.oldest_age(now))


def render() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)
