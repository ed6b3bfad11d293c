"""relayd.policy.from_policy: header-level rewrites on the raw bytes, checked byte for byte."""

from __future__ import annotations

import pytest

from relayd.policy.from_policy import apply_from_policy, bare_from, envelope_sender, rewrite_from

ACCOUNT = "practice@gmail.com"
BODY = b"\r\nDear patient,\r\nFrom: this line is body text, not a header.\r\n"


def msg(*headers: str, body: bytes = BODY) -> bytes:
    return "".join(h + "\r\n" for h in headers).encode() + body


# -- bare -------------------------------------------------------------------------------------


def test_bare_strips_a_quoted_display_name() -> None:
    original = msg(
        "Received: from app by relay",
        'From: "The Dental Practice" <tdp@practice.example>',
        "To: patient@example.net",
        "Subject: Your appointment",
    )
    assert bare_from(original) == msg(
        "Received: from app by relay",
        "From: tdp@practice.example",
        "To: patient@example.net",
        "Subject: Your appointment",
    )


@pytest.mark.parametrize(
    "value",
    [
        "The Dental Practice <tdp@practice.example>",
        "=?utf-8?q?Caf=C3=A9_Dental?= <tdp@practice.example>",
        "tdp@practice.example (The Dental Practice)",
        '"The Dental Practice"\r\n <tdp@practice.example>',  # folded
        "<tdp@practice.example>",
    ],
)
def test_bare_handles_every_spelling(value: str) -> None:
    assert bare_from(msg(f"From: {value}", "To: x@y.example")) == msg(
        "From: tdp@practice.example", "To: x@y.example"
    )


def test_bare_keeps_a_bare_message_identical() -> None:
    original = msg("From: tdp@practice.example", "To: x@y.example")
    assert bare_from(original) is original


def test_bare_keeps_several_authors() -> None:
    original = msg('From: "A" <a@x.example>, B <b@x.example>')
    assert bare_from(original) == msg("From: a@x.example, b@x.example")


def test_bare_leaves_an_unparseable_from_alone() -> None:
    original = msg("From: undisclosed", "Subject: s")
    assert bare_from(original) == original


def test_lf_only_messages_keep_lf() -> None:
    original = b'From: "Name" <n@x.example>\nSubject: s\n\nbody\n'
    assert bare_from(original) == b"From: n@x.example\nSubject: s\n\nbody\n"


# -- rewrite ----------------------------------------------------------------------------------


def test_rewrite_puts_the_account_in_from_and_the_original_in_reply_to() -> None:
    original = msg(
        'From: "The Dental Practice" <tdp@practice.example>',
        "To: patient@example.net",
        "Subject: Your appointment",
    )
    assert rewrite_from(original, ACCOUNT) == msg(
        f'From: "The Dental Practice" <{ACCOUNT}>',
        'Reply-To: "The Dental Practice" <tdp@practice.example>',
        "To: patient@example.net",
        "Subject: Your appointment",
    )


def test_rewrite_keeps_an_existing_reply_to() -> None:
    original = msg(
        "Subject: s", "From: tdp@practice.example", "Reply-To: desk@practice.example", "To: t@x"
    )
    assert rewrite_from(original, ACCOUNT) == msg(
        "Subject: s", f"From: {ACCOUNT}", "Reply-To: desk@practice.example", "To: t@x"
    )


def test_rewrite_keeps_the_original_folding_in_reply_to() -> None:
    original = msg('From: "A very long display name"\r\n\t<tdp@practice.example>', "To: t@x")
    assert rewrite_from(original, ACCOUNT) == msg(
        f'From: "A very long display name" <{ACCOUNT}>',
        'Reply-To: "A very long display name"\r\n\t<tdp@practice.example>',
        "To: t@x",
    )


def test_rewrite_drops_a_display_name_that_looks_like_an_address() -> None:
    original = msg('From: "boss@bank.example" <tdp@practice.example>')
    assert rewrite_from(original, ACCOUNT) == msg(
        f"From: {ACCOUNT}", 'Reply-To: "boss@bank.example" <tdp@practice.example>'
    )


def test_rewrite_of_the_account_itself_changes_nothing() -> None:
    original = msg(f"From: Practice <{ACCOUNT.upper()}>", "To: t@x")
    assert rewrite_from(original, ACCOUNT) is original


def test_rewrite_adds_a_missing_from() -> None:
    assert rewrite_from(msg("Subject: s"), ACCOUNT) == msg(f"From: {ACCOUNT}", "Subject: s")


def test_rewrite_of_the_last_header_line() -> None:
    original = b"Subject: s\r\nFrom: a@x.example\r\n\r\nbody"
    assert rewrite_from(original, ACCOUNT) == (
        f"Subject: s\r\nFrom: {ACCOUNT}\r\nReply-To: a@x.example\r\n\r\nbody".encode()
    )


def test_8bit_headers_survive() -> None:
    original = 'From: "Café Dental" <tdp@practice.example>\r\nSubject: Grüße\r\n\r\nbody'.encode()
    expected = (
        f'From: {ACCOUNT}\r\nReply-To: "Café Dental" <tdp@practice.example>\r\n'
        "Subject: Grüße\r\n\r\nbody"
    )
    assert rewrite_from(original, ACCOUNT) == expected.encode()  # non-ASCII name: not copied
    assert (
        bare_from(original) == "From: tdp@practice.example\r\nSubject: Grüße\r\n\r\nbody".encode()
    )


# -- dispatch of the policy and the envelope ---------------------------------------------------


def test_apply_from_policy() -> None:
    original = msg('From: "N" <n@x.example>')
    assert apply_from_policy(original, "keep", ACCOUNT) is original
    assert apply_from_policy(original, "bare", None) == msg("From: n@x.example")
    assert apply_from_policy(original, "rewrite", ACCOUNT).startswith(b'From: "N" <practice@')
    assert apply_from_policy(original, "rewrite", None) is original


def test_envelope_sender() -> None:
    assert envelope_sender("app@x.example", ACCOUNT, use_account=True) == ACCOUNT
    assert envelope_sender("app@x.example", ACCOUNT, use_account=False) == "app@x.example"
    assert envelope_sender("", ACCOUNT, use_account=True) == ""  # a bounce stays a bounce
    assert envelope_sender("app@x.example", None, use_account=True) == "app@x.example"
