"""The [bounces], [bounces.imap] and [notifications] tables: where delivery reports and
operator notices go, and the provider inbox the late-bounce poller reads.

config.Config holds them (optional: without [bounces] relayd makes no DSNs, without
[notifications] notices are only logged). The IMAP password is a secret like an upstream's:
password_file or password_env, read at load by `with_secrets`.

What the poller cannot use (a mailbox name IMAP cannot carry, a password in clear to another
host) is refused here, at load, by `imap_problems`; bounces.ImapSettings and imap.mailbox_arg
apply the same rules, so the file and the daemon never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    model_validator,
)

from relayd.config.secrets import read_secret
from relayd.config.text import SIZE, KeyedValueError, KeyLocator
from relayd.config.values import (
    ConfPath,
    Duration,
    Hostname,
    Size,
    Timeout,
    UpstreamName,
    is_loopback_host,
)
from relayd.policy.addresses import AddressError, check_address
from relayd.policy.providers import IMAP_HOSTS


class _Model(BaseModel):
    # No populate_by_name: a file may say `from`, never the field name `from_`.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def imap_mailbox_problem(name: str) -> str | None:
    """Why `name` cannot be sent as an IMAP mailbox name, or None when it can.

    Names are ASCII (modified UTF-7, RFC 3501 5.1.3, is not implemented); the LIST
    wildcards are refused because a LIST by name would match other mailboxes.
    """
    if name.isascii() and not any(char in name for char in "%*\r\n\0"):
        return None
    return (
        f"{name!r} is not a mailbox name relayd can use over IMAP: ASCII only, without the "
        'wildcards "%" and "*" or control characters'
    )


def imap_problems(host: str, tls: bool, folder: str, move_to: str) -> list[tuple[str, str]]:
    """(key, message) for each [bounces.imap] setting the poller cannot work with; [] when
    it can. The config check and bounces.ImapSettings both call this."""
    problems = [
        (key, problem)
        for key, name in (("folder", folder), ("move_to", move_to))
        if (problem := imap_mailbox_problem(name)) is not None
    ]
    if folder == move_to:
        problems.append(("move_to", "must differ from folder"))
    if not tls and not is_loopback_host(host):
        problems.append(
            (
                "tls",
                f"tls = false would send the IMAP password in clear to {host}; remove it "
                "(TLS on port 993), or use it only for an IMAP server on this host "
                '(host = "127.0.0.1", "::1" or "localhost")',
            )
        )
    return problems


def _mail_address(value: str) -> str:
    """A bare envelope address; reports and notices are sent without SMTPUTF8, so ASCII."""
    try:
        return check_address(value, utf8=False)
    except AddressError as exc:
        reason = (
            "relayd sends reports and notices without SMTPUTF8: use an ASCII address (a "
            "domain in its xn-- form)"
            if not value.isascii()
            else str(exc)
        )
        raise ValueError(
            f'"{value}" is not a mail address ({reason}); write it as local@domain, '
            'e.g. "it-alerts@practice.example"'
        ) from None


MailAddress = Annotated[str, AfterValidator(_mail_address)]


class BouncesImapConfig(_Model):
    """[bounces.imap]: the upstream account's inbox, read over TLS for late bounces."""

    provider: str | None = None  # fills host from providers.IMAP_HOSTS
    host: Hostname | None = None
    port: StrictInt = Field(default=993, ge=1, le=65535)
    username: str
    password_file: ConfPath | None = None
    password_env: str | None = None
    password: SecretStr | None = None  # filled from password_file / password_env at load
    folder: str = "INBOX"
    move_to: str = "relayd/bounces"
    poll_interval: Timeout = 300.0
    lookback: Duration = 14 * 86400.0
    idle: StrictBool = True
    tls: StrictBool = True
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
        if self.tls_ca_file is not None and not self.tls_ca_file.is_file():
            raise KeyedValueError(("tls_ca_file",), f"{self.tls_ca_file} is not a file")
        assert self.host is not None  # _preset_host filled it or refused the table
        problems = imap_problems(self.host, self.tls, self.folder, self.move_to)
        if problems:
            key, message = problems[0]
            raise KeyedValueError((key,), message)
        return self


class BouncesConfig(_Model):
    """[bounces]: where DSNs go; relayd's own reports come from `from`, sent as <>."""

    mailbox: MailAddress
    notify_sender: StrictBool = False
    delay_warning: Duration | None = None
    from_: str | None = Field(default=None, alias="from")  # a From header: may have a name
    imap: BouncesImapConfig | None = None


class NotificationsConfig(_Model):
    """[notifications]: the System Notification Mailbox and how notices are batched."""

    mailbox: MailAddress
    from_: MailAddress | None = Field(default=None, alias="from")  # also the envelope sender
    digest_interval: Timeout = 900.0
    remind_after: Timeout = 86400.0
    via: UpstreamName | None = None
    unreachable_after: Duration = 600.0
    backlog_age: Duration = 3600.0  # the oldest pending message is older than this
    backlog_depth: StrictInt = Field(default=10_000, ge=1)  # or more recipients than this wait
    bounce_rate: StrictInt = Field(default=50, ge=1)  # failures within digest_interval
    # disk_low below this many free bytes where relayd writes (SQLite queue, transcripts);
    # off unless set, since only the operator knows what their disk can spare.
    disk_free_min: Annotated[Size | None, SIZE] = None


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
