"""relayd.dsn.build and relayd.dsn.parse: reports relayd builds, read back with the stdlib `email`
package field by field; the reports Gmail, Microsoft 365, Postfix and Exim send; loops."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from relayd.dsn.build import (
    DSN_MARKER,
    FULL_RETURN_LIMIT,
    SUBJECT_DELAYED,
    SUBJECT_FAILED,
    DsnRecipient,
    build_dsn,
    is_dsn,
    status_for,
)
from relayd.dsn.params import rcpt_params, xtext_decode, xtext_encode
from relayd.dsn.parse import (
    BounceParseError,
    ParsedRecipient,
    might_be_bounce,
    parse_dsn,
    relayd_queue_id,
)
from relayd.policy.headers import header_block
from tests.support.dsn import status_blocks

SAMPLES = Path(__file__).parent.parent / "support" / "dsn_samples"
ARRIVED = 1_704_190_300.0  # 2024-01-02 10:11:40 UTC
NOW = ARRIVED + 3600
MESSAGE_ID = "<relayd.238HJPJKCKJLFMR2K@relay.test>"
# An app's message as intake stored it: odd folding and spacing that a re-serialiser would
# "fix", an 8-bit subject, a header the email package would re-encode.
ORIGINAL = (
    b"Received: from billing-app ([127.0.0.1])\r\n"
    b"\tby relay.test (relayd) with ESMTP id 238HJPJKCKJLFMR2K; Tue, 02 Jan 2024 10:11:40 +0000\r\n"
    b"Message-ID: " + MESSAGE_ID.encode() + b"\r\n"
    b"From:   The Practice   <office@practice.example>\r\n"
    b"To: bob@example.net,\r\n   carol@example.org\r\n"
    b"Subject: Terminbest\xc3\xa4tigung\r\n"
    b"X-App:\tinvoice=1042;  copy=2\r\n"
    b"\r\n"
    b"Dear Bob,\r\n\r\nsee you on Thursday.\r\n"
)
FAILED = DsnRecipient(
    address="bob@example.net",
    action="failed",
    status="5.1.1",
    diagnostic="550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in "
    "virtual mailbox table",
    remote_mta="mx.example.net",
    original_recipient="rfc822;Bob@Example.net",
    last_attempt=ARRIVED + 60,
)
DELAYED = DsnRecipient(
    address="carol@example.org",
    action="delayed",
    status="4.4.1",
    diagnostic="421 4.4.1 mx.example.org: connection timed out",
    last_attempt=ARRIVED + 1800,
    will_retry_until=ARRIVED + 5 * 86400,
)


def dsn(*recipients: DsnRecipient, original: bytes = ORIGINAL, **kwargs: Any) -> bytes:
    options: dict[str, Any] = {
        "reporting_mta": "relay.test",
        "arrival_date": ARRIVED,
        "now": NOW,
        "to": "bounces@practice.example",
        **kwargs,
    }
    return build_dsn(original, recipients or (FAILED,), **options)


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes().replace(b"\n", b"\r\n")


# --- what relayd builds, read back with the stdlib ---------------------------------------


def test_top_level_headers() -> None:
    message = parsed(dsn(FAILED, original=ORIGINAL, envelope_id="INV-1042"))

    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@relay.test>"
    assert message["To"] == "bounces@practice.example"
    assert message["Subject"] == SUBJECT_FAILED
    assert message["Auto-Submitted"] == "auto-replied"
    assert message[DSN_MARKER] == "yes"
    assert message["MIME-Version"] == "1.0"
    assert message["In-Reply-To"] == MESSAGE_ID
    assert message["Message-ID"].startswith("<relayd.dsn.build.")
    assert parsedate_to_datetime(message["Date"]).timestamp() == NOW
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_delivery_status_fields() -> None:
    message = parsed(dsn(FAILED, DELAYED, envelope_id="INV-1042"))
    per_message, failed, delayed = status_blocks(message)

    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert per_message["Original-Envelope-Id"] == "INV-1042"
    assert parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVED

    assert failed["Original-Recipient"] == "rfc822;Bob@Example.net"
    assert failed["Final-Recipient"] == "rfc822; bob@example.net"
    assert failed["Action"] == "failed"
    assert failed["Status"] == "5.1.1"
    assert failed["Remote-MTA"] == "dns; mx.example.net"
    diagnostic = " ".join(failed["Diagnostic-Code"].split())  # folded at 78 columns
    assert diagnostic == f"smtp; {FAILED.diagnostic}"
    assert parsedate_to_datetime(failed["Last-Attempt-Date"]).timestamp() == ARRIVED + 60
    assert failed["Will-Retry-Until"] is None  # only for delayed recipients

    assert delayed["Final-Recipient"] == "rfc822; carol@example.org"
    assert delayed["Action"] == "delayed"
    assert delayed["Status"] == "4.4.1"
    assert delayed["Remote-MTA"] is None
    assert delayed["Original-Recipient"] is None
    retry_until = parsedate_to_datetime(delayed["Will-Retry-Until"]).timestamp()
    assert retry_until == ARRIVED + 5 * 86400


def test_human_readable_part_says_what_happened() -> None:
    text = parsed(dsn(FAILED, DELAYED, queue_id="238HJPJKCKJLFMR2K")).get_body(("plain",))
    assert text is not None
    content = text.get_content()

    assert "could not be delivered to 1 of its recipients" in content
    assert "<bob@example.net>: failed permanently (5.1.1)" in content
    assert "The server mx.example.net said: 550 5.1.1" in content
    assert "check the address" in content
    assert "<carol@example.org>: delayed" in content
    assert "Terminbestätigung" in content
    assert MESSAGE_ID in content
    assert "238HJPJKCKJLFMR2K" in content


def test_original_headers_are_the_stored_bytes() -> None:
    raw = dsn(FAILED)
    part = next(p for p in parsed(raw).walk() if p.get_content_type() == "text/rfc822-headers")

    assert part["Content-Transfer-Encoding"] == "8bit"
    assert header_block(ORIGINAL) + b"\r\n" in raw  # byte for byte, folding and 8-bit kept
    assert b"see you on Thursday" not in raw  # headers only without RET=FULL


def test_ret_full_returns_the_whole_message() -> None:
    raw = dsn(FAILED, return_full=True)
    parts = list(parsed(raw).iter_parts())

    assert parts[2].get_content_type() == "message/rfc822"
    assert ORIGINAL in raw


def test_ret_full_over_the_limit_returns_headers() -> None:
    big = ORIGINAL + (b"x" * 76 + b"\r\n") * (FULL_RETURN_LIMIT // 78 + 1)
    raw = dsn(FAILED, original=big, return_full=True)
    message = parsed(raw)

    assert [p.get_content_type() for p in message.iter_parts()][2] == "text/rfc822-headers"
    text = message.get_body(("plain",))
    assert text is not None and "too large to return in full" in text.get_content()


def test_delayed_only_report() -> None:
    message = parsed(dsn(DELAYED))
    assert message["Subject"] == SUBJECT_DELAYED
    assert [b["Action"] for b in status_blocks(message)[1:]] == ["delayed"]


def test_one_report_covers_every_failed_recipient() -> None:
    others = [
        DsnRecipient(f"user{n}@example.com", "failed", "5.1.1", "550 5.1.1 unknown")
        for n in range(5)
    ]
    blocks = status_blocks(parsed(dsn(*others)))
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        f"rfc822; user{n}@example.com" for n in range(5)
    ]


def test_configurable_from_and_message_id() -> None:
    message = parsed(
        dsn(FAILED, from_addr="postmaster@practice.example", message_id="<relayd.X1@relay.test>")
    )
    assert message["From"] == "postmaster@practice.example"
    assert message["Message-ID"] == "<relayd.X1@relay.test>"


def test_multi_line_replies_cannot_inject_headers() -> None:
    nasty = DsnRecipient(
        "bob@example.net", "failed", "5.0.0", "550-first line\r\nBcc: victim@example.com\r\n550 end"
    )
    raw = dsn(nasty, to="bounces@practice.example\r\nBcc: victim@example.com")
    assert b"\r\nBcc:" not in raw
    assert "550-first line Bcc: victim@example.com 550 end" in " ".join(
        status_blocks(parsed(raw))[1]["Diagnostic-Code"].split()
    )


def test_lone_line_feeds_become_crlf() -> None:
    raw = dsn(FAILED, original=ORIGINAL.replace(b"\r\n", b"\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_non_ascii_recipient_makes_a_global_report() -> None:
    raw = dsn(DsnRecipient("jürgen@example.de", "failed", "5.1.1"))
    message = parsed(raw)
    assert [p.get_content_type() for p in message.iter_parts()][1] == (
        "message/global-delivery-status"
    )
    assert "Final-Recipient: utf-8; jürgen@example.de".encode() in raw


def test_the_boundary_never_occurs_in_the_original() -> None:
    first = parsed(dsn(FAILED)).get_boundary()
    assert first is not None
    # The same report again, now with that boundary in the returned headers: it must move.
    tricky = b"X-Trap: --" + first.encode() + b"\r\n" + ORIGINAL
    assert parsed(dsn(FAILED, original=tricky)).get_boundary() != first
    assert len(list(parsed(dsn(FAILED, original=tricky)).iter_parts())) == 3


def test_invalid_reports_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        build_dsn(ORIGINAL, [], reporting_mta="r", arrival_date=0, now=0, to="b@p")
    with pytest.raises(ValueError, match="action"):
        DsnRecipient("a@b", "bounced", "5.0.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        DsnRecipient("a@b", "failed", "550")


@pytest.mark.parametrize(
    ("code", "enhanced", "expired", "status"),
    [
        (550, "5.1.1", False, "5.1.1"),
        (550, None, False, "5.0.0"),
        (452, None, False, "4.0.0"),
        (451, "4.7.1", True, "4.7.1"),
        (421, None, True, "4.4.7"),
        (0, None, True, "4.4.7"),
        (0, None, False, "4.4.1"),
    ],
)
def test_status_for(code: int, enhanced: str | None, expired: bool, status: str) -> None:
    assert status_for(code, enhanced, expired=expired) == status


def test_xtext_round_trip() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_decode("rfc822;bob+2Bsales@example.com") == "rfc822;bob+sales@example.com"
    assert xtext_encode("jürgen+x@example.de") == "j+C3+BCrgen+2Bx@example.de"
    assert xtext_decode("j+C3+BCrgen+2Bx@example.de") == "jürgen+x@example.de"  # not "jÃ¼"


@pytest.mark.parametrize(
    ("orcpt", "field"),
    [
        ("rfc822;j+C3+BCrgen@example.de", "utf-8;jürgen@example.de"),
        ("utf-8;j\\x{FC}rgen@example.de", "utf-8;jürgen@example.de"),
    ],
)
def test_a_utf8_orcpt_is_reported_as_its_address(orcpt: str, field: str) -> None:
    """What intake keeps from the app's ORCPT, in relayd's report: one character per
    character, not per byte (RFC 6533: utf-8 type, in a global report)."""
    kept = rcpt_params([f"ORCPT={orcpt}"]).orcpt
    raw = dsn(DsnRecipient("juergen@example.de", "failed", "5.1.1", original_recipient=kept))
    assert f"Original-Recipient: {field}\r\n".encode() in raw
    assert "Ã".encode() not in raw
    assert [p.get_content_type() for p in parsed(raw).iter_parts()][1] == (
        "message/global-delivery-status"
    )


# --- round trip: what relayd builds, relayd reads ----------------------------------------


@pytest.mark.parametrize("full", [False, True])
def test_round_trip(full: bool) -> None:
    report = parse_dsn(dsn(FAILED, DELAYED, envelope_id="INV-1042", return_full=full))

    assert report is not None
    assert report.original_message_id == MESSAGE_ID
    assert report.queue_id == "238HJPJKCKJLFMR2K"
    assert report.reporting_mta == "relay.test"
    assert report.envelope_id == "INV-1042"
    assert report.subject == "Terminbestätigung"
    assert report.recipients == (
        ParsedRecipient(
            "bob@example.net",
            "failed",
            "5.1.1",
            FAILED.diagnostic,
            "mx.example.net",
            "rfc822;Bob@Example.net",
        ),
        ParsedRecipient("carol@example.org", "delayed", "4.4.1", DELAYED.diagnostic),
    )
    assert [r.final_recipient for r in report.failed] == ["bob@example.net"]


# --- what other systems send ------------------------------------------------------------

FIXTURES = {
    "gmail_failure.eml": (
        "rfc3464",
        "<relayd.238HJPJKCKJLFMR2K@relay.test>",
        "238HJPJKCKJLFMR2K",
        [("no-such-user@example.com", "failed", "5.1.1", "mx1.example.com")],
    ),
    "microsoft365_ndr.eml": (
        "rfc3464",
        "<inv-1042.20240102101500@erp.practice.example>",  # the app's own Message-ID
        "238HJPJKD0B7W5XQ1",  # from X-Relayd-ID
        [
            ("accounts@example.org", "failed", "5.1.10", "AM0PR02MB5555.eurprd02.prod.outlook.com"),
            ("payroll@example.org", "failed", "5.2.2", "AM0PR02MB5555.eurprd02.prod.outlook.com"),
        ],
    ),
    "postfix_bounce.eml": (
        "rfc3464",
        "<relayd.238HJPJKF9N3CT6V8@relay.test>",
        "238HJPJKF9N3CT6V8",
        [("frank@example.net", "failed", "5.7.1", "mx.example.net")],
    ),
    "exim_bounce.eml": (
        "exim",
        "<relayd.238HJPJKGH2MZP4RB@relay.test>",
        "238HJPJKGH2MZP4RB",
        [
            ("nobody@example.org", "failed", "5.1.1", "mail.example.org"),
            ("old.address@example.org", "failed", "5.0.0", "mail.example.org"),
        ],
    ),
    "postfix_delayed.eml": (
        "rfc3464",
        "<relayd.238HJPJKHX7QD2L5C@relay.test>",
        "238HJPJKHX7QD2L5C",
        [("grace@example.com", "delayed", "4.4.1", None)],
    ),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_provider_bounces(name: str) -> None:
    kind, message_id, queue_id, recipients = FIXTURES[name]
    report = parse_dsn(sample(name))

    assert report is not None
    assert report.kind == kind
    assert report.original_message_id == message_id
    assert report.queue_id == queue_id
    got = [(r.final_recipient, r.action, r.status, r.remote_mta) for r in report.recipients]
    assert got == recipients
    assert all(r.diagnostic for r in report.recipients)


def test_provider_diagnostics_are_the_remote_replies() -> None:
    gmail = parse_dsn(sample("gmail_failure.eml"))
    exim = parse_dsn(sample("exim_bounce.eml"))
    postfix = parse_dsn(sample("postfix_delayed.eml"))
    assert gmail is not None and exim is not None and postfix is not None

    assert gmail.recipients[0].diagnostic == (
        "550 5.1.1 <no-such-user@example.com>: Recipient address rejected: User unknown in "
        "virtual mailbox table"
    )
    assert exim.recipients[1].diagnostic == "550 Mailbox disabled for this recipient"
    assert postfix.recipients[0].diagnostic == (
        "connect to mx.example.com[192.0.2.30]:25: Connection timed out"
    )
    assert gmail.reporting_mta == "googlemail.com"
    assert gmail.subject == "Your appointment reminder"


@pytest.mark.parametrize("name", ["reply.eml", "out_of_office.eml"])
def test_ordinary_mail_is_not_a_bounce(name: str) -> None:
    assert parse_dsn(sample(name)) is None


def test_read_receipts_are_not_bounces() -> None:
    receipt = (
        b"From: bob@example.net\r\nSubject: Read: Invoice\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n'
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nread\r\n--b\r\n"
        b"Content-Type: message/disposition-notification\r\n\r\n"
        b"Final-Recipient: rfc822; bob@example.net\r\nDisposition: manual-action/MDN-sent-"
        b"manually; displayed\r\n--b--\r\n"
    )
    assert parse_dsn(receipt) is None
    assert is_dsn(receipt)  # still no DSN about it: it is an automatic report


def test_unusable_bounces_raise() -> None:
    no_status = (
        b"From: MAILER-DAEMON@mx.example.net\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b--\r\n"
    )
    with pytest.raises(BounceParseError, match="names no recipient"):
        parse_dsn(no_status)
    no_recipient = no_status.replace(
        b"--b--",
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n--b--",
    )
    with pytest.raises(BounceParseError, match="names no recipient"):
        parse_dsn(no_recipient)


def test_x_failed_recipients_alone_is_a_bounce() -> None:
    raw = (
        b"From: postmaster@mx.example.net\r\nX-Failed-Recipients: a@example.net, b@example.net"
        b"\r\nSubject: failure notice\r\nIn-Reply-To: <relayd.238HJPJKCKJLFMR2K@relay.test>"
        b"\r\n\r\nSorry, we could not deliver your message.\r\n"
    )
    report = parse_dsn(raw)
    assert report is not None and report.kind == "x-failed-recipients"
    assert [r.final_recipient for r in report.failed] == ["a@example.net", "b@example.net"]
    assert report.queue_id == "238HJPJKCKJLFMR2K"


# --- loop prevention ---------------------------------------------------------------------


def test_relayds_own_reports_are_dsns() -> None:
    raw = dsn(FAILED)
    assert is_dsn(raw)
    assert is_dsn(header_block(raw))


@pytest.mark.parametrize("name", [*sorted(FIXTURES), "out_of_office.eml"])
def test_provider_bounces_and_auto_replies_are_dsns(name: str) -> None:
    assert is_dsn(sample(name))
    assert might_be_bounce(header_block(sample(name)))


def test_ordinary_and_auto_generated_mail_is_not() -> None:
    assert not is_dsn(sample("reply.eml"))
    assert not might_be_bounce(header_block(sample("reply.eml")))
    cron = (
        b"From: root@host\r\nSubject: Cron <root@host> backup\r\n"
        b"Auto-Submitted: auto-generated\r\n\r\nok\r\n"
    )
    assert not is_dsn(cron)  # its failure must still reach the bounce mailbox
    assert not is_dsn(ORIGINAL)


def test_relayd_queue_id() -> None:
    assert relayd_queue_id("<relayd.238HJPJKCKJLFMR2K@relay.test>") == "238HJPJKCKJLFMR2K"
    assert relayd_queue_id(" <relayd.238HJPJKCKJLFMR2K@relay.test> ") == "238HJPJKCKJLFMR2K"
    assert relayd_queue_id("<relayd.dsn.build.0a1b2c@relay.test>") is None  # relayd's own DSNs
    assert relayd_queue_id("<abc@example.com>") is None
    assert relayd_queue_id(None) is None
