"""Classify an upstream's reply into what relayd does next, and when to try again; pure.

The dispatcher hands every reply (per recipient, or for the whole transaction) to
`classify_reply` and acts on the `Action`: record the delivery, defer the recipient to
`next_attempt_at`, fail it (a DSN follows), or hold the whole upstream -- for a throttle until
`throttle_until`, for an account problem until the configuration changes or an operator
retries. An account problem never bounces mail: the message is fine, the account is not.

The rules are a table (`RULES`), first match wins, with the provider documentation each row
comes from; everything the table does not name falls back to the reply's class (2xx, 4xx, 5xx;
RFC 5321 section 4.2.1).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from relayd.policy.waits import Wait
from relayd.types import Lease, RecipientOutcome, RecipientState, SmtpReply
from relayd.units import format_iso


class Action(enum.StrEnum):
    """What one reply means for relayd."""

    DELIVERED = "delivered"  # the upstream took responsibility for the recipient
    RETRY = "retry"  # transient: defer this recipient per the retry schedule
    FAILED = "failed"  # permanent for this message: fail the recipient, send a DSN
    THROTTLED = "throttled"  # the account must wait: hold the whole upstream, retry later
    AUTH_FAILED = "auth_failed"  # account problem: hold the upstream until fixed; never bounce
    SENDER_DENIED = "sender_denied"  # the account may not send as this sender: hold its mail
    TOO_MANY_SESSIONS = "too_many_sessions"  # retry, and open fewer sessions at once


@dataclass(frozen=True)
class RecipientReply:
    """One recipient's reply to an attempt and what it means: a lane turns it into the
    recipient's outcome, delivery/notices.py into raised or cleared operator notices."""

    address: str
    action: Action
    reply: SmtpReply
    upstream_dsn: bool = True  # the upstream offers DSN (it reports success itself)


@dataclass(frozen=True)
class Rule:
    """One row of the table: a reply matches when every given field matches.

    `codes`: basic reply codes (empty = any). `enhanced`: (class.subject, low, high) -- the
    enhanced status code's detail lies in [low, high] (None = any, including none at all).
    `text`: a case-insensitive substring of the reply text ("" = any). `unless`: substrings
    that veto the match.
    """

    action: Action
    codes: frozenset[int] = frozenset()
    enhanced: tuple[str, int, int] | None = None
    text: str = ""
    unless: tuple[str, ...] = ()

    def matches(self, reply: SmtpReply) -> bool:
        message = reply.message.lower()
        return (
            (not self.codes or reply.code in self.codes)
            and (self.enhanced is None or _enhanced_in(reply.enhanced, *self.enhanced))
            and self.text.lower() in message
            and not any(veto.lower() in message for veto in self.unless)
        )


def _rule(
    action: Action,
    codes: Sequence[int],
    enhanced: str = "",
    text: str = "",
    unless: tuple[str, ...] = (),
) -> Rule:
    """A row from a compact spec: enhanced "5.4.5" (exact), "4.7.500-699" or "5.7.*"."""
    spec: tuple[str, int, int] | None = None
    if enhanced:
        head, _, detail = enhanced.rpartition(".")
        low, _, high = detail.partition("-")
        spec = (head, 0, 999) if detail == "*" else (head, int(low), int(high or low))
    return Rule(action=action, codes=frozenset(codes), enhanced=spec, text=text, unless=unless)


_T, _A, _S = Action.THROTTLED, Action.AUTH_FAILED, Action.SENDER_DENIED

RULES: tuple[Rule, ...] = (
    # -- Account problems: hold the upstream, tell the operator, never bounce. -------------
    # Gmail (support.google.com/a/answer/3726730): 535 5.7.8 "Username and Password not
    # accepted"; 534 5.7.9 "Application-specific password required"; 534 5.7.14 "Please log
    # in via your web browser". Microsoft 365 (learn.microsoft.com, "Email non-delivery
    # reports and SMTP errors in Exchange Online" and "Enable or disable SMTP AUTH"):
    # 535 5.7.3 "Authentication unsuccessful"; 535 5.7.139 "SmtpClientAuthentication is
    # disabled for the Tenant" / "basic authentication is disabled"; 550 5.7.30 "Basic
    # authentication is not supported for Client Submission"; 5.7.57 "Client was not
    # authenticated to send anonymous mail". RFC 4954 section 6: 530 5.7.0 "Authentication
    # required", 534 5.7.9 "mechanism too weak", 535 5.7.8 "credentials invalid", 538 5.7.11
    # "encryption required". Every 530/534/535/538 is about the account or its settings.
    _rule(_A, (530, 534, 535, 538)),
    _rule(_A, (550,), "5.7.30"),
    _rule(_A, (), "5.7.57"),
    # Microsoft: 550 5.1.8 "Access denied, bad outbound sender" (the account is blocked for
    # sending spam); 5.7.705 / 5.7.750 "tenant has exceeded threshold" / "client blocked from
    # sending from unregistered domains". Every message would fail the same way; an operator
    # must act, so these hold the upstream instead of bouncing everything.
    _rule(_A, (550, 554), "5.1.8"),
    _rule(_A, (550, 554), "5.7.705"),
    _rule(_A, (550, 554), "5.7.750"),
    # Microsoft: 550 5.7.708 "Access denied, traffic not accepted from this IP" (a new or
    # suspicious tenant, blocked as a whole until Microsoft support releases it).
    _rule(_A, (550,), "5.7.708"),
    # Microsoft: 554 5.2.0 "STOREDRV.Submission.Exception:SendAsDeniedException
    # .MapiExceptionSendAsDenied" and 550 5.7.60 "Client does not have permissions to send
    # as this sender": the account lacks Send As on that one sender's mailbox. Not the
    # message's fault, nor every sender's: that sender's mail waits (deferred, failing at
    # max_lifetime) and the operator is told the fix.
    _rule(_S, (550, 554), "5.2.0", text="SendAsDenied"),
    _rule(_S, (550,), "5.7.60"),
    # -- Throttles: the account must wait; hold the whole upstream with backoff. -----------
    # Gmail: 421 4.7.0 "Try again later, closing connection" (and "unusual rate of
    # unsolicited mail"); Yahoo: 421 4.7.0 [TSS04] "temporarily deferred due to unexpected
    # volume". A 421 with an X.7.X (policy) code is the server refusing *us*; a 421 with any
    # other code (4.3.2 "service shutting down", 4.4.5 "server busy") or none (RFC 5321
    # "service not available, closing transmission channel") is the server's own state: RETRY.
    _rule(_T, (421,), "4.7.*"),
    # Gmail: 450 4.2.1 "Peak SMTP relay limit exceeded for customer". Gmail also uses 450
    # 4.2.1 for "The user you are trying to contact is receiving mail too quickly" -- that is
    # one recipient's mailbox, not our account: the veto below makes it a plain RETRY.
    _rule(_T, (450,), "4.2.1", unless=("receiving mail",)),
    # Microsoft: 451 4.7.500-699 "Access denied, please try again later" (server throttling).
    _rule(_T, (451,), "4.7.500-699"),
    # Microsoft: 432 4.3.2 "STOREDRV.ClientSubmit; sender thread limit exceeded" (too many
    # concurrent connections for the account): the message is retried and the upstream's
    # lane opens fewer sessions at once (delivery/slots.py); the account need not wait.
    _rule(Action.TOO_MANY_SESSIONS, (432,), "4.3.2"),
    # Gmail: 454 4.7.0 "Too many login attempts, please try again later"; RFC 4954 454 4.7.0
    # "Temporary authentication failure". Retrying each message would only add attempts.
    _rule(_T, (454,), "4.7.0"),
    # Gmail: 550 5.4.5 "Daily user sending quota exceeded" / "Daily SMTP relay limit exceeded
    # for user"; 550 5.7.1 "Daily SMTP relay limit exceeded for customer". The quota refills,
    # so the mail waits instead of bouncing.
    _rule(_T, (550,), "5.4.5"),
    _rule(_T, (550,), "5.7.1", text="relay limit exceeded"),
    # Microsoft: 554 5.2.0 "STOREDRV.Submission.Exception:SubmissionQuotaExceededException";
    # 550 5.1.90 "you've reached your daily limit for message recipients" (Outlook.com).
    _rule(_T, (554,), "5.2.0", text="SubmissionQuotaExceeded"),
    _rule(_T, (550,), "5.1.90"),
)


def classify_reply(reply: SmtpReply) -> Action:
    """What relayd does with `reply`: the first matching RULES row, else the reply's class.

    2xx delivered, 4xx retry, 5xx failed; the table is consulted for 4xx and 5xx only (a
    success is a success whatever its text says). A code that is no final reply at all (1xx,
    3xx, or out of range from a broken server) is RETRY: relayd neither assumes the mail went
    nor bounces it on such evidence.
    """
    if reply.is_success:
        return Action.DELIVERED
    if not 400 <= reply.code < 600:
        return Action.RETRY
    for rule in RULES:
        if rule.matches(reply):
            return rule.action
    return Action.RETRY if reply.is_transient else Action.FAILED


def next_attempt_at(attempts: int, now: float, schedule: Sequence[float]) -> float:
    """When to try a deferred recipient again, after `attempts` attempts (>= 1) so far.

    The first failure waits schedule[0], the second schedule[1], ...; the last step repeats.
    """
    if attempts < 1:
        raise ValueError(f"attempts counts the attempts made so far (>= 1), not {attempts}")
    return now + _step(schedule, attempts - 1, "retry schedule")


def throttle_until(level: int, now: float, backoff: Sequence[float]) -> float:
    """Until when an upstream is held after a throttle reply; level 0 is the first throttle.

    Each consecutive throttle raises the level; the last step repeats.
    """
    if level < 0:
        raise ValueError(f"level starts at 0, not {level}")
    return now + _step(backoff, level, "throttle backoff")


def is_expired(received_at: float, now: float, max_lifetime: float) -> bool:
    """Whether a message received at `received_at` has used up its `max_lifetime`.

    It expires at exactly received_at + max_lifetime: a 5-day lifetime allows attempts for
    5 days, not one instant more.
    """
    return now >= received_at + max_lifetime


def _step(steps: Sequence[float], index: int, name: str) -> float:
    if not steps:
        raise ValueError(f"the {name} is empty")
    return steps[min(index, len(steps) - 1)]


def _enhanced_in(code: str | None, head: str, low: int, high: int) -> bool:
    """Whether enhanced code "c.s.d" has c.s == head and low <= d <= high."""
    if code is None:
        return False
    code_head, _, detail = code.rpartition(".")
    return code_head == head and low <= int(detail) <= high


def recipient_outcome(
    item: RecipientReply,
    lease: Lease,
    now: float,
    retry_schedule: Sequence[float],
    max_lifetime: float,
    held: Wait | None = None,
) -> RecipientOutcome:
    """One recipient's result of an attempt; a held upstream's wait replaces the retry
    schedule's, and a retry that would fall past max_lifetime fails now with the last error."""
    rcpt, text = item.address, str(item.reply)
    if item.action is Action.DELIVERED:
        relayed = not item.upstream_dsn
        return RecipientOutcome(rcpt, RecipientState.DELIVERED, text, relayed=relayed)
    if item.action is Action.FAILED:
        return RecipientOutcome(rcpt, RecipientState.FAILED, text)
    retry = lease.attempts + 1  # the attempt just made was attempt `retry`; next: retry N
    retry_at = next_attempt_at(retry, now, retry_schedule)
    reason = f"retry {retry} at {format_iso(retry_at)}"
    if held is not None:
        retry_at = held.until if held.until is not None else retry_at
        reason = held.reason
    if is_expired(lease.received_at, retry_at, max_lifetime):
        return RecipientOutcome(rcpt, RecipientState.FAILED, text)
    return RecipientOutcome(rcpt, RecipientState.DEFERRED, text, retry_at, reason)


def too_many_recipients(reply: SmtpReply, accepted: int) -> SmtpReply | None:
    """The reply as relayd records it when it refuses a RCPT for the transaction's recipient
    count, else None: a 452, or a 552 after `accepted` > 0 recipients were taken (RFC 5321
    4.5.3.1.10: RFC 821 gave "too many recipients" 552 by mistake; treat it as temporary).
    Such a recipient goes in the next transaction, not to a DSN."""
    if reply.code == 452:
        return reply
    if reply.code == 552 and accepted > 0:
        return SmtpReply(452, f"4.5.3 too many recipients for one transaction ({reply})")
    return None
