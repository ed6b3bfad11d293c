"""Provider presets resolve through config.load, and the hint table says the right thing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from relayd.config.model import Config, load, render_effective
from relayd.errors import ConfigError
from relayd.policy.hints import GOOGLE, MICROSOFT, PROBLEM_HINTS, REPLY_HINTS, Problem
from relayd.policy.providers import PRESETS, Preset, hint_for
from relayd.types import Ceiling, SmtpReply
from relayd.units import parse_rate


def load_upstream(tmp_path: Path, body: str) -> Config:
    (tmp_path / "secret").write_text("app-password\n", encoding="utf-8")
    path = tmp_path / "relayd.toml"
    text = "[upstreams.u]\n" + textwrap.dedent(body).strip() + "\n"
    path.write_text(text, encoding="utf-8")
    return load(path, environ={})


ACCOUNT = 'username = "someone@example.com"\npassword_file = "secret"\n'


@pytest.mark.parametrize(
    ("provider", "host", "port", "security"),
    [
        ("gmail", "smtp.gmail.com", 587, "starttls"),
        ("google-workspace", "smtp.gmail.com", 587, "starttls"),
        ("outlook", "smtp-mail.outlook.com", 587, "starttls"),
        ("yahoo", "smtp.mail.yahoo.com", 465, "tls"),
        ("ionos", "smtp.ionos.com", 587, "starttls"),
        ("godaddy", "smtpout.secureserver.net", 465, "tls"),
        ("nhsmail", "send.nhs.net", 587, "starttls"),
    ],
)
def test_each_preset_resolves_to_its_server(
    tmp_path: Path, provider: str, host: str, port: int, security: str
) -> None:
    upstream = load_upstream(tmp_path, f'provider = "{provider}"\n{ACCOUNT}').upstreams["u"]
    assert (upstream.host, upstream.port, upstream.security) == (host, port, security)
    assert upstream.auth == "password"
    assert upstream.rate_limits == [parse_rate(rate) for rate in PRESETS[provider].rate_limits]
    assert {"host", "port", "security", "auth", "rate_limits", "count"} <= upstream.preset_fields


def test_microsoft365_resolves_once_auth_password_is_explicit(tmp_path: Path) -> None:
    config = load_upstream(tmp_path, f'provider = "microsoft365"\nauth = "password"\n{ACCOUNT}')
    upstream = config.upstreams["u"]
    assert (upstream.host, upstream.port, upstream.security) == (
        "smtp.office365.com",
        587,
        "starttls",
    )
    assert upstream.rate_limits == [Ceiling(30, 60), Ceiling(10000, 86400)]
    assert upstream.count == "recipients"
    assert "auth" not in upstream.preset_fields


def test_microsoft365_defaults_to_oauth2_and_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_upstream(tmp_path, 'provider = "microsoft365"\nusername = "someone@example.com"')
    error = caught.value
    assert error.key == "upstreams.u.client_id"
    assert 'auth = "xoauth2" needs client_id' in str(error)


def test_generic_and_directory_bring_no_server_or_limits() -> None:
    assert PRESETS["generic"].defaults() == {"security": "starttls", "auth": "password"}
    assert PRESETS["directory"].defaults() == {"auth": "none"}


def test_every_named_preset_has_a_host_and_published_limits_that_parse() -> None:
    for name, preset in PRESETS.items():
        assert preset.name == name
        if name in ("generic", "directory"):
            continue
        assert preset.host
        assert preset.rate_limits, name
        assert preset.count in ("messages", "recipients")
        for rate in preset.rate_limits:
            parse_rate(rate)


def test_hint_families_name_presets_that_exist() -> None:
    assert (GOOGLE | MICROSOFT).issubset(PRESETS)
    for row in REPLY_HINTS:
        assert row.providers.issubset(PRESETS)


def test_check_config_marks_the_values_that_came_from_the_preset(tmp_path: Path) -> None:
    rendered = render_effective(load_upstream(tmp_path, f'provider = "yahoo"\n{ACCOUNT}'))
    assert 'host = "smtp.mail.yahoo.com"  # from preset yahoo' in rendered
    assert "port = 465  # from preset yahoo" in rendered
    assert 'security = "tls"  # from preset yahoo' in rendered
    assert 'rate_limits = ["3/minute", "500/day"]  # from preset yahoo' in rendered
    assert 'count = "recipients"  # from preset yahoo' in rendered
    assert 'username = "someone@example.com"\n' in rendered  # the user's own: unmarked


def test_user_values_beat_the_preset_and_security_picks_the_port(tmp_path: Path) -> None:
    body = f"""
        provider = "ionos"
        host = "smtp.ionos.co.uk"
        security = "tls"
        rate_limits = ["50/hour"]
        count = "messages"
        {ACCOUNT}
    """
    upstream = load_upstream(tmp_path, body).upstreams["u"]
    assert (upstream.host, upstream.port, upstream.security) == ("smtp.ionos.co.uk", 465, "tls")
    assert (upstream.rate_limits, upstream.count) == ([Ceiling(50, 3600)], "messages")
    assert upstream.preset_fields == {"auth"}


def test_tls_ca_file_is_relative_to_the_config_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    body = f'provider = "gmail"\ntls_ca_file = "ca.pem"\n{ACCOUNT}'
    assert load_upstream(tmp_path, body).upstreams["u"].tls_ca_file == tmp_path / "ca.pem"

    with pytest.raises(ConfigError) as caught:
        load_upstream(tmp_path, body.replace("ca.pem", "missing.pem"))
    assert (caught.value.key, caught.value.line) == ("upstreams.u.tls_ca_file", 3)
    assert "is not a file" in str(caught.value)


# -- hints ----------------------------------------------------------------------------------

APP_PASSWORD = "https://myaccount.google.com/apppasswords"
SMTP_AUTH_OFF = "SMTP AUTH is disabled for the tenant or the mailbox"


@pytest.mark.parametrize(
    ("provider", "code", "message", "expected"),
    [
        ("gmail", 535, "5.7.8 Username and Password not accepted.", APP_PASSWORD),
        ("google-workspace", 535, "5.7.8 Username and Password not accepted.", APP_PASSWORD),
        ("gmail", 534, "5.7.9 Application-specific password required.", APP_PASSWORD),
        ("generic", 534, "5.7.9 Application-specific password required.", APP_PASSWORD),
        ("gmail", 534, "5.7.14 Please log in via your web browser", "in a web browser"),
        ("generic", 534, "5.7.14 Please log in via your web browser", "in a web browser"),
        ("gmail", 454, "4.7.0 Too many login attempts, please try again later.", "wait about"),
        ("gmail", 550, "5.4.5 Daily user sending limit exceeded.", "daily sending limit"),
        (
            "microsoft365",
            535,
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
            "Tenant.",
            SMTP_AUTH_OFF,
        ),
        (
            "generic",
            535,
            "5.7.139 Authentication unsuccessful, the request did not meet",
            SMTP_AUTH_OFF,
        ),
        (
            "microsoft365",
            535,
            "5.7.139 Authentication unsuccessful, user is locked by your organization's security "
            "defaults policy.",
            "security defaults",
        ),
        ("microsoft365", 535, "5.7.3 Authentication unsuccessful", "(its UPN)"),
        ("outlook", 535, "5.7.3 Authentication unsuccessful", "Outlook.com refused"),
        ("nhsmail", 535, "5.7.3 Authentication unsuccessful", "@nhs.net"),
        ("microsoft365", 550, "5.7.30 Basic authentication is not supported", "OAuth2"),
        (
            "microsoft365",
            550,
            "5.7.708 Access denied, traffic not accepted from this IP",
            "support",
        ),
        (
            "microsoft365",
            554,
            "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
            "'Send As'",
        ),
        ("microsoft365", 550, "5.1.8 Access denied, bad outbound sender", "Defender"),
        ("yahoo", 535, "5.7.0 (#AUTH005) Too many bad auth attempts.", "too many failures"),
        ("yahoo", 535, "5.7.0 (#MBR1212) Incorrect username or password.", "Generate app password"),
        ("ionos", 535, "Authentication credentials invalid", "smtp.ionos.co.uk"),
        ("godaddy", 535, "Authentication Failed", "SMTP relays (250)"),
        ("generic", 535, "5.7.8 Authentication credentials invalid", "app password"),
        ("generic", 530, "5.7.57 Client not authenticated to send mail.", 'auth = "password"'),
        ("generic", 530, "5.7.0 Must issue a STARTTLS command first.", 'security = "starttls"'),
        ("generic", 538, "5.7.11 Encryption required", 'security = "starttls" or "tls"'),
        ("gmail", 421, "4.7.0 Try again later, closing connection.", "throttling"),
    ],
)
def test_reply_hints(provider: str, code: int, message: str, expected: str) -> None:
    hint = hint_for(provider, SmtpReply(code, message), None)
    assert hint is not None
    assert expected in hint


def test_provider_specific_rows_stay_with_their_provider() -> None:
    gmail_5_7_8 = SmtpReply(535, "5.7.8 Username and Password not accepted.")
    assert APP_PASSWORD not in (hint_for("microsoft365", gmail_5_7_8, None) or "")
    microsoft_5_7_3 = SmtpReply(535, "5.7.3 Authentication unsuccessful")
    assert "(its UPN)" not in (hint_for("generic", microsoft_5_7_3, None) or "")
    quota = SmtpReply(550, "5.4.5 Daily user sending limit exceeded.")
    assert hint_for("generic", quota, None) is None


@pytest.mark.parametrize(
    "reply",
    [
        SmtpReply(235, "2.7.0 Accepted"),
        SmtpReply(250, "2.0.0 OK"),
        SmtpReply(550, "5.1.1 The email account that you tried to reach does not exist."),
        SmtpReply(451, "4.3.0 Temporary failure"),
        SmtpReply(421, "4.3.2 Service shutting down"),
    ],
)
def test_no_hint_where_relayd_has_nothing_useful_to_say(reply: SmtpReply) -> None:
    assert hint_for("gmail", reply, None) is None


def test_every_problem_has_a_hint_and_a_problem_beats_the_reply() -> None:
    assert {row.problem for row in PROBLEM_HINTS} == set(Problem)
    for problem in Problem:
        assert hint_for("generic", None, problem)
    reply = SmtpReply(535, "5.7.8 Username and Password not accepted.")
    hint = hint_for("gmail", reply, Problem.CERTIFICATE)
    assert hint is not None
    assert "tls_ca_file" in hint


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (Problem.REFUSED, "firewall"),
        (Problem.TIMEOUT, "blocked by a firewall"),
        (Problem.TIMEOUT, "wrong port for this encryption"),
        (Problem.CERTIFICATE, "certificate could not be verified"),
        (Problem.STARTTLS_NOT_OFFERED, "did not offer STARTTLS"),
        (Problem.NO_GREETING, 'set security = "tls"'),
        (Problem.PLAINTEXT_PORT, 'expect security = "starttls"'),
        (Problem.RESOLVE, "does not resolve"),
    ],
)
def test_problem_hints(problem: Problem, expected: str) -> None:
    hint = hint_for("gmail", None, problem)
    assert hint is not None
    assert expected in hint


def test_preset_defaults_leave_out_what_the_preset_does_not_set() -> None:
    preset = Preset(name="x", host="h.example", rate_limits=("1/minute",), count="messages")
    assert preset.defaults() == {
        "host": "h.example",
        "security": "starttls",
        "auth": "password",
        "rate_limits": ["1/minute"],
        "count": "messages",
    }
