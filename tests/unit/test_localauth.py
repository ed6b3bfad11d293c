"""policy.localauth: scrypt hashes, the failed-login limiter (virtual time), allowed senders."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from relayd.cli.main import main
from relayd.config.model import load
from relayd.errors import ConfigError
from relayd.policy.localauth import (
    DECOY,
    FailureLimiter,
    hash_password,
    parse_hash,
    sender_allowed,
    verify_password,
)
from relayd.policy.routing import Routes


def test_a_hash_verifies_its_password_only() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$scrypt$ln=15,r=8,p=1$")
    parsed = parse_hash(stored)
    assert len(parsed.salt) == 16
    assert len(parsed.digest) == 32
    assert verify_password(b"correct horse", parsed)
    assert not verify_password(b"correct horsf", parsed)
    assert not verify_password(b"", parsed)


def test_salts_differ_and_a_given_salt_is_deterministic() -> None:
    assert hash_password("pw") != hash_password("pw")
    assert hash_password("pw", salt=b"s" * 16) == hash_password("pw", salt=b"s" * 16)
    assert str(parse_hash(hash_password("pw", salt=b"s" * 16))) == hash_password(
        "pw", salt=b"s" * 16
    )


def test_non_ascii_passwords() -> None:
    assert verify_password("pässwörd".encode(), parse_hash(hash_password("pässwörd")))


@pytest.mark.parametrize(
    "text",
    [
        "hunter2",  # a plain password where the hash belongs
        "",
        "$scrypt$ln=15,r=8,p=1$c2FsdA$",
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "$scrypt$ln=30,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,  # absurd cost
        "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 42 + "!",
    ],
)
def test_anything_else_is_not_a_hash(text: str) -> None:
    with pytest.raises(ValueError, match="relayd hash-password"):
        parse_hash(text)


def test_empty_password_cannot_be_hashed() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


def test_the_decoy_matches_nothing() -> None:
    assert not verify_password(b"", DECOY)
    assert not verify_password(b"anything", DECOY)


def test_five_failures_in_five_minutes_lock_a_client_out() -> None:
    limiter = FailureLimiter(max_failures=5, period=300)
    for at in (0, 10, 20, 30):
        limiter.failed("192.0.2.1", at)
        assert limiter.locked_until("192.0.2.1", at) is None
    assert limiter.failed("192.0.2.1", 40) == 5
    # Locked until the first of the five failures leaves the window.
    assert limiter.locked_until("192.0.2.1", 41) == 300
    assert limiter.locked_until("192.0.2.1", 299.9) == 300
    assert limiter.locked_until("192.0.2.1", 300) is None
    # Other clients are not affected.
    assert limiter.locked_until("192.0.2.2", 41) is None


def test_failures_spread_out_never_lock() -> None:
    limiter = FailureLimiter(max_failures=5, period=300)
    for step in range(30):  # one failure every 75 s: at most 4 in any 5 minutes
        limiter.failed("c", step * 75.0)
        assert limiter.locked_until("c", step * 75.0) is None


def test_a_success_forgets_the_failures() -> None:
    limiter = FailureLimiter(max_failures=3, period=60)
    limiter.failed("c", 0)
    limiter.failed("c", 1)
    limiter.succeeded("c")
    limiter.failed("c", 2)
    limiter.failed("c", 3)
    assert limiter.locked_until("c", 4) is None
    limiter.failed("c", 4)
    assert limiter.locked_until("c", 5) == 62


def test_a_locked_client_that_keeps_trying_stays_locked() -> None:
    limiter = FailureLimiter(max_failures=2, period=60)
    limiter.failed("c", 0)
    limiter.failed("c", 1)
    limiter.failed("c", 50)
    assert limiter.locked_until("c", 60.5) == 61  # failures at 1 and 50 still count
    assert limiter.locked_until("c", 61) is None


@pytest.mark.parametrize(
    ("address", "patterns", "allowed"),
    [
        ("billing@practice.example", [], True),
        ("billing@practice.example", ["billing@practice.example"], True),
        ("Billing@Practice.Example", ["billing@practice.example"], True),
        ("other@practice.example", ["billing@practice.example"], False),
        ("other@practice.example", ["*@practice.example"], True),
        ("other@sub.practice.example", ["*@practice.example"], False),
        ("anyone@anywhere.example", ["*"], True),
        ("", ["*@practice.example"], False),
        ("", ["*"], True),
        ("", [], True),
    ],
)
def test_allowed_senders(address: str, patterns: list[str], allowed: bool) -> None:
    assert sender_allowed(address, patterns) is allowed


# -- where hashes come from and go ------------------------------------------------------------


def test_hash_password_reads_stdin_when_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("app Pass word\n"))
    with pytest.raises(SystemExit) as caught:
        main(["hash-password"])
    out = capsys.readouterr().out
    assert caught.value.code == 0
    assert verify_password(b"app Pass word", parse_hash(out.strip()))
    assert "app Pass word" not in out


def test_hash_password_refuses_an_empty_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(SystemExit) as caught:
        main(["hash-password"])
    assert caught.value.code == 1
    assert "empty" in capsys.readouterr().err


def test_a_plain_password_in_password_hash_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "relayd.toml"
    path.write_text(
        '[[server.users]]\nname = "app"\npassword_hash = "hunter2"\n\n'
        '[upstreams.capture]\nprovider = "directory"\npath = "out"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert caught.value.key == "server.users[0].password_hash"
    assert caught.value.line == 3
    assert "relayd hash-password" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_users_and_require_auth_load(tmp_path: Path) -> None:
    path = tmp_path / "relayd.toml"
    stored = hash_password("pw", salt=b"0" * 16)
    path.write_text(
        "[server]\nrequire_auth = true\n\n"
        f'[[server.users]]\nname = "app"\npassword_hash = "{stored}"\n'
        'allowed_senders = ["*@practice.example"]\n\n'
        '[upstreams.capture]\nprovider = "directory"\npath = "out"\nsenders = ["user:app"]\n'
    )
    config = load(path, environ={})
    (user,) = config.server.users
    assert user.password_hash.get_secret_value() == stored
    assert stored not in repr(config)
    assert Routes.from_config(config).pick("x@y.example", "app") == "capture"
