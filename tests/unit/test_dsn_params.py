"""relayd.dsn_params: RFC 3461 MAIL and RCPT parameters as intake checks and keeps them, and
the RCPT parameters delivery forwards to an upstream that advertises DSN, which must say
again exactly what the app said."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.dsn import xtext_decode, xtext_encode
from relayd.dsn_params import (
    MAX_ENVID,
    MAX_ORCPT,
    DsnParamError,
    mail_dsn,
    mail_param,
    rcpt_options,
    rcpt_params,
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
        ["ORCPT=x-odd;+FF+00bytes"],  # not UTF-8: still the same bytes
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


_ADDRESS = st.text(st.characters(min_codepoint=1, max_codepoint=255), min_size=1, max_size=80)
_NOTIFY = st.one_of(
    st.none(),
    st.just("NEVER"),
    st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1, unique=True).map(
        ",".join
    ),
)


@given(_NOTIFY, _ADDRESS)
def test_forwarded_orcpt_decodes_to_the_stored_address_and_is_accepted_again(
    notify: str | None, address: str
) -> None:
    """Whatever intake can store (xtext_decode yields characters up to U+00FF), the
    forwarded ORCPT is valid xtext that decodes back to it, and parses to the same RcptDsn."""
    stored = RcptDsn(notify, f"rfc822;{address}")
    options = rcpt_options(stored)
    orcpt = options[-1].removeprefix("ORCPT=rfc822;")
    assert xtext_decode(orcpt) == address
    assert orcpt.isascii() and " " not in orcpt and "=" not in orcpt
    assert rcpt_params(options) == stored


@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60))
def test_ascii_orcpt_is_dsn_xtext_encoded(address: str) -> None:
    (option,) = rcpt_options(RcptDsn(None, f"rfc822;{address}"))
    assert option == f"ORCPT=rfc822;{xtext_encode(address)}"


def test_text_beyond_what_xtext_decode_yields_is_sent_as_utf8_xtext() -> None:
    """Not intake's (its decoded ORCPT is one character per byte), but still valid xtext."""
    assert rcpt_options(RcptDsn(None, "rfc822;\u20ac@example.com")) == [
        "ORCPT=rfc822;+E2+82+AC@example.com"
    ]
