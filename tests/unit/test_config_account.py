"""The account keys of an upstream: OAuth2 settings from presets and their checks, and
from_policy = "rewrite" needing an account address."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from relayd.config.model import Config, load, render_effective
from relayd.errors import ConfigError
from relayd.policy.providers import token_url_for


def load_upstream(tmp_path: Path, body: str) -> Config:
    (tmp_path / "refresh").write_text("1//refresh\n")
    (tmp_path / "secret").write_text("client-secret\n")
    path = tmp_path / "relayd.toml"
    path.write_text("[upstreams.u]\n" + textwrap.dedent(body).strip() + "\n")
    return load(path, environ={})


def error_of(tmp_path: Path, body: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_upstream(tmp_path, body)
    return caught.value


MS = 'provider = "microsoft365"\nusername = "desk@practice.example"\nclient_id = "app"\n'


def test_microsoft365_refresh_flow_gets_endpoint_and_scope_from_the_preset(tmp_path: Path) -> None:
    config = load_upstream(tmp_path, MS + 'refresh_token_file = "refresh"')
    up = config.upstreams["u"]
    assert up.auth == "xoauth2"
    assert up.token_url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    assert up.oauth_scope == "https://outlook.office.com/SMTP.Send offline_access"
    assert up.refresh_token_file == tmp_path / "refresh"
    assert {"auth", "token_url", "oauth_scope"} <= up.preset_fields
    rendered = render_effective(config)
    assert "token_url = " in rendered and "# from preset microsoft365" in rendered


def test_microsoft365_client_credentials_flow_uses_the_tenant(tmp_path: Path) -> None:
    body = MS + 'tenant_id = "contoso.example"\nclient_secret_file = "secret"'
    up = load_upstream(tmp_path, body).upstreams["u"]
    assert up.token_url == "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
    assert up.oauth_scope == "https://outlook.office365.com/.default"
    assert up.refresh_token_file is None


def test_gmail_xoauth2(tmp_path: Path) -> None:
    body = (
        'provider = "gmail"\nauth = "xoauth2"\nusername = "p@gmail.com"\nclient_id = "id"\n'
        'client_secret_file = "secret"\nrefresh_token_file = "refresh"'
    )
    up = load_upstream(tmp_path, body).upstreams["u"]
    assert up.token_url == "https://oauth2.googleapis.com/token"
    assert up.oauth_scope is None  # the refresh token carries the scope it was granted


def test_password_upstreams_get_no_oauth_values(tmp_path: Path) -> None:
    body = 'provider = "gmail"\nusername = "p@gmail.com"\npassword_file = "secret"'
    up = load_upstream(tmp_path, body).upstreams["u"]
    assert (up.token_url, up.oauth_scope) == (None, None)


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        (MS, "client_id", None),
        ('provider = "microsoft365"\nusername = "d@p.example"', "client_id", "needs client_id"),
        (MS + 'tenant_id = "t"', "refresh_token_file", "client-credentials flow"),
        (MS + 'refresh_token_file = "missing"', "refresh_token_file", "is not a file"),
        (
            'host = "h"\nauth = "xoauth2"\nusername = "u@x.example"\nclient_id = "c"\n'
            'refresh_token_file = "refresh"',
            "token_url",
            "no OAuth2 preset",
        ),
        (
            MS + 'refresh_token_file = "refresh"\ntoken_url = "http://login.example/token"',
            "token_url",
            "not an https:// URL",
        ),
        (
            'host = "h"\nauth = "password"\nusername = "u"\npassword_file = "secret"\n'
            'client_id = "c"',
            "client_id",
            'only used with auth = "xoauth2"',
        ),
        (
            'host = "h"\nauth = "password"\nusername = "relay"\npassword_file = "secret"\n'
            'from_policy = "rewrite"',
            "from_policy",
            "needs username",
        ),
    ],
)
def test_bad_account_settings_name_their_key(
    tmp_path: Path, body: str, key: str, fragment: str | None
) -> None:
    error = error_of(tmp_path, body)
    if fragment is None:  # MS alone: client_id is there, the grant is missing
        assert error.key == "upstreams.u.refresh_token_file"
        return
    assert error.key == f"upstreams.u.{key}"
    assert fragment in str(error)


def test_http_token_url_is_allowed_to_loopback(tmp_path: Path) -> None:
    body = MS + 'refresh_token_file = "refresh"\ntoken_url = "http://127.0.0.1:8080/token"'
    assert load_upstream(tmp_path, body).upstreams["u"].token_url == "http://127.0.0.1:8080/token"


def test_token_url_for() -> None:
    template = "https://login.example/{tenant:common}/token"
    assert token_url_for(template, None) == "https://login.example/common/token"
    assert token_url_for(template, "contoso") == "https://login.example/contoso/token"
    assert token_url_for("https://t.example/token", "x") == "https://t.example/token"
