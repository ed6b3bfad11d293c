"""relayd.policy.outcome: reply classification (provider replies verbatim) and retry arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.policy.outcome import (
    RULES,
    Action,
    classify_reply,
    is_expired,
    next_attempt_at,
    throttle_until,
    too_many_recipients,
)
from relayd.types import SmtpReply

D, R, F, T, A = (
    Action.DELIVERED,
    Action.RETRY,
    Action.FAILED,
    Action.THROTTLED,
    Action.AUTH_FAILED,
)

# Replies as providers send them (text after the code, enhanced code first).
REPLIES = [
    # success
    (250, "2.0.0 OK  1700000000 a1-20020a05 - gsmtp", D),
    (250, "2.6.0 <id@example> [InternalId=1] Queued mail for delivery", D),
    (251, "2.1.5 User not local; will forward", D),
    (250, "OK", D),
    # throttles
    (421, "4.7.0 Try again later, closing connection. (EHLO) - gsmtp", T),
    (421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume", T),
    (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", T),
    (450, "4.2.1 Peak SMTP relay limit exceeded for customer. This is a temporary error.", T),
    (451, "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)", T),
    (451, "4.7.699 Access denied, please try again later", T),
    (432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", Action.TOO_MANY_SESSIONS),
    (454, "4.7.0 Too many login attempts, please try again later. - gsmtp", T),
    (550, "5.4.5 Daily user sending quota exceeded. - gsmtp", T),
    (550, "5.4.5 Daily SMTP relay limit exceeded for user.", T),
    (550, "5.7.1 Daily SMTP relay limit exceeded for customer.", T),
    (
        554,
        "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; "
        "Failed to process message due to a permanent exception",
        T,
    ),
    (550, "5.1.90 Your message can't be sent because you've reached your daily limit", T),
    # account problems
    (535, "5.7.8 Username and Password not accepted. For more information, go to - gsmtp", A),
    (534, "5.7.9 Application-specific password required. - gsmtp", A),
    (534, "5.7.14 <https://accounts.google.com/signin/continue?...> Please log in", A),
    (535, "5.7.139 Authentication unsuccessful, basic authentication is disabled.", A),
    (535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled", A),
    (535, "5.7.3 Authentication unsuccessful [AM0PR04CA0001.eurprd04.prod.outlook.com]", A),
    (550, "5.7.30 Basic authentication is not supported for Client Submission.", A),
    (530, "5.7.0 Must issue a STARTTLS command first. - gsmtp", A),
    (530, "5.7.57 Client not authenticated to send mail. [...]", A),
    (550, "5.7.57 Client was not authenticated to send anonymous mail during MAIL FROM", A),
    (535, "Authentication failed", A),
    (538, "5.7.11 Encryption required for requested authentication mechanism", A),
    (550, "5.1.8 Access denied, bad outbound sender", A),
    (550, "5.7.705 Access denied, tenant has exceeded threshold", A),
    (550, "5.7.750 Service unavailable. Client blocked from sending from unregistered domains", A),
    (550, "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", A),
    # one sender's mail: the account may not send as it (Microsoft)
    (
        554,
        "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
        "Failed to process message due to a permanent exception",
        Action.SENDER_DENIED,
    ),
    (
        550,
        "5.7.60 SMTP; Client does not have permissions to send as this sender",
        Action.SENDER_DENIED,
    ),
    # transient, per message or per recipient
    (421, "4.3.2 Service shutting down, closing transmission channel", R),
    (421, "4.4.5 Server busy, try again later.", R),
    (421, "Service not available, closing transmission channel", R),
    (450, "4.2.1 The user you are trying to contact is receiving mail too quickly.", R),
    (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents", R),
    (451, "4.3.0 Mail server temporarily rejected message.", R),
    (451, "4.7.1 Greylisted, please try again in 300 seconds", R),
    (451, "4.7.499 not in the throttle range", R),
    (452, "4.2.2 The email account that you tried to reach is over quota.", R),
    (452, "4.5.3 Your message has too many recipients.", R),
    (454, "4.5.0 SMTP protocol violation, no commands allowed to pipeline after STARTTLS", R),
    # permanent, for this message or recipient
    (550, "5.1.1 The email account that you tried to reach does not exist. - gsmtp", F),
    (552, "5.2.2 The email account that you tried to reach is over quota.", F),
    (552, "5.3.4 Message size exceeds fixed limit", F),
    (550, "5.7.1 This message violates example.com email policy. - gcdp", F),
    (550, "5.4.1 Recipient address rejected: Access denied.", F),
    (554, "Transaction failed", F),
    # not final replies at all: never assume delivered, never bounce
    (354, "Start mail input; end with <CRLF>.<CRLF>", R),
    (0, "connection lost", R),
    (600, "nonsense", R),
]


@pytest.mark.parametrize(("code", "message", "action"), REPLIES)
def test_classify_reply(code: int, message: str, action: Action) -> None:
    assert classify_reply(SmtpReply(code, message)) is action


def test_a_success_is_a_success_whatever_its_text() -> None:
    assert classify_reply(SmtpReply(250, "2.0.0 Daily user sending quota exceeded")) is D


def first_rule(reply: SmtpReply) -> int | None:
    return next((i for i, rule in enumerate(RULES) if rule.matches(reply)), None)


def test_every_rule_decides_at_least_one_sample() -> None:
    """A row that no sample reaches (dead, or shadowed by an earlier row) would go unnoticed."""
    decided = {first_rule(SmtpReply(code, message)) for code, message, _ in REPLIES}
    assert decided >= set(range(len(RULES)))


@settings(max_examples=200, deadline=None)
@given(code=st.integers(400, 599), text=st.text(max_size=40))
def test_the_class_decides_what_no_rule_names(code: int, text: str) -> None:
    reply = SmtpReply(code, text)
    action = classify_reply(reply)
    assert action is not Action.DELIVERED
    if not any(rule.matches(reply) for rule in RULES):
        assert action is (Action.RETRY if code < 500 else Action.FAILED)


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(1, 60), (2, 300), (3, 900), (7, 14400), (8, 14400), (100, 14400)],
)
def test_next_attempt_at_follows_the_schedule_and_repeats_the_last_step(
    attempts: int, delay: float
) -> None:
    schedule = [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0]
    assert next_attempt_at(attempts, 1000.0, schedule) == 1000.0 + delay


def test_next_attempt_at_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts"):
        next_attempt_at(0, 1000.0, [60.0])
    with pytest.raises(ValueError, match="empty"):
        next_attempt_at(1, 1000.0, [])


@pytest.mark.parametrize(("level", "delay"), [(0, 60), (1, 300), (3, 3600), (9, 3600)])
def test_throttle_until_backs_off_and_repeats_the_last_step(level: int, delay: float) -> None:
    assert throttle_until(level, 1000.0, [60.0, 300.0, 900.0, 3600.0]) == 1000.0 + delay


def test_throttle_until_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="level"):
        throttle_until(-1, 1000.0, [60.0])
    with pytest.raises(ValueError, match="empty"):
        throttle_until(0, 1000.0, [])


def test_is_expired_at_exactly_the_lifetime() -> None:
    five_days = 5 * 86400.0
    assert not is_expired(1000.0, 1000.0, five_days)
    assert not is_expired(1000.0, 1000.0 + five_days - 0.001, five_days)
    assert is_expired(1000.0, 1000.0 + five_days, five_days)
    assert is_expired(1000.0, 1000.0 + five_days + 1, five_days)


def test_a_552_is_too_many_recipients_only_after_one_was_accepted() -> None:
    """RFC 5321 4.5.3.1.10: the first RCPT's 552 is the upstream's permanent answer."""
    cap = SmtpReply(552, "5.5.3 Too many recipients")
    assert too_many_recipients(cap, 0) is None
    recorded = too_many_recipients(cap, 3)
    assert recorded is not None and recorded.is_transient
    assert "552 5.5.3 Too many recipients" in recorded.message
    assert too_many_recipients(SmtpReply(550, "5.1.1 unknown"), 3) is None
