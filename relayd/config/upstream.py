"""An [upstreams.NAME] table: the provider account mail is delivered through, its preset
filled in, its credentials and sending hours checked at load.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from relayd.config.account import check_account, fill_oauth_preset
from relayd.config.text import KeyedValueError
from relayd.config.values import (
    ConfPath,
    Days,
    Duration,
    Hours,
    Rate,
    SenderPattern,
    Timeout,
    TimeZone,
    UpstreamName,
    durations,
)
from relayd.policy.providers import DEFAULT_PORTS, PRESETS, default_port


class _Model(BaseModel):
    # hide_input_in_errors: a chained ValidationError must not print what was in the file.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class WindowConfig(_Model):
    """Sending hours of one upstream; outside them mail waits, queued."""

    timezone: TimeZone = "UTC"
    days: Days = "mon-sun"
    hours: list[Hours] = Field(default_factory=lambda: ["00:00-24:00"], min_length=1)
    closed_dates: list[datetime.date] = Field(default_factory=list)


class UpstreamConfig(_Model):
    """One provider account mail is delivered through ([upstreams.NAME]); the rules for the
    account keys (OAuth2, the rewrite address) are in config/account.py."""

    name: UpstreamName
    provider: str = "generic"
    host: str | None = None
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] | None = None
    tls_verify: StrictBool = True
    tls_ca_file: ConfPath | None = None
    username: str | None = None
    auth: Literal["password", "xoauth2", "none"] | None = None
    password_file: ConfPath | None = None
    password_env: str | None = None
    password: SecretStr | None = None
    allow_plaintext_auth: StrictBool = False
    senders: list[SenderPattern] = Field(default_factory=list)
    from_policy: Literal["keep", "bare", "rewrite"] = "keep"
    rate_limits: list[Rate] = Field(default_factory=list)
    min_interval: Duration = 0.0
    max_connections: StrictInt = Field(default=1, ge=1)
    count: Literal["messages", "recipients"] = "messages"
    throttle_backoff: list[Duration] = durations("1m", "5m", "15m", "1h")
    connect_timeout: Timeout = 30.0
    timeout: Timeout = 60.0
    path: ConfPath | None = None
    window: WindowConfig | None = None
    # OAuth2 (auth = "xoauth2"): config/account.py
    client_id: str | None = None
    client_secret_file: ConfPath | None = None
    refresh_token_file: ConfPath | None = None
    tenant_id: str | None = None
    token_url: str | None = None
    oauth_scope: str | None = None
    preset_fields: frozenset[str] = frozenset()

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f'unknown provider "{value}" (valid: {", ".join(sorted(PRESETS))})')
        return value

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        provider = data.get("provider", "generic") if isinstance(data, dict) else None
        preset = PRESETS.get(provider) if isinstance(provider, str) else None
        if preset is None:
            return data  # not a table, or an unknown provider that _known_provider reports
        filled = {key: value for key, value in preset.defaults().items() if data.get(key) is None}
        if preset.name == "generic" and data.get("auth") is None:
            # Any SMTP server: a login only when the table gives credentials (an open LAN
            # smarthost on port 25 has none).
            credentials = ("username", "password_file", "password_env")
            filled["auth"] = "password" if any(data.get(k) for k in credentials) else "none"
        marked = set(filled)
        security = data.get("security") or filled.get("security")
        if data.get("port") is None and security in DEFAULT_PORTS:
            filled["port"] = default_port(security)
            if "security" in marked:
                marked.add("port")
        marked |= frozenset(data.get("preset_fields", ()))
        return fill_oauth_preset({**data, **filled, "preset_fields": frozenset(marked)})

    @model_validator(mode="after")
    def _check(self) -> UpstreamConfig:
        check_account(self)
        if PRESETS[self.provider].delivers_to_directory:
            if self.path is None:
                raise KeyedValueError(("path",), f'provider "{self.provider}" needs path = "DIR"')
            return self
        if self.host is None:
            raise KeyedValueError(("host",), f'provider "{self.provider}" has no host; set host')
        if self.port is None:
            raise KeyedValueError(("port",), 'no port; set port or security ("starttls", "tls")')
        if self.tls_ca_file is not None and not self.tls_ca_file.is_file():
            raise KeyedValueError(("tls_ca_file",), f"{self.tls_ca_file} is not a file")
        self._check_credentials()
        return self

    def _check_credentials(self) -> None:
        if self.password_file is not None and self.password_env is not None:
            raise KeyedValueError(("password_env",), "set password_file or password_env, not both")
        if self.auth in ("password", "xoauth2") and self.username is None:
            raise KeyedValueError(("username",), f"{self._auth_said()} needs a username")
        no_secret = self.password is None and self.password_file is None and not self.password_env
        if self.auth == "password" and no_secret:
            raise KeyedValueError(
                ("password_file",), f"{self._auth_said()} needs password_file or password_env"
            )
        if (
            self.auth not in (None, "none")
            and self.security == "none"
            and not self.allow_plaintext_auth
        ):
            raise KeyedValueError(
                ("security",),
                f'{self._auth_said()} with security = "none" would send the credentials '
                'unencrypted; use "starttls" or "tls", or set allow_plaintext_auth = true',
            )

    def _auth_said(self) -> str:
        """`auth = "..."` as an error names it: a default the file never wrote says so, and
        how to change it."""
        if "auth" not in self.preset_fields:
            return f'auth = "{self.auth}"'
        return (
            f'auth = "{self.auth}" (the default for provider "{self.provider}"; set auth = '
            '"none" for a server without login)'
        )
