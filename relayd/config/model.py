"""The settings tree: one TOML file validated once, completely, into frozen pydantic models.

Everything downstream reads `Config` and never re-checks it, so every rule that can be checked
without the network lives here: unknown keys, durations and sizes ("5m", "25MB"), provider
presets filled in (and remembered, so check-config can say where a value came from), secrets
read from `password_file` / `password_env` into `SecretStr`, and the sender -> upstream routes
proved unambiguous. Failures are `ConfigError`s naming the dotted key and its line. The value
types ("5m", "25MB", patterns) live in config/values.py, the text work (key lines, error text,
TOML rendering) in config/text.py, the [upstreams.NAME] tables in config/upstream.py (their
account rules in config/account.py) and the secret readers in config/secrets.py. This module
never prints and never exits.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from relayd.config import reports
from relayd.config.gates import reject_internal_keys
from relayd.config.reports import BouncesConfig, NotificationsConfig
from relayd.config.secrets import dsn_has_password, read_secret
from relayd.config.text import KeyedValueError, KeyLocator, config_error, read_toml, render_model
from relayd.config.upstream import UpstreamConfig
from relayd.config.values import (
    AddressPattern,
    ConfPath,
    Duration,
    Hostname,
    Listen,
    Network,
    PasswordHash,
    Size,
    Timeout,
    durations,
    is_loopback_host,
    parse_listen,
)

__all__ = [
    "Config",
    "UpstreamConfig",
    "default_config_path",
    "load",
    "parse_listen",
    "render_effective",
]

DEFAULT_PATH = Path("/etc/relayd/relayd.toml")


MAILNAME = Path("/etc/mailname")  # Debian's name for the mail system (Postfix reads it too)


def default_hostname(mailname: Path = MAILNAME) -> str:
    """server.hostname when the file leaves it out: /etc/mailname where present, else the
    fully qualified name, else the host name (getfqdn says "localhost" on a machine whose
    /etc/hosts maps its name to 127.0.1.1 without a domain)."""
    try:
        name = mailname.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if name:
        return name
    fqdn = socket.getfqdn()
    return socket.gethostname() if fqdn.startswith("localhost") else fqdn


class _Model(BaseModel):
    # hide_input_in_errors: a chained ValidationError must not print what was in the file.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class UserConfig(_Model):
    """One SMTP AUTH account for a local app ([[server.users]])."""

    name: str = Field(min_length=1)
    password_hash: PasswordHash
    allowed_senders: list[AddressPattern] = Field(default_factory=list)


class ServerConfig(_Model):
    """The local SMTP intake."""

    listen: list[Listen] = Field(default_factory=lambda: ["127.0.0.1:2525"], min_length=1)
    hostname: Hostname = Field(default_factory=lambda: default_hostname())
    max_message_size: Size = 25_000_000
    max_line_length: Size = Field(default=25_000_000, ge=998)
    max_recipients: StrictInt = Field(default=100, ge=1)
    allowed_networks: list[Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")]
    )
    require_auth: StrictBool = False
    tls_cert: ConfPath | None = None
    tls_key: ConfPath | None = None
    users: list[UserConfig] = Field(default_factory=list)
    idle_timeout: Timeout = 300.0
    workers: StrictInt = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise KeyedValueError((missing,), "tls_cert and tls_key go together; set both")
        if self.require_auth and not self.users:
            raise KeyedValueError(("require_auth",), "needs at least one [[server.users]] entry")
        names = [user.name for user in self.users]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise KeyedValueError(("users", index, "name"), f'user "{name}" is defined twice')
        return self


class QueueConfig(_Model):
    """The durable queue and the retry schedule."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: ConfPath = Path("/var/lib/relayd/queue.db")
    dsn: SecretStr | None = None  # postgres; with a password only via dsn_file / dsn_env
    dsn_file: ConfPath | None = None
    dsn_env: str | None = None
    pool_size: StrictInt = Field(default=10, ge=1)
    lock_timeout: Timeout = 5.0  # a write waits this long for another process's lock, then 451
    retention: Duration = 30 * 86400.0  # finished messages kept this long; 0 = for ever
    max_lifetime: Timeout = 5 * 86400.0
    retry: list[Duration] = durations("1m", "5m", "15m", "30m", "1h", "2h", "4h")
    lease_time: Timeout = 300.0
    shutdown_timeout: Duration = 30.0
    # postgres: this node's name among those sharing the queue, the same across restarts
    # (default: the host name and first listen address); and how long a node may miss its
    # heartbeat before its leases and leadership pass to the others.
    node_id: str | None = Field(default=None, min_length=1)
    node_timeout: Timeout = 10.0

    @model_validator(mode="after")
    def _check_dsn(self) -> QueueConfig:
        given = [key for key in ("dsn", "dsn_file", "dsn_env") if getattr(self, key) is not None]
        if len(given) > 1:
            raise KeyedValueError((given[1],), "set one of dsn, dsn_file or dsn_env")
        if self.backend == "postgres" and not given:
            raise KeyedValueError(("backend",), '"postgres" needs dsn, dsn_file or dsn_env')
        if self.dsn is not None and dsn_has_password(self.dsn.get_secret_value()):
            raise KeyedValueError(
                ("dsn",), "secrets are not allowed inline; put the DSN in dsn_file or dsn_env"
            )
        return self

    @property
    def dsn_text(self) -> str | None:
        return None if self.dsn is None else self.dsn.get_secret_value()


class RoutingConfig(_Model):
    default: str | None = None


class LogConfig(_Model):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    transcript_dir: ConfPath | None = None
    transcript_max_size: Size = 10_000_000  # per upstream file, rotated beyond this
    transcript_files: StrictInt = Field(default=5, ge=1)  # rotated files kept per upstream


class AdminConfig(_Model):
    """The admin HTTP endpoint and the status page (daemon/admin.py, web/)."""

    listen: Listen | None = None
    token_file: ConfPath | None = None  # the bearer token that allows changes (web/auth.py)
    token: SecretStr | None = None  # read from token_file by load(); never in the file

    @model_validator(mode="after")
    def _token_off_loopback(self) -> AdminConfig:
        # Any local user reaches loopback, but anyone on the network reaches the rest: the
        # page shows senders, recipients and replies, so off loopback it needs the token.
        if (
            self.listen is not None
            and self.token_file is None
            and not is_loopback_host(parse_listen(self.listen)[0])
        ):
            raise KeyedValueError(
                ("listen",),
                f'"{self.listen}" is not a loopback address: set admin.token_file too (the '
                "page is then readable only with the token), or listen on 127.0.0.1 and reach "
                "it over an SSH tunnel (README)",
            )
        return self


class Config(_Model):
    """The whole validated configuration; policy/routing.py's Routes picks from it the upstream
    for a message."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    bounces: BouncesConfig | None = None
    notifications: NotificationsConfig | None = None
    source: Path | None = None

    @field_validator("upstreams", mode="before")
    @classmethod
    def _name_upstreams(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {
            key: {**table, "name": key} if isinstance(table, dict) else table
            for key, table in value.items()
        }

    @model_validator(mode="after")
    def _check_routes(self) -> Config:
        if not self.upstreams:
            raise KeyedValueError(("upstreams",), "at least one [upstreams.NAME] table is required")
        routes = self._route_table()
        default = self.routing.default
        if default is not None and default not in self.upstreams:
            names = ", ".join(self.upstreams)
            raise KeyedValueError(
                ("routing", "default"), f'"{default}" is not an upstream (have: {names})'
            )
        via = self.notifications.via if self.notifications else None
        if via is not None and via not in self.upstreams:
            raise KeyedValueError(("notifications", "via"), f'"{via}" is not an upstream')
        if default is None and len(self.upstreams) > 1 and "*" not in routes:
            raise KeyedValueError(
                ("routing", "default"),
                'several upstreams: set routing.default or give one of them senders = ["*"]',
            )
        return self

    def _route_table(self) -> dict[str, str]:
        """sender pattern -> upstream name; a pattern claimed twice is ambiguous."""
        users = {user.name for user in self.server.users}
        routes: dict[str, str] = {}
        for key, upstream in self.upstreams.items():
            where = ("upstreams", key, "senders")
            for pattern in upstream.senders:
                other = routes.setdefault(pattern, key)
                if other != key:
                    raise KeyedValueError(
                        where,
                        f'"{pattern}" is routed by both upstreams.{other} and upstreams.{key}; '
                        "a pattern may route to one upstream only",
                    )
                if pattern.startswith("user:") and pattern[5:] not in users:
                    raise KeyedValueError(where, f'"{pattern}" names no [[server.users]] entry')
        return routes


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """RELAYD_CONFIG when set, else /etc/relayd/relayd.toml."""
    value = (os.environ if environ is None else environ).get("RELAYD_CONFIG", "")
    return Path(value) if value else DEFAULT_PATH


def load(path: Path | str, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the TOML file at `path` (secrets from files or `environ`)."""
    source = Path(os.path.abspath(path))
    data, locator = read_toml(source)
    reject_internal_keys(data, locator)
    context = {"toml": True, "base_dir": source.parent}
    try:
        config = Config.model_validate({**data, "source": source}, context=context)
    except ValidationError as exc:
        raise config_error(exc, locator) from exc
    return _with_secrets(config, locator, os.environ if environ is None else environ)


def render_effective(config: Config) -> str:
    """The effective configuration as TOML for `relayd check-config`; secrets masked."""
    hidden: set[tuple[type[BaseModel], str]] = {
        (Config, "source"),
        (UpstreamConfig, "name"),
        (UpstreamConfig, "preset_fields"),
    }
    header = f"effective configuration from {config.source}" if config.source else ""
    return render_model(config, hidden=hidden, header=header)


def _with_secrets(config: Config, locator: KeyLocator, environ: Mapping[str, str]) -> Config:
    upstreams = {
        name: upstream.model_copy(update={"password": _secret(upstream, locator, environ)})
        if upstream.password_file is not None or upstream.password_env is not None
        else upstream
        for name, upstream in config.upstreams.items()
    }
    queue = config.queue
    if queue.dsn_file is not None or queue.dsn_env is not None:
        loc = ("queue", "dsn_file" if queue.dsn_file else "dsn_env")
        dsn = read_secret(queue.dsn_file, queue.dsn_env, loc, locator, environ)
        queue = queue.model_copy(update={"dsn": dsn})
    bounces = reports.with_secrets(config.bounces, locator, environ)
    admin = config.admin
    if admin.token_file is not None:
        token = read_secret(admin.token_file, None, ("admin", "token_file"), locator, environ)
        admin = admin.model_copy(update={"token": token})
    update = {"upstreams": upstreams, "queue": queue, "bounces": bounces, "admin": admin}
    return config.model_copy(update=update)


def _secret(upstream: UpstreamConfig, locator: KeyLocator, environ: Mapping[str, str]) -> SecretStr:
    """The password from its file (trailing newline dropped) or environment variable."""
    key = "password_file" if upstream.password_file else "password_env"
    loc = ("upstreams", upstream.name, key)
    return read_secret(upstream.password_file, upstream.password_env, loc, locator, environ)
