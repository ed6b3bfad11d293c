"""cli/sendmail.py's pure parts: the flags cron, PHP and friends pass, stdin, headers, envelope."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from relayd.cli.sendmail import (
    DataError,
    Options,
    UsageError,
    compose,
    parse_args,
    read_message,
    split_headers,
    submission_address,
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-t", "-i"], Options(extract=True, ignore_dots=True)),  # PHP mail()'s default
        (["-oi", "-t"], Options(extract=True, ignore_dots=True)),
        (  # Debian cron
            ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
            Options(ignore_dots=True, full_name="CronDaemon", recipients=["root"]),
        ),
        (
            ["-f", "<app@example.org>", "a@x.example"],
            Options(sender="app@example.org", recipients=["a@x.example"]),
        ),
        (
            ["-fapp@example.org", "-F", "The App", "--", "-odd@x.example"],
            Options(sender="app@example.org", full_name="The App", recipients=["-odd@x.example"]),
        ),
        (["-r", "<>", "a@x.example"], Options(sender="", recipients=["a@x.example"])),
        (
            ["-bm", "-v", "a@x.example, b@x.example"],
            Options(recipients=["a@x.example", "b@x.example"]),
        ),
        (
            ["-c", "/etc/relayd/other.toml", "-odi", "a@x.example"],
            Options(config=Path("/etc/relayd/other.toml"), recipients=["a@x.example"]),
        ),
        (
            ["-C/etc/r.toml", "-N", "never", "-R", "hdrs", "-V", "id1", "a@x.example"],
            Options(config=Path("/etc/r.toml"), recipients=["a@x.example"]),
        ),
    ],
)
def test_flags(argv: list[str], expected: Options) -> None:
    assert parse_args(argv) == expected


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-bs"], "-bs (SMTP on standard input) is not supported"),
        (["-bp"], "relayd queue list"),
        (["-q1h"], "relayd queue retry --all"),
        (["-Z"], "unknown option -Z"),
        (["-f"], "option -f needs a value"),
    ],
)
def test_refused_flags_say_why(argv: list[str], says: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_args(argv)
    assert says in str(info.value)


def test_a_lone_dot_ends_input_unless_i() -> None:
    raw = b"Subject: x\n\nline\n.\nafter\n"
    assert read_message(io.BytesIO(raw), ignore_dots=False) == b"Subject: x\r\n\r\nline\r\n"
    kept = read_message(io.BytesIO(raw), ignore_dots=True)
    assert kept == b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n"
    # CRLF input, a dotted line that is not alone, and no final newline.
    crlf = read_message(io.BytesIO(b"A: 1\r\n\r\n..x\r\n.y"), ignore_dots=False)
    assert crlf == b"A: 1\r\n\r\n..x\r\n.y\r\n"


def test_headers_end_at_an_empty_or_a_non_header_line() -> None:
    assert split_headers(b"A: 1\r\n folded\r\nB: 2\r\n\r\nbody\r\n") == (
        [b"A: 1", b" folded", b"B: 2"],
        b"body\r\n",
    )
    assert split_headers(b"A: 1\r\nnot a header\r\n") == ([b"A: 1"], b"not a header\r\n")
    assert split_headers(b"just text\r\n") == ([], b"just text\r\n")


def test_t_takes_to_cc_bcc_and_removes_bcc() -> None:
    data = (
        b"To: One <one@x.example>, two@x.example\r\nCc: three@x.example\r\n"
        b"Bcc: hidden@x.example,\r\n also-hidden@x.example\r\nSubject: s\r\n\r\nbody\r\n"
    )
    opts = Options(extract=True, recipients=["arg@x.example", "two@x.example"])
    composed = compose(data, opts, "root@host.example")
    assert composed.recipients == (
        "arg@x.example",
        "two@x.example",
        "one@x.example",
        "three@x.example",
        "hidden@x.example",
        "also-hidden@x.example",
    )
    assert b"Bcc" not in composed.data and b"hidden" not in composed.data
    assert b"Subject: s\r\nFrom: root@host.example\r\n\r\nbody\r\n" in composed.data
    assert composed.sender == "root@host.example"


def test_from_is_added_only_when_missing_with_the_f_name() -> None:
    named = compose(
        b"Subject: s\r\n\r\nb\r\n",
        Options(full_name="Zoë Cron", recipients=["a@x.example"]),
        "cron@h.example",
    )
    assert b"From: =?utf-8?b?Wm/DqyBDcm9u?= <cron@h.example>\r\n" in named.data
    kept = compose(
        b"From: app@x.example\r\n\r\nb\r\n",
        Options(full_name="N", sender="bounce@x.example", recipients=["a@x.example"]),
        "u@h",
    )
    assert kept.data.count(b"From:") == 1 and kept.sender == "bounce@x.example"
    assert compose(
        b"\xc3\xa9: \r\n\r\n\xc3\xa9\r\n", Options(recipients=["a@x.example"]), "u@h.example"
    ).options == ("BODY=8BITMIME",)


def test_bad_input_is_refused() -> None:
    with pytest.raises(UsageError, match="no recipients"):
        compose(b"Subject: s\r\n\r\n", Options(), "u@h.example")
    with pytest.raises(DataError, match="bad address"):
        compose(b"\r\n", Options(recipients=["not an address"]), "u@h.example")
    long_line = b"x" * 1200  # the daemon (or enqueue_directly) makes it wire-safe
    kept = compose(b"\r\n" + long_line + b"\r\n", Options(recipients=["a@x.example"]), "u@h.x")
    assert long_line + b"\r\n" in kept.data


def test_submission_address(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    assert submission_address(None, missing) == ("127.0.0.1", 2525)
    raw = tmp_path / "raw.toml"
    raw.write_text('[server]\nlisten = ["0.0.0.0:2600", "[::1]:2601"]\n')
    assert submission_address(None, raw) == ("127.0.0.1", 2600)
    raw.write_text('[server]\nlisten = ["[::]:2602"]\n')
    assert submission_address(None, raw) == ("::1", 2602)
