"""relayd.config.reports: the [bounces], [bounces.imap] and [notifications] tables.

Loaded from TOML text as relayd loads its file (config.load), so every error is checked as
the operator reads it: the dotted key, the message, and the line.
"""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest

from relayd.bounces.jobs import imap_settings
from relayd.bounces.poller import ImapSettings
from relayd.config.model import Config, render_effective
from relayd.config.reports import BouncesConfig, BouncesImapConfig, NotificationsConfig
from relayd.policy.providers import IMAP_HOSTS
from tests.support.config_files import error_of, load_text

SECRET = "Imap-distinctive-SECRET-9Qx"
CAPTURE = '[upstreams.capture]\nprovider = "directory"\npath = "outbox"\n'  # lines 1-3
BOUNCES = CAPTURE + '[bounces]\nmailbox = "bounces@practice.example"\n'  # lines 4-5
IMAP = BOUNCES + '[bounces.imap]\nhost = "imap.practice.example"\nusername = "office"\n'  # 6-8
IMAP_ENV = IMAP + 'password_env = "IMAP_PW"\n'  # line 9
NOTIFICATIONS = CAPTURE + '[notifications]\nmailbox = "it@practice.example"\n'  # lines 4-5


def imap_of(config: Config) -> BouncesImapConfig:
    assert config.bounces is not None and config.bounces.imap is not None
    return config.bounces.imap


def notifications_of(config: Config) -> NotificationsConfig:
    assert config.notifications is not None
    return config.notifications


# -- defaults ---------------------------------------------------------------------------


def test_both_tables_are_optional(tmp_path: Path) -> None:
    config = load_text(tmp_path, CAPTURE)
    assert (config.bounces, config.notifications) == (None, None)


def test_bounces_defaults(tmp_path: Path) -> None:
    bounces = load_text(tmp_path, BOUNCES).bounces
    assert bounces == BouncesConfig(mailbox="bounces@practice.example")
    assert bounces is not None
    assert (bounces.notify_sender, bounces.delay_warning, bounces.from_) == (False, None, None)
    assert bounces.imap is None


def test_bounces_values_and_the_from_key(tmp_path: Path) -> None:
    text = BOUNCES + (
        'notify_sender = true\ndelay_warning = "4h"\nfrom = "MAILER-DAEMON@relay.example"\n'
    )
    bounces = load_text(tmp_path, text).bounces
    assert bounces is not None
    assert bounces.notify_sender is True
    assert bounces.delay_warning == 4 * 3600
    assert bounces.from_ == "MAILER-DAEMON@relay.example"


def test_imap_defaults(tmp_path: Path) -> None:
    imap = imap_of(load_text(tmp_path, IMAP_ENV, IMAP_PW=SECRET))
    assert (imap.host, imap.port, imap.username) == ("imap.practice.example", 993, "office")
    assert (imap.folder, imap.move_to) == ("INBOX", "relayd/bounces")
    assert (imap.poll_interval, imap.lookback, imap.timeout) == (300, 14 * 86400, 30)
    assert (imap.idle, imap.tls, imap.tls_ca_file, imap.provider) == (True, True, None, None)
    assert imap.password is not None
    assert imap.password.get_secret_value() == SECRET


def test_imap_values(tmp_path: Path) -> None:
    (tmp_path / "imap-ca.pem").write_text("a CA certificate\n", encoding="utf-8")
    local = IMAP_ENV.replace('"imap.practice.example"', '"127.0.0.1"')  # tls = false: local
    text = local + textwrap.dedent(
        """\
        port = 143
        folder = "Posteingang"
        move_to = "Posteingang/relayd"
        poll_interval = "90s"
        lookback = "2d"
        idle = false
        tls = false
        tls_ca_file = "imap-ca.pem"
        timeout = "1m"
        """
    )
    imap = imap_of(load_text(tmp_path, text, IMAP_PW=SECRET))
    assert (imap.port, imap.folder, imap.move_to) == (143, "Posteingang", "Posteingang/relayd")
    assert (imap.poll_interval, imap.lookback, imap.timeout) == (90, 2 * 86400, 60)
    assert (imap.idle, imap.tls) == (False, False)
    assert imap.tls_ca_file == tmp_path / "imap-ca.pem"  # relative to the file


@pytest.mark.parametrize(("provider", "host"), sorted(IMAP_HOSTS.items()))
def test_the_provider_fills_the_imap_host(tmp_path: Path, provider: str, host: str) -> None:
    text = BOUNCES + f'[bounces.imap]\nprovider = "{provider}"\nusername = "u"\n'
    imap = imap_of(load_text(tmp_path, text + 'password_env = "P"\n', P=SECRET))
    assert (imap.provider, imap.host) == (provider, host)


def test_an_explicit_host_beats_the_provider(tmp_path: Path) -> None:
    text = IMAP_ENV + 'provider = "gmail"\n'
    imap = imap_of(load_text(tmp_path, text, IMAP_PW=SECRET))
    assert (imap.provider, imap.host) == ("gmail", "imap.practice.example")


def test_the_imap_password_file_is_read_stripped_and_masked(tmp_path: Path) -> None:
    (tmp_path / "imap.secret").write_text(SECRET + "\n", encoding="utf-8")
    config = load_text(tmp_path, IMAP + 'password_file = "imap.secret"\n')
    imap = imap_of(config)
    assert imap.password_file == tmp_path / "imap.secret"
    assert imap.password is not None
    assert imap.password.get_secret_value() == SECRET
    rendered = render_effective(config)
    for text in (repr(config), str(config), repr(imap), rendered):
        assert SECRET not in text
    assert f'password = "********"  # from password_file {tmp_path / "imap.secret"}' in rendered
    assert tomllib.loads(rendered)["bounces"]["imap"]["host"] == "imap.practice.example"


def test_notifications_defaults(tmp_path: Path) -> None:
    notices = notifications_of(load_text(tmp_path, NOTIFICATIONS))
    assert notices.mailbox == "it@practice.example"
    assert (notices.from_, notices.via) == (None, None)
    assert (notices.digest_interval, notices.remind_after) == (900, 86400)
    assert (notices.unreachable_after, notices.backlog_age) == (600, 3600)
    assert (notices.backlog_depth, notices.bounce_rate) == (10_000, 50)


def test_notifications_values(tmp_path: Path) -> None:
    text = NOTIFICATIONS + textwrap.dedent(
        """\
        from = "relayd@practice.example"
        digest_interval = "5m"
        remind_after = "12h"
        via = "capture"
        unreachable_after = "0s"
        backlog_age = "30m"
        backlog_depth = 500
        bounce_rate = 5
        """
    )
    notices = notifications_of(load_text(tmp_path, text))
    assert (notices.from_, notices.via) == ("relayd@practice.example", "capture")
    assert (notices.digest_interval, notices.remind_after) == (300, 12 * 3600)
    assert (notices.unreachable_after, notices.backlog_age) == (0, 1800)  # 0: at once
    assert (notices.backlog_depth, notices.bounce_rate) == (500, 5)


def test_notices_via_one_of_several_upstreams(tmp_path: Path) -> None:
    text = (
        NOTIFICATIONS
        + 'via = "alerts"\n[upstreams.alerts]\nprovider = "directory"\npath = "alerts"\n'
        + '[routing]\ndefault = "capture"\n'
    )
    assert notifications_of(load_text(tmp_path, text)).via == "alerts"


# -- errors name the key and the line ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        # required keys: a missing one points at its table's header
        (CAPTURE + "[bounces]\nnotify_sender = true\n", "bounces.mailbox", 4, None),
        (BOUNCES + '[bounces.imap]\nhost = "h"\n', "bounces.imap.username", 6, None),
        (CAPTURE + "[notifications]\nvia = 'capture'\n", "notifications.mailbox", 4, None),
        # unknown keys
        (BOUNCES + 'maibox = "x"\n', "bounces.maibox", 6, "unknown key"),
        (IMAP_ENV + 'pasword_file = "f"\n', "bounces.imap.pasword_file", 10, "unknown key"),
        (NOTIFICATIONS + 'digest = "5m"\n', "notifications.digest", 6, "unknown key"),
        # durations
        (
            BOUNCES + "delay_warning = 14400\n",
            "bounces.delay_warning",
            6,
            '14400 has no unit; write durations as strings, e.g. "14400s"',
        ),
        (
            BOUNCES + 'delay_warning = "soon"\n',
            "bounces.delay_warning",
            6,
            '"soon" is not a duration (use e.g. "300ms", "90s", "5m", "4h", "5d")',
        ),
        (
            IMAP_ENV + 'poll_interval = "0s"\n',
            "bounces.imap.poll_interval",
            10,
            "input should be greater than 0",
        ),
        (IMAP_ENV + "timeout = 30\n", "bounces.imap.timeout", 10, 'e.g. "30s"'),
        (IMAP_ENV + 'lookback = "-1d"\n', "bounces.imap.lookback", 10, "is not a duration"),
        (
            NOTIFICATIONS + 'digest_interval = "0s"\n',
            "notifications.digest_interval",
            6,
            "input should be greater than 0",
        ),
        (
            NOTIFICATIONS + 'remind_after = "daily"\n',
            "notifications.remind_after",
            6,
            '"daily" is not a duration',
        ),
        (
            NOTIFICATIONS + "backlog_age = 3600\n",
            "notifications.backlog_age",
            6,
            'e.g. "3600s"',
        ),
        # numbers
        (
            IMAP_ENV + "port = 0\n",
            "bounces.imap.port",
            10,
            "input should be greater than or equal to 1",
        ),
        (
            IMAP_ENV + "port = 65536\n",
            "bounces.imap.port",
            10,
            "input should be less than or equal to 65535",
        ),
        (
            NOTIFICATIONS + "backlog_depth = 0\n",
            "notifications.backlog_depth",
            6,
            "input should be greater than or equal to 1",
        ),
        (
            NOTIFICATIONS + "bounce_rate = 0\n",
            "notifications.bounce_rate",
            6,
            "input should be greater than or equal to 1",
        ),
        # notifications.via must name an upstream
        (
            NOTIFICATIONS + 'via = "smarthost"\n',
            "notifications.via",
            6,
            '"smarthost" is not an upstream',
        ),
        (
            NOTIFICATIONS + 'via = "my upstream"\n',
            "notifications.via",
            6,
            '"my upstream" is not an upstream name (letters, digits, "-", "_")',
        ),
        # bounces.imap: where the inbox is
        (
            BOUNCES + '[bounces.imap]\nusername = "u"\npassword_env = "P"\n',
            "bounces.imap.host",
            6,
            'set host (or provider = "gmail", ...)',
        ),
        (
            BOUNCES + '[bounces.imap]\nprovider = "aol"\nusername = "u"\npassword_env = "P"\n',
            "bounces.imap.provider",
            7,
            '"aol" has no IMAP preset (have: gmail, godaddy, google-workspace, ionos, '
            "microsoft365, outlook, yahoo); set host",
        ),
        (
            BOUNCES + '[bounces.imap]\nprovider = "directory"\nusername = "u"\n',
            "bounces.imap.provider",
            7,
            '"directory" has no IMAP preset',
        ),
        # bounces.imap: exactly one secret source, never inline
        (IMAP, "bounces.imap.password_file", 6, "set one of password_file, password_env"),
        (
            IMAP_ENV + 'password_file = "imap.secret"\n',
            "bounces.imap.password_file",
            10,
            "set one of password_file, password_env",
        ),
        (
            IMAP + f'password = "{SECRET}"\n',
            "bounces.imap.password",
            9,
            "secrets are not allowed inline; use password_file or password_env",
        ),
        (
            IMAP + 'password_env = "NOT_SET_ANYWHERE"\n',
            "bounces.imap.password_env",
            9,
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            IMAP + 'password_file = "nowhere.secret"\n',
            "bounces.imap.password_file",
            9,
            "cannot read",
        ),
        # bounces.imap: the report is moved out of the folder it was read from
        (
            IMAP_ENV + 'move_to = "INBOX"\n',
            "bounces.imap.move_to",
            10,
            "must differ from folder",
        ),
        (
            IMAP_ENV + 'folder = "Bounces"\nmove_to = "Bounces"\n',
            "bounces.imap.move_to",
            11,
            "must differ from folder",
        ),
    ],
)
def test_error_names_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, message: str | None
) -> None:
    error = error_of(tmp_path, text, IMAP_PW=SECRET, P=SECRET)

    assert (error.key, error.line) == (key, line)
    assert str(error).startswith(f"{key}: ")
    assert str(error).endswith(f" (line {line})")
    assert message is None or message in str(error)
    if message is None:
        assert str(error) == f"{key}: required key is missing (line {line})"
    assert SECRET not in str(error)


def test_an_inline_imap_table_points_at_its_line(tmp_path: Path) -> None:
    text = BOUNCES + 'imap = { host = "h", username = "u", password_env = "P", port = 0 }\n'
    error = error_of(tmp_path, text, P=SECRET)
    assert (error.key, error.line) == ("bounces.imap.port", 6)


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "imap.secret").write_text("\n", encoding="utf-8")
    error = error_of(tmp_path, IMAP + 'password_file = "imap.secret"\n')
    assert str(error) == "bounces.imap.password_file: the secret is empty (line 9)"


def test_the_first_error_in_file_order_and_the_rest_as_notes(tmp_path: Path) -> None:
    text = NOTIFICATIONS + 'digest_interval = "x"\n[bounces]\nmaibox = "b@x.example"\n'
    error = error_of(tmp_path, text)
    assert str(error).startswith("notifications.digest_interval: ")
    assert error.__notes__ == [
        "bounces.mailbox: required key is missing (line 7)",
        "bounces.maibox: unknown key (line 8)",
    ]


# -- what the poller refuses is refused at load ------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "line", "message"),
    [
        (
            'host = "imap.example.com"\ntls = false\n',
            "bounces.imap.tls",
            10,
            "tls = false would send the IMAP password in clear to imap.example.com; remove it",
        ),
        (
            'host = "h"\nfolder = "Bounces*"\n',
            "bounces.imap.folder",
            10,
            "'Bounces*' is not a mailbox name relayd can use over IMAP: ASCII only",
        ),
        (
            'host = "h"\nmove_to = "relayd/%"\n',
            "bounces.imap.move_to",
            10,
            "'relayd/%' is not a mailbox name relayd can use over IMAP",
        ),
        (
            'host = "h"\nfolder = "Entw\u00fcrfe"\n',
            "bounces.imap.folder",
            10,
            "ASCII only",
        ),
    ],
    ids=["clear-text-password-to-a-remote-host", "folder-wildcard", "move_to-wildcard", "utf8"],
)
def test_what_the_poller_refuses_is_a_config_error(
    tmp_path: Path, extra: str, key: str, line: int, message: str
) -> None:
    text = BOUNCES + f'[bounces.imap]\nusername = "u"\npassword_env = "P"\n{extra}'
    error = error_of(tmp_path, text, P=SECRET)
    assert (error.key, error.line) == (key, line)
    assert message in str(error)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_plain_imap_is_allowed_on_this_host(tmp_path: Path, host: str) -> None:
    text = BOUNCES + f'[bounces.imap]\nhost = "{host}"\nusername = "u"\npassword_env = "P"\n'
    imap = imap_of(load_text(tmp_path, text + "tls = false\nport = 143\n", P=SECRET))
    assert (imap.host, imap.tls) == (host, False)


def test_the_loaded_settings_are_what_the_poller_accepts(tmp_path: Path) -> None:
    """The daemon builds ImapSettings from the loaded table; it must never refuse them."""
    text = IMAP_ENV.replace('"imap.practice.example"', '"127.0.0.1"')
    imap = imap_of(load_text(tmp_path, text + 'tls = false\nfolder = "A B"\n', IMAP_PW=SECRET))
    settings = imap_settings(imap)
    assert (settings.host, settings.tls, settings.folder) == ("127.0.0.1", False, "A B")
    with pytest.raises(ValueError, match="tls: tls = false would send the IMAP password"):
        ImapSettings(host="imap.example.com", username="u", password="p", tls=False)


def test_the_imap_ca_file_must_exist(tmp_path: Path) -> None:
    error = error_of(tmp_path, IMAP_ENV + 'tls_ca_file = "imap-ca.pem"\n', IMAP_PW=SECRET)
    assert (
        str(error)
        == f"bounces.imap.tls_ca_file: {tmp_path / 'imap-ca.pem'} is not a file (line 10)"
    )


# -- the key is `from`, as documented -------------------------------------------------------


def test_from_is_the_only_spelling(tmp_path: Path) -> None:
    config = load_text(tmp_path, NOTIFICATIONS + 'from = "relayd@practice.example"\n')
    rendered = render_effective(config)
    assert 'from = "relayd@practice.example"' in rendered.split("[notifications]")[1]
    assert not [line for line in rendered.splitlines() if line.lstrip("# ").startswith("from_ ")]
    assert tomllib.loads(rendered)["notifications"]["from"] == "relayd@practice.example"
    error = error_of(tmp_path, NOTIFICATIONS + 'from_ = "relayd@practice.example"\n')
    assert str(error) == "notifications.from_: unknown key (line 6)"
    error = error_of(tmp_path, BOUNCES + 'from_ = "MAILER-DAEMON@relay.example"\n')
    assert str(error) == "bounces.from_: unknown key (line 6)"


def test_an_unset_from_is_shown_by_its_key(tmp_path: Path) -> None:
    rendered = render_effective(load_text(tmp_path, NOTIFICATIONS + BOUNCES[len(CAPTURE) :]))
    assert rendered.count("# from is not set") == 2


# -- booleans and numbers are TOML booleans and numbers, as in config/model.py ------------------


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('tls = "no"\n', "bounces.imap.tls"),
        ("idle = 0\n", "bounces.imap.idle"),
        ('port = "993"\n', "bounces.imap.port"),
    ],
)
def test_booleans_and_numbers_are_strict(tmp_path: Path, extra: str, key: str) -> None:
    text = IMAP_ENV.replace('"imap.practice.example"', '"127.0.0.1"') + extra
    error = error_of(tmp_path, text, IMAP_PW=SECRET)
    assert (error.key, error.line) == (key, 10)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (BOUNCES + 'notify_sender = "yes"\n', "bounces.notify_sender", "valid boolean"),
        (NOTIFICATIONS + 'backlog_depth = "5"\n', "notifications.backlog_depth", "valid integer"),
        (NOTIFICATIONS + "bounce_rate = 5.0\n", "notifications.bounce_rate", "valid integer"),
    ],
)
def test_strict_report_settings(tmp_path: Path, text: str, key: str, message: str) -> None:
    error = error_of(tmp_path, text)
    assert (error.key, error.line) == (key, 6)
    assert message in str(error)


# -- mailboxes are addresses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "reason"),
    [
        (CAPTURE + '[bounces]\nmailbox = "bounces"\n', "bounces.mailbox", 5, "local-part@domain"),
        (
            CAPTURE + '[bounces]\nmailbox = "<bounces@practice.example>"\n',
            "bounces.mailbox",
            5,
            "invalid",
        ),
        (CAPTURE + '[notifications]\nmailbox = "it @x.example"\n', "notifications.mailbox", 5, ""),
        (NOTIFICATIONS + 'from = "relayd@"\n', "notifications.from", 6, "local-part@domain"),
        (
            NOTIFICATIONS + 'from = "relayd <relayd@practice.example>"\n',
            "notifications.from",
            6,
            "",
        ),
        (
            CAPTURE + '[notifications]\nmailbox = "b\u00fcro@practice.example"\n',
            "notifications.mailbox",
            5,
            "without SMTPUTF8: use an ASCII address",
        ),
    ],
)
def test_mailboxes_must_be_addresses(
    tmp_path: Path, text: str, key: str, line: int, reason: str
) -> None:
    error = error_of(tmp_path, text)
    assert (error.key, error.line) == (key, line)
    assert "is not a mail address (" in str(error)
    assert reason in str(error)
    assert 'write it as local@domain, e.g. "it-alerts@practice.example"' in str(error)


# -- [bounces.imap] alone ------------------------------------------------------------------


def test_imap_without_bounces_names_a_line(tmp_path: Path) -> None:
    text = CAPTURE + '[bounces.imap]\nhost = "h"\nusername = "u"\npassword_env = "P"\n'
    error = error_of(tmp_path, text, P=SECRET)
    assert str(error) == "bounces.mailbox: required key is missing (line 4)"


def test_an_explicit_table_line_wins_over_an_implied_one(tmp_path: Path) -> None:
    text = (
        CAPTURE
        + '[bounces.imap]\nhost = "h"\nusername = "u"\npassword_env = "P"\n'
        + "[bounces]\nnotify_sender = true\n"
    )
    error = error_of(tmp_path, text, P=SECRET)
    assert str(error) == "bounces.mailbox: required key is missing (line 8)"
