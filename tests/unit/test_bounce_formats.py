"""relayd.dsn.parse on the late-bounce formats beyond a plain RFC 3464 report: reports
wrapped in multipart/mixed or missing their delivery-status part, Exim's text and its
variants, and the free-text formats read through flufl.bounce. The fixtures and where each
came from: tests/support/dsn_samples/README.md."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayd.dsn.parse import BounceParseError, ParsedDsn, might_be_bounce, parse_dsn
from relayd.policy.headers import header_block

SAMPLES = Path(__file__).parent.parent / "support" / "dsn_samples"
# A bounce must be read within this (the poller reads one message at a time); generous for
# a loaded machine: a message takes milliseconds.
PROMPT = 2.0


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes().replace(b"\n", b"\r\n")


def parsed(name: str) -> ParsedDsn:
    report = parse_dsn(sample(name))
    assert report is not None
    return report


# name -> (kind, relayd queue id of the original, [(recipient, action, status)])
RELAYD_ORIGINALS = {
    "wrapped_report.eml": (
        "rfc3464",
        "238HJPJKF9N3CT6V8",
        [("frank@example.net", "failed", "5.7.1")],
    ),
    "postfix_report_unavailable.eml": (
        "text",
        "238HJPJKM1R4TQ7HB",
        [("heidi@example.net", "failed", "5.1.1")],
    ),
    "gmx_bounce.eml": (
        "exim",
        "238HJPJKJ4V9SD1QE",
        [("ines.weber@example.de", "failed", "5.1.1"), ("k.braun@example.de", "failed", "5.2.2")],
    ),
    "exim_local_failure.eml": (
        "exim",
        "238HJPJKNB6C2WZ9D",
        [("kijitora@example.jp", "failed", "5.0.0")],
    ),
    "workmail_bounce.eml": (
        "text",
        "238HJPJKKD3X8NW2F",
        [("paul.meyer@example.com", "failed", "5.0.0")],
    ),
}


@pytest.mark.parametrize("name", sorted(RELAYD_ORIGINALS))
def test_bounces_about_relayd_mail_name_the_recipients_and_the_message(name: str) -> None:
    kind, queue_id, recipients = RELAYD_ORIGINALS[name]
    report = parsed(name)
    assert might_be_bounce(header_block(sample(name)))
    assert report.kind == kind
    assert report.queue_id == queue_id
    assert [(r.final_recipient, r.action, r.status) for r in report.recipients] == recipients


def test_a_report_wrapped_in_multipart_mixed_is_read_as_a_report() -> None:
    report = parsed("wrapped_report.eml")
    assert report.recipients[0].remote_mta == "mx.example.net"
    assert report.reporting_mta == "mail.example.net"


def test_an_empty_delivery_status_part_falls_back_to_the_text() -> None:
    """Postfix's report without recipient blocks: its text part still names them."""
    [heidi] = parsed("postfix_report_unavailable.eml").recipients
    assert heidi.diagnostic is not None
    assert heidi.diagnostic.startswith("550 5.1.1 <heidi@example.net>: Recipient address")


def test_a_report_without_a_status_part_falls_back_to_x_failed_recipients() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nX-Failed-Recipients: judy@example.net\r\n"
        b"In-Reply-To: <relayd.238HJPJKCKJLFMR2K@relay.test>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nDelivery report unavailable\r\n--b--\r\n"
    )
    report = parse_dsn(raw)
    assert report is not None and report.kind == "x-failed-recipients"
    assert [(r.final_recipient, r.action) for r in report.recipients] == [
        ("judy@example.net", "failed")
    ]
    assert report.queue_id == "238HJPJKCKJLFMR2K"


def test_exim_text_yields_addresses_not_words() -> None:
    """A local delivery failure lists a file, a bare local part and a sentence: none is an
    address; X-Failed-Recipients says who failed."""
    report = parsed("exim_local_failure.eml")
    assert [r.final_recipient for r in report.recipients] == ["kijitora@example.jp"]


def test_exim_text_diagnostics_join_x_failed_recipients() -> None:
    gmx = parsed("gmx_bounce.eml")
    assert gmx.recipients[1].diagnostic == "552 5.2.2 Mailbox full"
    exim = parsed("exim_bounce.eml")
    assert [r.remote_mta for r in exim.recipients] == ["mail.example.org"] * 2


def test_a_deliverable_report_is_a_success_not_a_delay() -> None:
    report = parsed("deliverable_report.eml")
    assert [(r.final_recipient, r.action, r.status) for r in report.recipients] == [
        ("ivan@example.org", "delivered", "2.1.5")
    ]
    assert report.failed == () and report.delayed == ()


# flufl.bounce's corpus (flufl/, Apache-2.0): name -> {address: action}, as its tests expect.
FLUFL = {
    "qmail_01.eml": {"userx@example.de": "failed"},  # qmail-send
    "yahoo_01.eml": {"userx@example.com": "failed"},  # Yahoo
    "microsoft_01.eml": {"userx@example.COM": "failed"},  # Exchange 2003
    "sendmail_01.eml": {"zzzzz@shaft.coal.nl": "failed", "zzzzz@nfg.nl": "failed"},
    "simple_28.eml": {"userx@example.com": "delayed"},  # Gmail's plain-text delay notice
    "simple_29.eml": {"userx@example.com": "failed"},  # MXLogic, Exim-style text
    "simple_22.eml": {"User@example.org": "delayed"},  # an anti-virus gateway
    "simple_38.eml": {"userx@example.com": "failed"},  # an appliance's "disposition" bounce
    "groupwise_01.eml": {"userx@example.EDU": "failed"},  # GroupWise
    "dsn_13.eml": {"userx@example.com": "failed"},  # a report in multipart/mixed
    "dsn_18.eml": {"email@replaced.net": "failed"},  # OpenSMTPD, in multipart/mixed
    "dsn_05.eml": {"userx@example.cz": "delayed"},  # a delay report
}


@pytest.mark.parametrize("name", sorted(FLUFL))
def test_free_text_and_wrapped_formats_of_flufl_bounces_corpus(name: str) -> None:
    raw = sample(f"flufl/{name}")
    report = parse_dsn(raw)
    assert might_be_bounce(header_block(raw))
    assert report is not None
    assert {r.final_recipient: r.action for r in report.recipients} == FLUFL[name]
    for r in report.recipients:  # a delay's status is never a failure's, nor a success's
        assert r.status[0] in ("4" if r.action == "delayed" else "45")


def test_delay_notices_mark_nothing_failed() -> None:
    for name in ("simple_28.eml", "simple_22.eml", "dsn_05.eml"):
        report = parsed(f"flufl/{name}")
        assert report.failed == ()
        assert report.delayed


@pytest.mark.parametrize("name", ["reply.eml", "out_of_office.eml"])
def test_ordinary_mail_still_is_not_a_bounce(name: str) -> None:
    assert parse_dsn(sample(name)) is None


def _read(raw: bytes) -> None:
    """Read as the poller does: only BounceParseError may come out, and only addresses."""
    start = time.monotonic()
    might_be_bounce(raw)
    try:
        report = parse_dsn(raw)
    except BounceParseError:
        report = None
    assert time.monotonic() - start < PROMPT
    assert report is None or all("@" in r.final_recipient for r in report.recipients)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_never_raise_anything_else_and_return_promptly(raw: bytes) -> None:
    _read(raw)


REPORTS = sorted([*RELAYD_ORIGINALS, *(f"flufl/{n}" for n in FLUFL)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REPORTS), st.integers(0, 10_000), st.binary(min_size=1, max_size=200))
def test_damaged_reports_never_raise_anything_else_and_return_promptly(
    name: str, at: int, junk: bytes
) -> None:
    """Real reports with bytes spliced in or cut off: what a broken server hands over."""
    raw = sample(name)
    at = at % len(raw)
    _read(raw[:at] + junk + raw[at:])
    _read(raw[:at])


def test_a_huge_free_text_bounce_is_read_promptly() -> None:
    """A bounce returning a large original: the heuristics read its beginning only."""
    raw = sample("flufl/qmail_01.eml") + b"<x@example.com>: " * 2000 + b"line\r\n" * 400_000
    start = time.monotonic()
    report = parse_dsn(raw)
    assert time.monotonic() - start < 5 * PROMPT
    assert report is not None
    assert "userx@example.de" in {r.final_recipient for r in report.recipients}


def test_a_person_listing_addresses_is_no_bounce() -> None:
    """Lists of addresses are read as failures only in a mailer daemon's message."""
    reply = (
        b"From: Bob <bob@example.net>\r\nSubject: Re: delivery failure of the parcel\r\n"
        b"In-Reply-To: <relayd.238HJPJKCKJLFMR2K@relay.test>\r\n\r\n"
        b"I forwarded it to the following recipients:\r\ncarol@example.org\r\n\r\n"
        b"<dave@example.org>: he will call you.\r\n"
    )
    assert might_be_bounce(reply)  # by its subject: the body is read
    assert parse_dsn(reply) is None
    daemon = reply.replace(b"Bob <bob@example.net>", b"MAILER-DAEMON@example.net")
    report = parse_dsn(daemon)
    assert report is not None
    assert {r.final_recipient for r in report.failed} == {"carol@example.org", "dave@example.org"}
