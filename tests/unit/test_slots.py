"""delivery/slots.py on a fake clock: a 432 4.3.2 lowers an upstream's sessions, quiet
periods raise them again one at a time."""

from __future__ import annotations

from relayd.delivery.slots import SessionSlots
from relayd.policy.outcome import Action, RecipientReply
from relayd.types import SmtpReply
from tests.support.fakes import FakeClock

TOO_MANY = [
    RecipientReply(
        "a@example.net", Action.TOO_MANY_SESSIONS, SmtpReply(432, "4.3.2 thread limit exceeded")
    )
]
OK = [RecipientReply("a@example.net", Action.DELIVERED, SmtpReply(250, "2.0.0 OK"))]


def test_a_432_lowers_by_one_and_quiet_periods_raise_one_at_a_time() -> None:
    clock = FakeClock()
    slots = SessionSlots("main", 4, clock, quiet=300)
    assert [slots.allows(i) for i in range(4)] == [True] * 4
    slots.observe(TOO_MANY, elapsed=1.0)
    assert slots.limit == 3
    slots.observe(TOO_MANY, elapsed=1.0)  # began before the drop: one of the same burst
    clock.at += 2
    slots.observe(TOO_MANY, elapsed=1.0)  # worker 3 may still have its session open
    assert slots.limit == 3
    assert (slots.allows(3), slots.allows(2)) == (False, True)  # worker 3 closes its session
    slots.observe(TOO_MANY, elapsed=1.0)  # its QUIT not answered yet: may still be open
    assert slots.limit == 3
    slots.closed(3)
    slots.observe(TOO_MANY, elapsed=1.0)  # began while worker 3's session was open
    assert slots.limit == 3
    clock.at += 2
    slots.observe(TOO_MANY, elapsed=1.0)  # began after it closed: one more session too many
    slots.observe(OK, elapsed=1.0)
    assert slots.limit == 2
    clock.at += 299
    assert not slots.allows(2)
    clock.at += 1
    assert slots.allows(2) and not slots.allows(3)  # one more after a quiet period
    clock.at += 300
    assert slots.allows(3)
    clock.at += 3000
    assert not slots.allows(4) and slots.limit == 4  # never above max_connections


def test_never_below_one_session() -> None:
    clock = FakeClock()
    slots = SessionSlots("main", 1, clock)
    slots.observe(TOO_MANY, elapsed=0.0)
    assert slots.allows(0)
    assert slots.regrow_in() > 0
