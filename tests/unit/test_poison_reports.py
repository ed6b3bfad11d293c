"""No byte an app (or an upstream) sends can crash a report relayd builds: the DSN, the delay
warning and the operator notice, over arbitrary text and bytes in every field that comes
from outside; and what they build reads back as the lines relayd meant (no header split)."""

from __future__ import annotations

import email
from email import policy

from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.dsn.build import DsnRecipient, build_dsn
from relayd.notices.notifier import NoticeKind, Notifier, render_notice
from relayd.policy.headers import header_text
from tests.support.dsn import status_blocks
from tests.support.fakes import T0, FakeClock, Sink

# What a header value may not hold, and what the `email` package refuses in one.
NASTY = ["\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\r", "\n", "\r\n ", "\t"]
# Text as aiosmtpd and aiosmtplib hand it over: UTF-8 decoded with surrogateescape.
_ESCAPED = st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape"))
_NASTY_TEXT = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=8)), max_size=8).map(
    "".join
)
TEXT = st.one_of(st.text(max_size=60), _ESCAPED, _NASTY_TEXT)
HEADER_BYTES = st.one_of(
    st.binary(max_size=80), TEXT.map(lambda t: t.encode("utf-8", "surrogateescape"))
)


def _original(message_id: bytes, subject: bytes) -> bytes:
    return b"From: app@example.org\r\nSubject: " + subject + b"\r\nMessage-ID: " + message_id


@settings(max_examples=150, deadline=None)
@given(
    message_id=HEADER_BYTES,
    subject=HEADER_BYTES,
    body=st.binary(max_size=40),
    address=TEXT,
    orcpt=st.none() | TEXT,
    diagnostic=st.none() | TEXT,
    remote_mta=st.none() | TEXT,
    envelope_id=st.none() | TEXT,
    delayed=st.booleans(),
    full=st.booleans(),
)
def test_a_report_is_built_from_anything_an_app_sends(
    message_id: bytes,
    subject: bytes,
    body: bytes,
    address: str,
    orcpt: str | None,
    diagnostic: str | None,
    remote_mta: str | None,
    envelope_id: str | None,
    delayed: bool,
    full: bool,
) -> None:
    recipient = DsnRecipient(
        address=address,
        action="delayed" if delayed else "failed",
        status="4.2.1" if delayed else "5.1.1",
        diagnostic=diagnostic,
        remote_mta=remote_mta,
        original_recipient=orcpt,
        will_retry_until=T0 + 3600 if delayed else None,
    )
    original = _original(message_id, subject) + b"\r\n\r\n" + body
    report = build_dsn(
        original,
        [recipient, DsnRecipient("ok@example.net", "failed", "5.0.0")],
        reporting_mta="relay.test",
        arrival_date=T0,
        now=T0 + 60,
        to="bounces@practice.example",
        envelope_id=envelope_id,
        return_full=full,
    )
    parsed = email.message_from_bytes(report, policy=policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed["To"] == "bounces@practice.example"
    in_reply_to = parsed["In-Reply-To"]
    assert in_reply_to is None or header_text(str(in_reply_to)) == str(in_reply_to)
    if parsed.get_param("report-type") == "delivery-status" and report.isascii():
        # Every recipient's fields stayed in its own block: nothing split a line.
        blocks = status_blocks(parsed)
        assert len(blocks) == 3
        assert blocks[2]["Final-Recipient"] == "rfc822; ok@example.net"


@settings(max_examples=150, deadline=None)
@given(key=TEXT, detail=TEXT, hint=st.none() | TEXT)
async def test_a_notice_is_rendered_from_anything_an_upstream_says(
    key: str, detail: str, hint: str | None
) -> None:
    """The key (an upstream's or a path's name), the detail (an upstream's reply) and the
    hint come from outside; sender and Message-ID are relayd's own (configured) values."""
    sink = Sink()
    notifier = Notifier(sink)
    notifier.raise_(NoticeKind.AUTH_FAILED, key, detail, affected=1, hint=hint, now=T0)
    assert await notifier.flush(FakeClock().now())
    ((subject, body, now),) = sink.sent
    raw = render_notice(
        subject,
        body,
        from_addr="relayd@relay.test",
        to="ops@practice.example",
        now=now,
        message_id="<relayd.notice.1@relay.test>",
    )
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["To"] == "ops@practice.example"
    assert parsed["X-Relayd-Notice"] == "yes"
    # The stdlib's folding may drop a space between encoded words; the text is the same.
    assert "".join(parsed["Subject"].split()) == "".join(header_text(subject).split())


def test_header_text_keeps_what_a_person_reads() -> None:
    assert header_text("<a\x0bb@example.org>") == "<a b@example.org>"
    assert header_text("<a\u2028b@example.org>") == "<a b@example.org>"
    assert header_text("550 5.1.1 No such\r\n user") == "550 5.1.1 No such user"
    assert header_text(" Gr\u00fc\u00dfe \u65e5\u672c\x00") == "Gr\u00fc\u00dfe \u65e5\u672c"
    assert header_text(b"caf\xe9".decode("utf-8", "surrogateescape")) == "caf\ufffd"
