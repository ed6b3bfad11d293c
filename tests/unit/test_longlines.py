"""policy/longlines.py: after wire_safe no line is over 998 octets and every MIME part
decodes to the same bytes as before (checked with the `email` package as the reader)."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
from email.message import Message

from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.policy.longlines import MAX_LINE, has_long_line, longest_line, wire_safe

LINE_END = re.compile(rb"\r\n|\r|\n")


def lines_fit(message: bytes) -> bool:
    return all(len(line) <= 998 for line in LINE_END.split(message))


def leaves(message: bytes) -> list[tuple[str, bytes]]:
    """(content type, decoded payload) of every leaf part, as a mail program reads them."""
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    found = []
    for part in parsed.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found.append((part.get_content_type(), payload))
    return found


def encoding_of(part: bytes) -> str | None:
    parsed: Message = email.message_from_bytes(part)
    return parsed["Content-Transfer-Encoding"]


def check(message: bytes) -> bytes:
    safe = wire_safe(message)
    assert lines_fit(safe)
    assert leaves(safe) == leaves(message)
    assert wire_safe(safe) == safe  # nothing left to do
    return safe


HTML = b"<p>" + b"<b>caf\xc3\xa9</b> = 1 " * 130 + b"</p>"  # 1,562 bytes, one line


def test_text_html_becomes_quoted_printable_with_its_header() -> None:
    message = (
        b"From: app@example.org\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + HTML + b"\r\nshort line\r\n"
    )
    safe = check(message)
    assert encoding_of(safe) == "quoted-printable"
    assert safe.count(b"Content-Transfer-Encoding") == 1
    assert safe.startswith(b"From: app@example.org\r\nSubject: report\r\n")


def test_plain_text_without_mime_headers_gets_mime_version() -> None:
    safe = check(b"Subject: s\r\n\r\n" + b"x" * 1560 + b"\r\n")
    assert encoding_of(safe) == "quoted-printable"
    assert b"\r\nMIME-Version: 1.0\r\n" in safe


def test_an_attachment_on_one_line_is_base64_rewrapped() -> None:
    pdf = bytes(range(256)) * 20
    message = (
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(pdf)
        + b"\r\n"
    )
    safe = check(message)
    assert leaves(safe) == [("application/pdf", pdf)]
    assert encoding_of(safe) == "base64"


def test_only_the_long_part_of_a_multipart_changes() -> None:
    short = b"Content-Type: text/plain\r\n\r\nshort and untouched\r\n"
    long_part = b"Content-Type: text/html; charset=utf-8\r\n\r\n" + HTML
    binary = b"Content-Type: application/octet-stream\r\n\r\n" + b"\x00\x01" * 700
    message = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"preamble\r\n--b1\r\n"
        + short
        + b"\r\n--b1\r\n"
        + long_part
        + b"\r\n--b1\r\n"
        + binary
        + b"\r\n--b1--\r\nepilogue\r\n"
    )
    safe = check(message)
    assert b"\r\n--b1\r\n" + short + b"\r\n--b1\r\n" in safe
    assert safe.count(b"Content-Transfer-Encoding: quoted-printable") == 1
    assert safe.count(b"Content-Transfer-Encoding: base64") == 1
    assert safe.startswith(b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed")


def test_broken_mime_is_cut_as_postfix_does() -> None:
    body = b"y" * 2500
    message = b"Content-Type: multipart/mixed; boundary=gone\r\n\r\n" + body + b"\r\n"
    safe = wire_safe(message)
    assert lines_fit(safe)
    assert safe.replace(b"\r\n", b"") == message.replace(b"\r\n", b"")  # only CRLFs added
    unknown = b"Content-Transfer-Encoding: x-uuencode\r\n\r\n" + body + b"\r\n"
    assert wire_safe(unknown).replace(b"\r\n", b"") == unknown.replace(b"\r\n", b"")


def test_a_long_header_is_folded_at_whitespace() -> None:
    to = ", ".join(f"person{i}@example.org" for i in range(80))
    message = f"To: {to}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    safe = wire_safe(message)
    assert lines_fit(safe)
    unfolded = re.sub(rb"\r\n(?=[ \t])", b"", safe)
    assert unfolded == message
    assert safe.endswith(b"\r\nSubject: s\r\n\r\nbody\r\n")


def test_short_lines_are_left_alone_and_measured() -> None:
    message = b"Subject: s\r\n\r\n" + b"z" * 998 + b"\r\n"
    assert wire_safe(message) is message
    assert longest_line(message) == 998


# Runs of text around 998 octets between breaks of every kind, and short ones.
runs = st.one_of(
    st.integers(MAX_LINE - 3, MAX_LINE + 2), st.integers(0, 80), st.integers(1500, 2500)
).map(lambda size: b"x" * size)
breaks = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"])


@given(st.lists(st.one_of(runs, breaks), max_size=30).map(b"".join))
@settings(max_examples=500)
def test_a_long_line_is_one_over_998_octets_between_any_breaks(message: bytes) -> None:
    longest = max(map(len, message.splitlines()), default=0)
    assert has_long_line(message) is (longest > MAX_LINE)


# Lines up to ~4,000 bytes (a chunk repeated): most examples hold a line that is too long.
repeated = st.builds(bytes.__mul__, st.binary(min_size=1, max_size=20), st.integers(0, 200))
line_text = st.one_of(repeated, st.binary(max_size=300)).map(lambda b: b.replace(b"\r\n", b"\n"))
texts = st.lists(line_text, min_size=1, max_size=4).map(b"\r\n".join)
kinds = st.sampled_from(
    [b"text/plain", b"text/html; charset=utf-8", b"application/octet-stream", b"image/png"]
)
encodings = st.sampled_from(["", "8bit", "binary", "base64", "quoted-printable"])


def part(kind: bytes, encoding: str, content: bytes) -> bytes:
    """A body part; base64 and quoted-printable as some apps write them: on one line."""
    if encoding == "base64":
        content = base64.b64encode(content)
    elif encoding == "quoted-printable":
        content = binascii.b2a_qp(content, istext=False).replace(b"=\n", b"")
    header = f"Content-Transfer-Encoding: {encoding}\r\n".encode() if encoding else b""
    return b"Content-Type: " + kind + b"\r\n" + header + b"\r\n" + content


@settings(max_examples=300, deadline=None)
@given(kind=kinds, encoding=encodings, text=texts)
def test_any_single_part_keeps_its_content(kind: bytes, encoding: str, text: bytes) -> None:
    check(b"MIME-Version: 1.0\r\n" + part(kind, encoding, text) + b"\r\n")


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.tuples(kinds, encodings, texts), min_size=1, max_size=4))
def test_any_multipart_keeps_every_part(parts: list[tuple[bytes, str, bytes]]) -> None:
    boundary = b"==relayd-test-boundary=="
    body = b"".join(b"--" + boundary + b"\r\n" + part(*p) + b"\r\n" for p in parts)
    message = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\n'
        + body
        + b"--"
        + boundary
        + b"--\r\n"
    )
    check(message)
