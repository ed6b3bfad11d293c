"""The [bounces], [bounces.imap] and [notifications] tables: where delivery reports and
operator notices go, and the provider inbox the late-bounce poller reads.

config.Config holds them (optional: without [bounces] relayd makes no DSNs, without
[notifications] notices are only logged). The IMAP password is a secret like an upstream's:
password_file or password_env, read at load by `with_secrets`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from relayd.config_gates import read_secret
from relayd.config_text import SIZE, KeyedValueError, KeyLocator
from relayd.config_types import ConfPath, Duration, Hostname, Size, Timeout, UpstreamName
from relayd.providers import IMAP_HOSTS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class BouncesImapConfig(_Model):
    """[bounces.imap]: the upstream account's inbox, read over TLS for late bounces."""

    provider: str | None = None  # fills host from providers.IMAP_HOSTS
    host: Hostname | None = None
    port: int = Field(default=993, ge=1, le=65535)
    username: str
    password_file: ConfPath | None = None
    password_env: str | None = None
    password: SecretStr | None = None  # filled from password_file / password_env at load
    folder: str = "INBOX"
    move_to: str = "relayd/bounces"
    poll_interval: Timeout = 300.0
    lookback: Duration = 14 * 86400.0
    idle: bool = True
    tls: bool = True
    tls_ca_file: ConfPath | None = None
    timeout: Timeout = 30.0

    @model_validator(mode="before")
    @classmethod
    def _preset_host(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("host") is not None:
            return data
        provider = data.get("provider")
        if provider is None:
            raise KeyedValueError(("host",), 'set host (or provider = "gmail", ...)')
        if provider not in IMAP_HOSTS:
            known = ", ".join(sorted(IMAP_HOSTS))
            raise KeyedValueError(
                ("provider",), f'"{provider}" has no IMAP preset (have: {known}); set host'
            )
        return {**data, "host": IMAP_HOSTS[provider]}

    @model_validator(mode="after")
    def _check(self) -> BouncesImapConfig:
        if (self.password_file is None) == (self.password_env is None):
            raise KeyedValueError(("password_file",), "set one of password_file, password_env")
        if self.folder == self.move_to:
            raise KeyedValueError(("move_to",), "must differ from folder")
        return self


class BouncesConfig(_Model):
    """[bounces]: where DSNs go; relayd's own reports come from `from`, sent as <>."""

    mailbox: str
    notify_sender: bool = False
    delay_warning: Duration | None = None
    from_: str | None = Field(default=None, alias="from")
    imap: BouncesImapConfig | None = None

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, populate_by_name=True
    )


class NotificationsConfig(_Model):
    """[notifications]: the System Notification Mailbox and how notices are batched."""

    mailbox: str
    from_: str | None = Field(default=None, alias="from")
    digest_interval: Timeout = 900.0
    remind_after: Timeout = 86400.0
    via: UpstreamName | None = None
    unreachable_after: Duration = 600.0
    backlog_age: Duration = 3600.0  # the oldest pending message is older than this
    backlog_depth: int = Field(default=10_000, ge=1)  # or more recipients than this wait
    bounce_rate: int = Field(default=50, ge=1)  # failures within digest_interval
    # disk_low below this many free bytes where relayd writes (SQLite queue, transcripts);
    # off unless set, since only the operator knows what their disk can spare.
    disk_free_min: Annotated[Size | None, SIZE] = None

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, populate_by_name=True
    )


def with_secrets(
    bounces: BouncesConfig | None, locator: KeyLocator, environ: Mapping[str, str]
) -> BouncesConfig | None:
    """[bounces] with the IMAP password read from its file or environment variable."""
    imap = bounces.imap if bounces is not None else None
    if bounces is None or imap is None:
        return bounces
    key = "password_file" if imap.password_file is not None else "password_env"
    secret = read_secret(
        imap.password_file, imap.password_env, ("bounces", "imap", key), locator, environ
    )
    return bounces.model_copy(update={"imap": imap.model_copy(update={"password": secret})})
