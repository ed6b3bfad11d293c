"""config.model: good files load into the right values; every bad one names its key and line."""

from __future__ import annotations

import datetime
import ipaddress
import re
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from relayd.config.model import (
    Config,
    UpstreamConfig,
    default_config_path,
    load,
    parse_listen,
    render_effective,
)
from relayd.config.text import KeyLocator
from relayd.errors import ConfigError
from relayd.policy import providers
from relayd.policy.providers import Preset
from relayd.types import Ceiling
from tests.support.config_files import error_of, load_text, write

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "relayd.example.toml"
SECRET = "Zq9-distinctive-SECRET-7Kp"
CAPTURE = '[upstreams.capture]\nprovider = "directory"\npath = "outbox"\n'
# A well-formed scrypt hash (`relayd hash-password` output); distinctive, to check masking.
USER_HASH = "$scrypt$ln=15,r=8,p=1$Zq9distinctiveSECRET7Kp$" + "A" * 43


@pytest.fixture
def gmail(monkeypatch: pytest.MonkeyPatch) -> Preset:
    """A named preset like the ones the providers work will add."""
    preset = Preset(
        name="gmail",
        host="smtp.gmail.com",
        security="starttls",
        auth="password",
        rate_limits=("20/minute", "2000/day"),
    )
    monkeypatch.setitem(providers.PRESETS, "gmail", preset)
    return preset


# -- good configurations ------------------------------------------------------------------


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, CAPTURE)

    assert config.server.listen == ["127.0.0.1:2525"]
    assert config.server.max_message_size == 25_000_000
    assert config.server.max_line_length == 25_000_000
    assert config.server.max_recipients == 100
    assert config.server.allowed_networks == [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]
    assert config.server.idle_timeout == 300.0
    assert config.server.workers == 1
    assert config.queue.backend == "sqlite"
    assert config.queue.path == Path("/var/lib/relayd/queue.db")
    assert config.queue.max_lifetime == 5 * 86400
    assert config.queue.retry == [60, 300, 900, 1800, 3600, 7200, 14400]
    assert (config.queue.lease_time, config.queue.shutdown_timeout) == (300, 30)
    assert config.log.format == "json"
    assert config.log.level == "info"
    assert config.admin.listen is None
    assert config.source == tmp_path / "relayd.toml"
    capture = config.upstreams["capture"]
    assert capture.name == "capture"
    assert capture.path == tmp_path / "outbox"
    assert capture.throttle_backoff == [60, 300, 900, 3600]
    assert (capture.connect_timeout, capture.timeout) == (30, 60)


FULL = """
[server]
listen = ["127.0.0.1:2525", "[::1]:2525"]
hostname = "relay.example.internal"
max_message_size = "10MiB"
allowed_networks = ["10.0.0.0/8"]
tls_cert = "tls/cert.pem"
tls_key = "/etc/relayd/key.pem"
idle_timeout = "90s"

[queue]
path = "data/queue.db"
max_lifetime = "2d"
retry = ["30s", "2m"]

[upstreams.office]
host = "smtp.example.internal"
security = "tls"
auth = "none"
senders = ["*"]
rate_limits = ["3/minute", "200/hour", "20/10s"]
min_interval = "500ms"
tls_verify = false

[upstreams.office.window]
timezone = "Europe/London"
days = "Mon-Fri"
hours = ["08:00-12:00", "13:00-18:00"]
closed_dates = [2025-12-25, "2025-12-26"]

[log]
transcript_dir = "transcripts"

[admin]
listen = "127.0.0.1:9025"
"""


def test_units_paths_and_windows_are_parsed(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL)

    assert config.server.max_message_size == 10 * 1024 * 1024
    assert config.server.allowed_networks == [ipaddress.ip_network("10.0.0.0/8")]
    assert config.server.tls_cert == tmp_path / "tls" / "cert.pem"
    assert config.server.tls_key == Path("/etc/relayd/key.pem")
    assert config.server.idle_timeout == 90
    assert config.queue.path == tmp_path / "data" / "queue.db"
    assert config.queue.retry == [30, 120]
    office = config.upstreams["office"]
    assert office.port == 465
    assert office.tls_verify is False
    assert office.rate_limits == [Ceiling(3, 60), Ceiling(200, 3600), Ceiling(20, 10)]
    assert office.min_interval == 0.5
    assert office.window is not None
    assert office.window.days == "mon-fri"
    assert office.window.closed_dates == [datetime.date(2025, 12, 25), datetime.date(2025, 12, 26)]
    assert config.log.transcript_dir == tmp_path / "transcripts"


def test_models_built_in_python_take_seconds() -> None:
    upstream = UpstreamConfig(name="x", host="h", auth="none", timeout=12.5)
    assert upstream.timeout == 12.5


def test_python_construction_still_forbids_unknown_keys() -> None:
    with pytest.raises(ValueError, match="retry_unused"):
        UpstreamConfig.model_validate({"name": "x", "host": "h", "auth": "none", "retry_unused": 1})


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert parse_listen("[::1]:25") == ("::1", 25)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("127.0.0.1", "[::1]", "::1:25", "host:70000", "[zz]:25"):
        with pytest.raises(ValueError, match="not a listen address"):
            parse_listen(bad)


def test_default_config_path_prefers_relayd_config() -> None:
    assert default_config_path({"RELAYD_CONFIG": "/srv/r.toml"}) == Path("/srv/r.toml")
    assert default_config_path({}) == Path("/etc/relayd/relayd.toml")
    assert default_config_path({"RELAYD_CONFIG": ""}) == Path("/etc/relayd/relayd.toml")


# -- errors name the key and the line -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [
        ("[server]\nlisen = []\n" + CAPTURE, "server.lisen", 2, "unknown key"),
        ('server.lisen = ["x"]\n' + CAPTURE, "server.lisen", 1, "unknown key"),
        ('[server]\n"lisen" = []\n' + CAPTURE, "server.lisen", 2, "unknown key"),
        (
            "[bounces]\nmailbox = 'b@x.example'\nmaibox = 'c'\n" + CAPTURE,
            "bounces.maibox",
            3,
            "unknown key",
        ),
        (
            CAPTURE + '\n[queue]\npath = "q.db"\nmax_lifetime = "5x"\n',
            "queue.max_lifetime",
            7,
            '"5x" is not a duration (use e.g.',
        ),
        (CAPTURE + "[queue]\nlease_time = 90\n", "queue.lease_time", 5, 'e.g. "90s"'),
        (CAPTURE + '[queue]\nlease_time = "0s"\n', "queue.lease_time", 5, "greater than 0"),
        (
            CAPTURE + "[queue]\nbackend = 'postgres'\n",
            "queue.backend",
            5,
            '"postgres" needs dsn, dsn_file or dsn_env',
        ),
        (
            CAPTURE + "[queue]\nbackend = 'postgres'\ndsn = 'postgresql://u:pw@db/relayd'\n",
            "queue.dsn",
            6,
            "secrets are not allowed inline",
        ),
        (CAPTURE + "[queue]\nretry = []\n", "queue.retry", 5, "at least 1"),
        (
            CAPTURE + '[server]\nmax_message_size = "25 parsecs"\n',
            "server.max_message_size",
            5,
            "not a size",
        ),
        (
            CAPTURE + "[server]\nmax_line_length = 500\n",
            "server.max_line_length",
            5,
            "greater than or equal to 998",
        ),
        (
            CAPTURE + '[server]\nlisten = ["localhost"]\n',
            "server.listen",
            5,
            "not a listen address",
        ),
        (
            CAPTURE + '[server]\nallowed_networks = ["10.0.0.1/8"]\n',
            "server.allowed_networks",
            5,
            "host bits set",
        ),
        (CAPTURE + '[server]\ntls_cert = "c.pem"\n', "server.tls_key", 4, "go together"),
        (CAPTURE + "[server]\nrequire_auth = true\n", "server.require_auth", 5, "[[server.users]]"),
        (CAPTURE + '[log]\nformat = "xml"\n', "log.format", 5, "'json' or 'console'"),
        (CAPTURE + '[admin]\nlisten = "9025"\n', "admin.listen", 5, "not a listen address"),
        (
            CAPTURE + 'rate_limits = [\n  "3/minute",\n  "lots",\n]\n',
            "upstreams.capture.rate_limits",
            4,
            '"lots" is not a rate limit',
        ),
        (
            CAPTURE + 'min_interval = "soon"\n',
            "upstreams.capture.min_interval",
            4,
            "not a duration",
        ),
        (
            CAPTURE + "max_connections = 0\n",
            "upstreams.capture.max_connections",
            4,
            "greater than or equal to 1",
        ),
        (CAPTURE + 'name = "other"\n', "upstreams.capture.name", 4, "unknown key"),
        (CAPTURE + "preset_fields = []\n", "upstreams.capture.preset_fields", 4, "unknown key"),
        (
            CAPTURE + 'senders = ["nobody"]\n',
            "upstreams.capture.senders",
            4,
            "not a sender pattern",
        ),
        (
            '[upstreams.a]\nprovider = "gmial"\n',
            "upstreams.a.provider",
            2,
            "valid: directory, generic",
        ),
        ('[upstreams.a]\nauth = "none"\n', "upstreams.a.host", 1, "has no host"),
        (
            '[upstreams."a b"]\nprovider = "directory"\npath = "x"\n',
            "upstreams.a b.name",
            1,
            "not an upstream name",
        ),
        (
            '[upstreams.cap]\nprovider = "directory"\n',
            "upstreams.cap.path",
            1,
            'needs path = "DIR"',
        ),
        (
            '[upstreams.a]\nhost = "h"\nusername = "u"\nauth = "password"\n',
            "upstreams.a.password_file",
            1,
            "needs password_file or password_env",
        ),
        (
            '[upstreams.a]\nhost = "h"\npassword_env = "P"\n',
            "upstreams.a.username",
            1,
            "needs a username",
        ),
        (
            '[upstreams.a]\nhost = "h"\nusername = "u"\npassword_env = "P"\npassword_file = "f"\n',
            "upstreams.a.password_env",
            4,
            "not both",
        ),
        (
            '[upstreams.a]\nhost = "h"\nsecurity = "none"\nusername = "u"\npassword_env = "P"\n',
            "upstreams.a.security",
            3,
            "would send the credentials unencrypted",
        ),
        (
            CAPTURE + '[upstreams.capture.window]\ntimezone = "Mars/Olympus"\n',
            "upstreams.capture.window.timezone",
            5,
            "not a time zone",
        ),
        (
            CAPTURE + "window = { hours = ['18:00-08:00'] }\n",
            "upstreams.capture.window.hours",
            4,
            "across midnight",
        ),
        (
            CAPTURE + '[upstreams.capture.window]\ndays = "weekdays"\n',
            "upstreams.capture.window.days",
            5,
            "not a list of days",
        ),
        ("[server]\nworkers = 2\n", "upstreams", None, "at least one [upstreams.NAME]"),
        (
            CAPTURE + '[routing]\ndefault = "nope"\n',
            "routing.default",
            5,
            '"nope" is not an upstream (have: capture)',
        ),
        (
            CAPTURE + '[upstreams.other]\nprovider = "directory"\npath = "o"\n',
            "routing.default",
            None,
            "set routing.default",
        ),
    ],
)
def test_error_names_key_and_line(
    tmp_path: Path, text: str, key: str, line: int | None, fragment: str
) -> None:
    error = error_of(tmp_path, text)

    assert error.key == key
    assert error.line == line
    assert fragment in str(error)
    suffix = f" (line {line})" if line is not None else ""
    assert str(error).startswith(f"{key}: ")
    assert str(error).endswith(suffix)


def test_the_message_format_of_the_contract(tmp_path: Path) -> None:
    error = error_of(tmp_path, CAPTURE + "[server]\nlisen = []\n")
    assert str(error) == "server.lisen: unknown key (line 5)"


def test_array_of_tables_entries_are_counted(tmp_path: Path) -> None:
    error = error_of(
        tmp_path,
        """
        [[server.users]]
        name = "a"
        password_hash = "{USER_HASH}"

        [[server.users]]
        name = "b"
        pasword_hash = "h2"
        """.replace("{USER_HASH}", USER_HASH)
        + CAPTURE,
    )
    # The required key's absence points at the entry's header, the misspelling at its line.
    assert str(error) == "server.users[1].password_hash: required key is missing (line 5)"
    assert error.__notes__ == ["server.users[1].pasword_hash: unknown key (line 7)"]


def test_duplicate_user_names(tmp_path: Path) -> None:
    text = f'[[server.users]]\nname = "a"\npassword_hash = "{USER_HASH}"\n' * 2 + CAPTURE
    error = error_of(tmp_path, text)
    assert (error.key, error.line) == ("server.users[1].name", 5)


def test_toml_syntax_error_has_its_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, CAPTURE + '[queue]\nretry = ["1m",\n\nmax = 3\n')
    assert error.line == 7
    assert str(error).startswith("invalid TOML: ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.toml"):
        load(tmp_path / "missing.toml")


def test_first_error_in_file_order_and_the_rest_as_notes(tmp_path: Path) -> None:
    error = error_of(tmp_path, CAPTURE + '[log]\nlevel = "loud"\n[queue]\nlease_time = "x"\n')
    assert error.key == "log.level"
    assert error.__notes__ == [str(error_of(tmp_path, CAPTURE + '[queue]\n\n\nlease_time = "x"\n'))]


def test_allow_plaintext_auth_and_tls_verify_false_are_accepted(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [upstreams.lan]
        host = "10.0.0.5"
        security = "none"
        tls_verify = false
        username = "u"
        password_env = "LAN_PASSWORD"
        allow_plaintext_auth = true
        """,
        LAN_PASSWORD="pw",
    )
    lan = config.upstreams["lan"]
    assert (lan.port, lan.tls_verify, lan.auth) == (25, False, "password")


# -- secrets ------------------------------------------------------------------------------


def credentialed(secret_line: str) -> str:
    return f"""
        [[server.users]]
        name = "billing-app"
        password_hash = "{USER_HASH}"

        [upstreams.mail]
        host = "smtp.example.com"
        username = "relay@example.com"
        {secret_line}
        senders = ["user:billing-app"]
        """


def test_password_file_is_read_stripped_and_masked_everywhere(tmp_path: Path) -> None:
    (tmp_path / "mail.secret").write_text(SECRET + "\n", encoding="utf-8")
    config = load_text(tmp_path, credentialed('password_file = "mail.secret"'))

    upstream = config.upstreams["mail"]
    assert upstream.password is not None
    assert upstream.password.get_secret_value() == SECRET
    rendered = render_effective(config)
    for text in (repr(config), str(config), rendered, repr(upstream), str(config.server.users)):
        assert SECRET not in text
        assert USER_HASH not in text
    secret_path = tmp_path / "mail.secret"
    assert f'password = "********"  # from password_file {secret_path}' in rendered
    assert 'password_hash = "********"' in rendered


def test_password_env_is_read_from_the_environment_given(tmp_path: Path) -> None:
    config = load_text(tmp_path, credentialed('password_env = "MAIL_PW"'), MAIL_PW=SECRET)
    upstream = config.upstreams["mail"]
    assert upstream.password is not None
    assert upstream.password.get_secret_value() == SECRET
    assert "# from password_env MAIL_PW" in render_effective(config)


def test_inline_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    error = error_of(tmp_path, credentialed(f'password = "{SECRET}"'))
    assert (error.key, error.line) == ("upstreams.mail.password", 8)
    assert "use password_file or password_env" in str(error)
    assert SECRET not in str(error)


def test_missing_secret_sources_name_their_key(tmp_path: Path) -> None:
    error = error_of(tmp_path, credentialed('password_file = "nowhere.secret"'))
    assert (error.key, error.line) == ("upstreams.mail.password_file", 8)
    assert "cannot read" in str(error)

    error = error_of(tmp_path, credentialed('password_env = "NOT_SET_ANYWHERE"'))
    assert (error.key, error.line) == ("upstreams.mail.password_env", 8)
    assert "NOT_SET_ANYWHERE is not set" in str(error)

    (tmp_path / "empty.secret").write_text("\n", encoding="utf-8")
    error = error_of(tmp_path, credentialed('password_file = "empty.secret"'))
    assert "empty" in str(error)


def test_a_misspelt_secret_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    error = error_of(tmp_path, credentialed(f'passwd = "{SECRET}"'))
    assert str(error) == "upstreams.mail.passwd: unknown key (line 8)"
    assert SECRET not in str(error.__cause__)


def test_validation_errors_never_carry_secret_values(tmp_path: Path) -> None:
    text = credentialed('password_env = "MAIL_PW"') + '\n[log]\nlevel = "loud"\n'
    error = error_of(tmp_path, text.replace('["user:billing-app"]', '["bad pattern"]'))
    chain = [str(error), *getattr(error, "__notes__", []), str(error.__cause__)]
    assert all(SECRET not in text for text in chain)


# -- presets ------------------------------------------------------------------------------


def test_preset_fills_what_the_user_left_unset_and_remembers_it(
    tmp_path: Path, gmail: Preset
) -> None:
    config = load_text(
        tmp_path,
        """
        [upstreams.practice]
        provider = "gmail"
        username = "practice@gmail.com"
        password_env = "PRACTICE_PW"
        """,
        PRACTICE_PW=SECRET,
    )
    practice = config.upstreams["practice"]
    assert (practice.host, practice.port, practice.security) == ("smtp.gmail.com", 587, "starttls")
    assert practice.auth == "password"
    assert practice.rate_limits == [Ceiling(20, 60), Ceiling(2000, 86400)]
    assert practice.preset_fields == {"host", "port", "security", "auth", "rate_limits"}
    rendered = render_effective(config)
    assert 'host = "smtp.gmail.com"  # from preset gmail' in rendered
    assert 'rate_limits = ["20/minute", "2000/day"]  # from preset gmail' in rendered
    assert "preset_fields" not in rendered


def test_user_values_beat_the_preset(tmp_path: Path, gmail: Preset) -> None:
    config = load_text(
        tmp_path,
        """
        [upstreams.practice]
        provider = "gmail"
        security = "tls"
        auth = "none"
        rate_limits = []
        """,
    )
    practice = config.upstreams["practice"]
    assert (practice.security, practice.port, practice.auth) == ("tls", 465, "none")
    assert practice.rate_limits == []
    assert practice.preset_fields == {"host"}


def test_directory_preset(tmp_path: Path) -> None:
    capture = load_text(tmp_path, CAPTURE).upstreams["capture"]
    assert (capture.auth, capture.security, capture.port) == ("none", None, None)
    assert capture.preset_fields == {"auth"}


# -- routing (the lookup itself: test_routing.py) -----------------------------------------

ROUTES = f"""
[[server.users]]
name = "billing-app"
password_hash = "{USER_HASH}"

[upstreams.by_user]
provider = "directory"
path = "u"
senders = ["user:billing-app"]

[upstreams.by_address]
provider = "directory"
path = "a"
senders = ["Alerts@Practice.example"]

[upstreams.by_domain]
provider = "directory"
path = "d"
senders = ["*@practice.example"]

[upstreams.catch_all]
provider = "directory"
path = "c"
senders = ["*"]
"""


def test_the_same_pattern_on_two_upstreams_is_ambiguous(tmp_path: Path) -> None:
    text = ROUTES.replace('senders = ["*"]', 'senders = ["*@PRACTICE.example"]')
    error = error_of(tmp_path, text)
    assert error.key == "upstreams.catch_all.senders"
    assert error.line == 23
    assert "upstreams.by_domain and upstreams.catch_all" in str(error)


def test_user_pattern_must_name_a_user(tmp_path: Path) -> None:
    error = error_of(tmp_path, ROUTES.replace("user:billing-app", "user:payroll"))
    assert (error.key, error.line) == ("upstreams.by_user.senders", 8)
    assert '"user:payroll" names no [[server.users]] entry' in str(error)


# -- rendering and the shipped files ------------------------------------------------------


def test_rendered_config_is_toml_that_loads_back_the_same(tmp_path: Path) -> None:
    config = load(EXAMPLE)
    rendered = render_effective(config)
    assert tomllib.loads(rendered)["queue"]["max_lifetime"] == "5d"
    assert 'max_message_size = "25MB"' in rendered

    again = load(write(tmp_path, rendered))
    assert again.model_copy(update={"source": None}) == config.model_copy(update={"source": None})


def test_render_round_trips_tables_arrays_of_tables_windows_and_dates(tmp_path: Path) -> None:
    text = FULL + f'\n[[server.users]]\nname = "app"\npassword_hash = "{USER_HASH}"\n'
    config = load_text(tmp_path, text)
    rendered = render_effective(config)
    assert tomllib.loads(rendered)["server"]["users"][0]["password_hash"] == "********"
    assert "closed_dates = [2025-12-25, 2025-12-26]" in rendered
    assert 'max_message_size = "10MiB"' in rendered

    again = load(write(tmp_path / "again", rendered.replace('"********"', f'"{USER_HASH}"')))
    assert again.model_copy(update={"source": None}) == config.model_copy(update={"source": None})


def test_example_file_loads() -> None:
    config = load(EXAMPLE, environ={})
    assert list(config.upstreams) == ["smarthost"]
    assert "password = " not in EXAMPLE.read_text(encoding="utf-8")  # secrets never inline


# -- the example file documents every key the models accept --------------------------------
#
# The keys come from the pydantic models (Config and every model below it: config/model.py,
# config/account.py, config/reports.py ...), so a new field fails the test until the example
# shows it or it is listed below with a reason. A key counts as documented when a line of its
# table in the example, commented out or not, starts with `key =`; a table when its header
# (`[table]`, `# [table]`, `# [[table]]`) is there. Every [upstreams.NAME] is `upstreams.<name>`.

# Keys the example deliberately leaves out, and why.
UNDOCUMENTED = {
    "source": "the loader records the file's own path; a file may not set it",
    "upstreams.<name>.name": "the table's name ([upstreams.NAME]), filled by the loader",
    "upstreams.<name>.preset_fields": "internal: which values the provider preset filled",
    "upstreams.<name>.password": "read from password_file / password_env; inline is refused",
    "bounces.imap.password": "read from password_file / password_env; inline is refused",
    "admin.token": "read from token_file; inline is refused",
}

# PENDING_DOCS: keys config/relayd.example.toml should document and does not yet. Each entry
# makes the test pass without the documentation; add the key's line to the example, then
# delete the entry (test_pending_docs_are_still_pending says when). Keep this set empty.
PENDING_DOCS: set[str] = set()

_HEADER = re.compile(r"^#?\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
_KEY_LINE = re.compile(r"^#?\s*([A-Za-z0-9_]+)\s*=")


def _submodel(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field's values are tables of, and the path part a dict key adds."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        found = [_submodel(arg) for arg in typing.get_args(annotation)]
        return next((f for f in found if f is not None), None)
    if origin is dict:
        inner = _submodel(typing.get_args(annotation)[1])
        return None if inner is None else (inner[0], ".<name>")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    return None


def model_keys(model: type[BaseModel], prefix: str = "") -> tuple[set[str], set[str]]:
    """(tables, keys) a file may write under `model`, as dotted paths (aliases: `from`)."""
    tables: set[str] = set()
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        sub = _submodel(field.annotation)
        if sub is None:
            keys.add(path)
            continue
        table = path + sub[1]
        tables.add(table)
        inner_tables, inner_keys = model_keys(sub[0], table + ".")
        tables |= inner_tables
        keys |= inner_keys
    return tables, keys


def documented(text: str) -> tuple[set[str], set[str]]:
    """(tables, keys) the example shows, commented out or not."""
    tables: set[str] = set()
    keys: set[str] = set()
    table: str | None = None  # the header comment above the first table documents no key
    for line in text.splitlines():
        if header := _HEADER.match(line):
            parts = header.group(1).split(".")
            if parts[0] == "upstreams" and len(parts) > 1:
                parts[1] = "<name>"
            table = ".".join(parts)
            tables.add(table)
        elif table is not None and (key := _KEY_LINE.match(line)):
            keys.add(f"{table}.{key.group(1)}")
    return tables, keys


def test_the_keys_are_derived_from_every_model() -> None:
    tables, keys = model_keys(Config)
    assert tables == {
        "server",
        "server.users",
        "queue",
        "upstreams.<name>",
        "upstreams.<name>.window",
        "routing",
        "log",
        "admin",
        "bounces",
        "bounces.imap",
        "notifications",
    }
    for key in (
        "server.users.password_hash",  # an array of tables
        "upstreams.<name>.window.closed_dates",  # below a table of tables
        "upstreams.<name>.client_id",  # config/upstream.py (OAuth2 keys)
        "bounces.from",  # the alias, not the field name from_
        "bounces.imap.move_to",  # config_reports
        "notifications.via",
    ):
        assert key in keys
    assert "bounces.from_" not in keys


def test_example_file_documents_every_table_and_key() -> None:
    tables, keys = model_keys(Config)
    shown_tables, shown_keys = documented(EXAMPLE.read_text(encoding="utf-8"))

    assert tables - shown_tables == set(), "tables missing from the example"
    missing = keys - shown_keys - set(UNDOCUMENTED) - PENDING_DOCS
    assert missing == set(), "keys missing from config/relayd.example.toml (document them)"


def test_example_file_documents_no_key_the_models_refuse() -> None:
    tables, keys = model_keys(Config)
    shown_tables, shown_keys = documented(EXAMPLE.read_text(encoding="utf-8"))
    assert shown_tables - tables == set()
    assert shown_keys - keys == set()


def test_the_exceptions_are_real_keys_and_still_needed() -> None:
    _, keys = model_keys(Config)
    _, shown_keys = documented(EXAMPLE.read_text(encoding="utf-8"))
    assert set(UNDOCUMENTED) - keys == set(), "UNDOCUMENTED names a key no model has"
    assert PENDING_DOCS - keys == set(), "PENDING_DOCS names a key no model has"
    assert set(UNDOCUMENTED) & shown_keys == set()


def test_pending_docs_are_still_pending() -> None:
    _, shown_keys = documented(EXAMPLE.read_text(encoding="utf-8"))
    done = PENDING_DOCS & shown_keys
    assert done == set(), "documented now: remove these from PENDING_DOCS"


def test_the_example_reader_sees_commented_tables_and_keys() -> None:
    text = textwrap.dedent(
        """        # key = value before any table documents nothing
        [server]
        listen = ["127.0.0.1:2525"]   # note: hostname = "x" in a comment is not a key line
        # [[server.users]]
        # name = "app"
        [upstreams.smarthost.window]
        # days = "mon-fri"
        """
    )
    assert documented(text) == (
        {"server", "server.users", "upstreams.<name>.window"},
        {"server.listen", "server.users.name", "upstreams.<name>.window.days"},
    )


def test_dev_file_captures_to_the_repository_var_directory() -> None:
    config = load(REPO / "config" / "relayd.dev.toml", environ={})
    assert config.server.listen == ["127.0.0.1:2525"]
    assert config.queue.path == REPO / "var" / "queue.db"
    assert config.upstreams["capture"].provider == "directory"
    assert config.upstreams["capture"].path == REPO / "var" / "outbox"
    assert config.log.format == "console"


# -- the locator on its own ---------------------------------------------------------------


def test_locator_handles_quoting_multiline_strings_and_nesting() -> None:
    locator = KeyLocator(
        textwrap.dedent(
            """\
            top = 1
            [a . "b.c"]
            'lit key' = 2
            text = \"\"\"
            fake = 3
            \"\"\"
            real = 4
            [[arr]]
            x = 1
            [[arr]]
            x = 2
            [arr.sub]
            y = { z = 1 }
            """
        )
    )
    assert locator.line_of(("top",)) == 1
    assert locator.line_of(("a", "b.c")) == 2
    assert locator.line_of(("a", "b.c", "lit key")) == 3
    assert locator.line_of(("a", "b.c", "fake")) == 2  # inside a string: falls back to the table
    assert locator.line_of(("a", "b.c", "real")) == 7
    assert locator.line_of(("arr", 0, "x")) == 9
    assert locator.line_of(("arr", 1, "x")) == 11
    assert locator.line_of(("arr", 1, "sub", "y", "z")) == 13
    assert locator.line_of(("nowhere",)) is None


def test_hours_accept_h_mm_as_people_write_it(tmp_path: Path) -> None:
    """ "8:00-18:00" means 08:00-18:00 (issue 15): stored in the two-digit form."""
    config = load_text(tmp_path, CAPTURE + 'window = { hours = ["8:00-18:00", "19:30 - 21:45"] }\n')
    window = config.upstreams["capture"].window
    assert window is not None
    assert window.hours == ["08:00-18:00", "19:30-21:45"]


def test_a_generic_upstream_without_credentials_logs_in_to_nothing(tmp_path: Path) -> None:
    """An open LAN smarthost (issue 15): no username, no password, so no AUTH; with a
    username the default is a password login, as before."""
    lan = '[upstreams.lan]\nhost = "smarthost.lan"\nsecurity = "none"\n'
    config = load_text(tmp_path, lan)
    assert config.upstreams["lan"].auth == "none"
    assert "auth" in config.upstreams["lan"].preset_fields  # check-config marks it a default
    office = '[upstreams.o]\nhost = "h"\nusername = "u"\npassword_env = "P"\n'
    assert load_text(tmp_path, office, P="x").upstreams["o"].auth == "password"


def test_an_error_about_a_default_auth_says_it_is_one_and_how_to_change_it(
    tmp_path: Path,
) -> None:
    error = str(error_of(tmp_path, '[upstreams.g]\nprovider = "gmail"\n'))
    assert 'auth = "password" (the default for provider "gmail"; set auth = "none"' in error
    assert "needs a username" in error
