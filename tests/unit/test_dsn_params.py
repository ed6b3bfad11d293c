"""relayd.dsn.params: RFC 3461 MAIL and RCPT parameters as intake checks and keeps them, and
the RCPT parameters delivery forwards to an upstream that advertises DSN, which must say
again exactly what the app said."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.dsn.params import (
    MAX_ENVID,
    MAX_ORCPT,
    DsnParamError,
    mail_dsn,
    mail_param,
    orcpt_text,
    original_recipient,
    rcpt_options,
    rcpt_params,
    xtext_bytes,
    xtext_decode,
    xtext_encode,
)
from relayd.types import RcptDsn

# --- MAIL: RET and ENVID --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kept"), [("FULL", "RET=FULL"), ("HDRS", "RET=HDRS"), ("hdrs", "RET=HDRS")]
)
def test_ret_is_full_or_hdrs_in_upper_case(value: str, kept: str) -> None:
    assert mail_param("RET", value) == kept


@pytest.mark.parametrize("value", ["", "BOTH", "FULL,HDRS", "NEVER"])
def test_any_other_ret_is_refused(value: str) -> None:
    with pytest.raises(DsnParamError, match="RET must be FULL or HDRS"):
        mail_param("RET", value)


@pytest.mark.parametrize("value", ["abc", "QQ+2B314", "x" * MAX_ENVID, "+41" * MAX_ENVID])
def test_envid_is_kept_as_xtext(value: str) -> None:
    """Kept encoded, as it is forwarded verbatim; the limit counts decoded characters."""
    assert mail_param("ENVID", value) == f"ENVID={value}"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a=b",  # "=" must be encoded
        "a+b",  # "+" must start +XX
        "a+2b",  # hex in upper case only
        "a b",
        "caf\u00e9",  # xtext is ASCII
        "x" * (MAX_ENVID + 1),
        "+41" * (MAX_ENVID + 1),
    ],
)
def test_a_bad_or_long_envid_is_refused(value: str) -> None:
    with pytest.raises(DsnParamError, match="ENVID must be xtext of at most 100 characters"):
        mail_param("ENVID", value)


def test_mail_dsn_reads_back_ret_and_the_decoded_envid() -> None:
    assert mail_dsn(("BODY=8BITMIME", "RET=FULL", "ENVID=QQ+2B314")) == (True, "QQ+314")
    assert mail_dsn(("ENVID=Rechnung+C3+A4",)) == (False, "Rechnung\u00e4")  # UTF-8 bytes
    assert mail_dsn(("ENVID=x+FFy",)) == (False, "x\ufffdy")  # not UTF-8: shown replaced
    assert mail_dsn(("RET=HDRS",)) == (False, None)
    assert mail_dsn(()) == (False, None)


# --- RCPT: NOTIFY and ORCPT -----------------------------------------------------------------


def test_no_parameters_keep_nothing() -> None:
    assert rcpt_params([]) == RcptDsn(None, None)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("NEVER", "NEVER"),
        ("never", "NEVER"),
        ("SUCCESS", "SUCCESS"),
        ("FAILURE,DELAY", "FAILURE,DELAY"),
        ("delay,Success,FAILURE", "DELAY,SUCCESS,FAILURE"),
    ],
)
def test_notify_is_never_or_a_list_of_events_in_upper_case(value: str, kept: str) -> None:
    assert rcpt_params([f"NOTIFY={value}"]) == RcptDsn(kept, None)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "NEVER,FAILURE",  # NEVER stands alone
        "FAILURE,NEVER",
        "SUCCESS,SUCCESS",
        "FAILURE,",
        "ALWAYS",
        "FAILURE;DELAY",
    ],
)
def test_a_bad_notify_is_refused(value: str) -> None:
    with pytest.raises(DsnParamError, match="NOTIFY must be NEVER or a list"):
        rcpt_params([f"NOTIFY={value}"])


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("rfc822;bob@example.com", "rfc822;bob@example.com"),
        ("RFC822;bob+2Bx@example.com", "rfc822;bob+x@example.com"),
        ("rfc822;a+3Db+20c@example.com", "rfc822;a=b c@example.com"),
        ("x-local-1;+41lice", "x-local-1;Alice"),
        # an app's UTF-8 address as xtext: its bytes, read as UTF-8 (not one char per byte)
        ("rfc822;b+C3+BCro@example.de", "rfc822;b\u00fcro@example.de"),
        ("rfc822;+E2+82+AC@example.com", "rfc822;\u20ac@example.com"),
        # RFC 6533 utf-8-addr-xtext: no +XX in it; kept as sent, \\x{..} read for reports
        ("UTF-8;b\\x{FC}ro@example.de", "utf-8;b\\x{FC}ro@example.de"),
        ("rfc822;a+09b@example.com", "rfc822;a\tb@example.com"),  # white space is printable
    ],
)
def test_orcpt_keeps_the_type_in_lower_case_and_the_address_decoded(value: str, kept: str) -> None:
    assert rcpt_params([f"ORCPT={value}"]) == RcptDsn(None, kept)


@pytest.mark.parametrize(
    "value",
    [
        "bob@example.com",  # no addr-type
        ";bob@example.com",
        "-rfc822;bob@example.com",  # addr-type starts with a letter or digit
        "rfc 822;bob@example.com",
        "rfc822;",
        "rfc822;bob=x@example.com",
        "rfc822;bob+2bx@example.com",
        "rfc822;bob+x@example.com",  # a literal + must be +2B
        "rfc822;bob x@example.com",
        "rfc822;b\u00f6b@example.com",
    ],
)
def test_a_bad_orcpt_is_refused(value: str) -> None:
    with pytest.raises(DsnParamError, match="ORCPT must be addr-type;xtext"):
        rcpt_params([f"ORCPT={value}"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("rfc822;b+FCro@example.de", "ORCPT address must be UTF-8 once decoded from xtext"),
        ("x-odd;+FF+00bytes", "ORCPT address must be UTF-8 once decoded from xtext"),
        ("rfc822;b+C3@example.de", "ORCPT address must be UTF-8 once decoded from xtext"),
        ("rfc822;bob+00@example.com", "must not decode to control characters"),
        ("rfc822;bob+0D+0ABcc:x@example.com", "must not decode to control characters"),
    ],
)
def test_an_orcpt_that_is_not_text_is_refused(value: str, message: str) -> None:
    """Kept decoded, as text: bytes that are no text could not be forwarded as sent."""
    with pytest.raises(DsnParamError, match=message):
        rcpt_params([f"ORCPT={value}"])


def test_orcpt_fits_the_command_line() -> None:
    at_limit = "rfc822;" + "b" * (MAX_ORCPT - len("rfc822;") - len("@x.org")) + "@x.org"
    assert len(at_limit) == MAX_ORCPT
    assert rcpt_params([f"ORCPT={at_limit}"]).orcpt == at_limit
    with pytest.raises(DsnParamError, match="ORCPT is too long"):
        rcpt_params([f"ORCPT={at_limit}b"])


def test_notify_and_orcpt_together_in_either_order_and_any_case() -> None:
    both = RcptDsn("SUCCESS,FAILURE", "rfc822;bob+x@example.com")
    assert rcpt_params(["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+2Bx@example.com"]) == both
    assert rcpt_params(["orcpt=rfc822;bob+2Bx@example.com", "notify=success,failure"]) == both


@pytest.mark.parametrize(
    ("params", "keyword"),
    [
        (["NOTIFY=NEVER", "NOTIFY=NEVER"], "NOTIFY"),
        (["ORCPT=rfc822;a@b", "ORCPT=rfc822;a@b"], "ORCPT"),
        (["SIZE=10"], "SIZE"),
        (["BODY=8BITMIME"], "BODY"),
        (["FOO"], "FOO"),
    ],
)
def test_other_or_repeated_parameters_are_refused(params: list[str], keyword: str) -> None:
    with pytest.raises(DsnParamError, match=f"unsupported or repeated parameter {keyword}"):
        rcpt_params(params)


# --- forwarding: the RCPT parameters for a DSN upstream -------------------------------------


def test_nothing_to_forward_without_parameters() -> None:
    assert rcpt_options(RcptDsn()) == []


def test_forwarded_parameters_for_what_intake_kept() -> None:
    assert rcpt_options(RcptDsn("NEVER")) == ["NOTIFY=NEVER"]
    assert rcpt_options(RcptDsn("SUCCESS,FAILURE", "rfc822;bob+x@example.com")) == [
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;bob+2Bx@example.com",
    ]
    assert rcpt_options(RcptDsn(None, "rfc822;a=b c@example.com")) == [
        "ORCPT=rfc822;a+3Db+20c@example.com"
    ]


def test_an_orcpt_without_a_type_is_forwarded_as_rfc822() -> None:
    assert rcpt_options(RcptDsn(None, "bob@example.com")) == ["ORCPT=rfc822;bob@example.com"]


@pytest.mark.parametrize(
    "params",
    [
        ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+2Bx@example.com"],
        ["NOTIFY=NEVER"],
        ["ORCPT=rfc822;a+3Db+20c@example.com"],
        ["NOTIFY=DELAY", "ORCPT=rfc822;caf+C3+A9@example.com"],  # UTF-8 bytes, as sent
        ["ORCPT=rfc822;+E2+82+AC+F0+9F+93+A7@example.com"],  # 3- and 4-byte sequences
        ["ORCPT=utf-8;b\\x{FC}ro@example.de"],  # RFC 6533 utf-8-addr-xtext
    ],
)
def test_what_the_app_sent_is_what_the_upstream_gets(params: list[str]) -> None:
    """Canonical parameters (upper-case NOTIFY, lower-case type, minimal xtext) come back
    character for character from what intake stored."""
    assert rcpt_options(rcpt_params(params)) == params


def test_a_needlessly_encoded_orcpt_is_forwarded_in_its_minimal_equal_form() -> None:
    assert rcpt_options(rcpt_params(["ORCPT=RFC822;+41lice@example.com"])) == [
        "ORCPT=rfc822;Alice@example.com"
    ]


# Text an app can give as an address: any character but controls and surrogates. Minus the
# values orcpt_text reads as a queue from before UTF-8 decoding (mojibake such as "Ã¼").
_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60).filter(
    lambda text: orcpt_text(text) == text
)
_NOTIFY = st.one_of(
    st.none(),
    st.just("NEVER"),
    st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1, unique=True).map(
        ",".join
    ),
)


@given(_NOTIFY, _TEXT)
def test_the_app_s_orcpt_is_forwarded_byte_for_byte(notify: str | None, address: str) -> None:
    """Whatever an app sends in minimal xtext (UTF-8 bytes as +XX) comes back identical."""
    params = ([f"NOTIFY={notify}"] if notify else []) + [f"ORCPT=rfc822;{xtext_encode(address)}"]
    stored = rcpt_params(params)
    assert stored.orcpt == f"rfc822;{address}"  # decoded to the text, not to its bytes
    assert rcpt_options(stored) == params


@given(_TEXT)
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii() and " " not in encoded and "=" not in encoded
    assert xtext_bytes(encoded) == text.encode("utf-8")
    assert xtext_decode(encoded, errors="strict") == text


@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60))
def test_ascii_orcpt_is_dsn_xtext_encoded(address: str) -> None:
    (option,) = rcpt_options(RcptDsn(None, f"rfc822;{address}"))
    assert option == f"ORCPT=rfc822;{xtext_encode(address)}"


# --- a queue from before xtext_decode read UTF-8 ---------------------------------------------

# What intake stored for `ORCPT=rfc822;b+C3+BCro@example.de` then: one character per byte.
LEGACY = "rfc822;b\u00c3\u00bcro@example.de"


def test_a_stored_legacy_orcpt_is_still_forwarded_as_the_app_sent_it() -> None:
    assert rcpt_options(RcptDsn(None, LEGACY)) == ["ORCPT=rfc822;b+C3+BCro@example.de"]


def test_a_stored_legacy_orcpt_is_reported_as_the_address_it_was() -> None:
    assert original_recipient(LEGACY) == "utf-8;b\u00fcro@example.de"


@pytest.mark.parametrize(
    "address",
    [
        "b\u00fcro@example.de",  # Latin-1 range, but as bytes not UTF-8: taken as it is
        "\u00c3@example.de",  # a lone lead byte
        "\u20ac@example.com",  # beyond U+00FF: never legacy
        "bob@example.com",
    ],
)
def test_only_mojibake_is_read_as_legacy(address: str) -> None:
    assert orcpt_text(address) == address


# --- Original-Recipient in relayd's own reports ---------------------------------------------


@pytest.mark.parametrize(
    ("stored", "field"),
    [
        ("rfc822;bob+x@example.com", "rfc822;bob+x@example.com"),
        ("bob@example.com", "rfc822;bob@example.com"),  # no type: RFC 3461's default
        ("x-local-1;Alice", "x-local-1;Alice"),
        # rfc822 is ASCII by definition (RFC 3461 4.2): a UTF-8 address is RFC 6533's utf-8
        ("rfc822;b\u00fcro@example.de", "utf-8;b\u00fcro@example.de"),
        # RFC 6533 3: utf-8-addr-xtext becomes the utf-8-address form in the report
        ("utf-8;b\\x{FC}ro@example.de", "utf-8;b\u00fcro@example.de"),
        ("utf-8;\\x{1F4E7}@example.de", "utf-8;\U0001f4e7@example.de"),
        ("utf-8;a\\x{D800}b@example.de", "utf-8;a\\x{D800}b@example.de"),  # no character
        ("x-local-1;\\x{FC}", "x-local-1;\\x{FC}"),  # only the utf-8 type has \\x{..}
    ],
)
def test_original_recipient_field(stored: str, field: str) -> None:
    assert original_recipient(stored) == field
