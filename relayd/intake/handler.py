"""What intake decides behind the SMTP protocol: networks, MAIL parameters, route, enqueue.

IntakeHandler is aiosmtpd's handler (its handle_* hooks) and what intake/server.py's
IntakeSMTP asks; it answers in replies.py's constants and 250 only after the store
committed the message (group commit inside the store).
"""

from __future__ import annotations

import inspect
import ipaddress

from aiosmtpd.smtp import Envelope, Session

from relayd.clock import Clock
from relayd.config.model import Config
from relayd.dsn.params import DsnParamError, mail_param
from relayd.errors import StoreError
from relayd.intake.auth import AuthAccounts, AuthSMTP, prefixed_names
from relayd.intake.replies import (
    R250_OK,
    R250_QUEUED,
    R451_STORE_UNAVAILABLE,
    R501_BAD_DSN_PARAMETER,
    R552_TOO_BIG,
    R553_BAD_SENDER,
    R555_UNKNOWN_PARAMETER,
)
from relayd.logs import get_logger
from relayd.policy.addresses import AddressError, check_address
from relayd.policy.headers import prepare, received_header
from relayd.policy.longlines import wire_safe
from relayd.policy.routing import Routes
from relayd.store.base import MessageIntake
from relayd.types import NewMessage, Recipient, new_queue_id

_KNOWN_MAIL_PARAMS = {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"}
_ALLOWED_KEPT = 1024  # client addresses whose allowed_networks answer is kept

log = get_logger("intake")


class IntakeEnvelope(Envelope):
    """aiosmtpd's envelope with typed recipients, NOTIFY/ORCPT included (rcpt_tos stays empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.recipients: list[Recipient] = []


class IntakeHandler:
    """Policy and storage behind the SMTP protocol: networks, addresses, route, enqueue."""

    def __init__(self, config: Config, store: MessageIntake, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.accounts = AuthAccounts(config.server, clock)
        self.routes = Routes.from_config(config)
        self._allowed: dict[str, bool] = {}  # client address -> in allowed_networks

    def __dir__(self) -> list[str]:  # the hooks and mechanisms only: see AuthSMTP.__dir__
        return prefixed_names(type(self), ("handle_", "auth_"))

    def reconfigure(self, config: Config) -> None:
        """A reload (SIGHUP): new connections and transactions use `config` and its users."""
        self.config = config
        self.accounts = self.accounts.reconfigured(config.server)
        self.routes = Routes.from_config(config)
        self._allowed.clear()

    def client_allowed(self, client: str) -> bool:
        """Whether server.allowed_networks holds `client`; the answers for the last clients
        are kept (apps connect anew for every message, from a few addresses)."""
        allowed = self._allowed.get(client)
        if allowed is None:
            if len(self._allowed) >= _ALLOWED_KEPT:
                self._allowed.clear()
            allowed = self._allowed[client] = self._in_networks(client)
        return allowed

    def _in_networks(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.config.server.allowed_networks)

    def accept_mail(self, envelope: Envelope, address: str, params: list[str]) -> str:
        """Validate MAIL FROM and its parameters; returns the reply."""
        options: list[str] = []
        utf8 = False
        for param in params:
            keyword, _, value = param.partition("=")
            keyword = keyword.upper()
            if keyword not in _KNOWN_MAIL_PARAMS:
                return R555_UNKNOWN_PARAMETER.format(param=keyword)
            if keyword == "SIZE" and value.isdigit():
                if int(value) > self.config.server.max_message_size:
                    return R552_TOO_BIG.format(limit=self.config.server.max_message_size)
                continue
            if keyword == "SMTPUTF8":
                utf8 = True
            if keyword in ("RET", "ENVID"):
                try:
                    options.append(mail_param(keyword, value))
                except DsnParamError as exc:
                    return R501_BAD_DSN_PARAMETER.format(reason=exc)
                continue
            options.append(param.upper() if keyword == "BODY" else keyword)
        if address:  # "<>" is the null sender, allowed
            try:
                check_address(address, utf8=utf8)
            except AddressError as exc:
                return R553_BAD_SENDER.format(reason=exc)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.smtp_utf8 = utf8
        return R250_OK

    async def handle_DATA(
        self, server: AuthSMTP, session: Session, envelope: IntakeEnvelope, *, alone: bool = False
    ) -> str:
        """Route and enqueue; `alone`: this is the only session the process serves (the
        store's enqueue says what it may do with that)."""
        now = self.clock.now()
        client = str(session.peer[0]) if session.peer else "?"
        mail_from = envelope.mail_from or ""
        content = envelope.original_content or b""
        queue_id = new_queue_id(now)
        recipients = tuple(envelope.recipients)
        protocol = _protocol_name(session, server)
        received = received_header(
            helo=session.host_name or "unknown",
            client_ip=client,
            hostname=self.config.server.hostname,
            protocol=protocol,
            queue_id=queue_id,
            recipients=tuple(r.address for r in recipients),
            at=now,
        )
        body, message_id = prepare(
            wire_safe(content),  # once, here: the queue holds what goes on the wire
            received=received,
            queue_id=queue_id,
            hostname=self.config.server.hostname,
            at=now,
            relayd_id=True,
        )
        auth_user = server.local_user()
        upstream = self.routes.pick(mail_from, auth_user)
        log.info(
            "received",
            queue_id=queue_id,
            sender=mail_from,
            recipients=len(recipients),
            size=len(content),
            client=client,
            user=auth_user,
        )
        message = NewMessage(
            mail_from=mail_from,
            recipients=recipients,
            body=body,
            upstream=upstream,
            message_id=message_id,
            received_at=now,
            client=client,
            mail_options=tuple(envelope.mail_options),
            auth_user=auth_user,
            queue_id=queue_id,
        )
        try:
            await self.store.enqueue(message, alone=alone)
        except StoreError as exc:
            log.error("store_unavailable", queue_id=queue_id, error=str(exc))
            return R451_STORE_UNAVAILABLE
        log.info(
            "queued",
            queue_id=queue_id,
            message_id=message_id,
            upstream=upstream,
            sender=mail_from,
            recipients=len(recipients),
            size=len(body),
            client=client,
        )
        return R250_QUEUED.format(queue_id=queue_id)

    async def handle_EHLO(
        self, server: AuthSMTP, session: Session, envelope: Envelope, name: str, lines: list[str]
    ) -> list[str]:
        session.host_name = name  # aiosmtpd leaves this to an EHLO hook
        lines = self.accounts.ehlo_lines(lines)
        # PIPELINING (RFC 2920): aiosmtpd reads one command at a time from its stream, so a
        # batch is answered in order; DSN (RFC 3461 4).
        return [*lines[:-1], "250-PIPELINING", "250-DSN", lines[-1]] if lines else lines

    # aiosmtpd's __init__ asks inspect.signature() of this hook for every connection (to
    # tell its 4- from its 5-argument form); computed once, that is a tenth of the time
    # a connection spends in Python.
    handle_EHLO.__signature__ = inspect.signature(handle_EHLO)  # type: ignore[attr-defined]

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's default would send `500 Error: (ExcType) text` to the client."""
        log.error("intake_error", error=repr(error))
        return R451_STORE_UNAVAILABLE


def _protocol_name(session: Session, server: AuthSMTP) -> str:
    """RFC 3848 protocol names for the Received line."""
    if not session.extended_smtp:
        return "SMTP"
    name = "ESMTP"
    if server._tls_protocol is not None:
        name += "S"
    if session.authenticated:
        name += "A"
    return name
