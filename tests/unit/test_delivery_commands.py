"""The MAIL and RCPT lines relayd writes upstream (delivery/client.py's _command).

A plain mailbox is quoted without aiosmtplib's parser (17 us an address, most of the
delivering process's per-message address work); these tests hold that to giving the very
line aiosmtplib's quote_address gives, and every other address to go through it.
"""

from __future__ import annotations

import pytest
from aiosmtplib.email import quote_address
from hypothesis import example, given
from hypothesis import strategies as st

from relayd.delivery.client import _PLAIN_MAILBOX, _command


@given(st.from_regex(_PLAIN_MAILBOX, fullmatch=True))
@example("")
@example("a.b+tag@example.com")
@example("jörg@bücher.example")
@example("x@..")
def test_a_plain_mailbox_is_quoted_as_aiosmtplib_quotes_it(address: str) -> None:
    line = _command(b"RCPT TO:", address, [], "utf-8")
    assert line == b"RCPT TO:" + quote_address(address).encode("utf-8")


@pytest.mark.parametrize(
    ("address", "quoted"),
    [
        ('"john doe"@example.com', '<"john doe"@example.com>'),
        ("Jo Ann <jo@example.com>", "<jo@example.com>"),  # a display name: the mailbox only
        ("a(comment)@example.com", "<a@example.com>"),
        (" padded@example.com ", "<padded@example.com>"),
        ("user@[192.0.2.1]", "<user@[192.0.2.1]>"),
    ],
)
def test_any_other_address_goes_through_aiosmtplib(address: str, quoted: str) -> None:
    assert not _PLAIN_MAILBOX.fullmatch(address)
    assert _command(b"MAIL FROM:", address, [], "utf-8") == b"MAIL FROM:" + quoted.encode()


@pytest.mark.parametrize(
    "address", ["a@b.example\r\nRSET", "a@b.example>\nDATA", "a b@c.example", "<a@b.example> X=1"]
)
def test_no_command_or_parameter_can_be_smuggled_in_an_address(address: str) -> None:
    """Refused, or cut to the mailbox aiosmtplib's parser finds: one line, one path."""
    try:
        line = _command(b"RCPT TO:", address, [], "utf-8")
    except ValueError:
        return
    assert b"\r" not in line and b"\n" not in line
    path = line.removeprefix(b"RCPT TO:")
    assert path.count(b"<") == 1 and path.endswith(b">") and b" " not in path
