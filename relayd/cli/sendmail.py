"""`relayd sendmail`: the sendmail command line that cron, PHP mail(), logwatch and mdadm use.

    relayd-sendmail [-t] [-i | -oi] [-f FROM] [-F NAME] [-bm] [-c FILE] [RCPT ...] < message

The message is read from standard input (without -i, a line holding a single "." ends it) and
submitted to the local daemon over SMTP at the first `server.listen` address, so intake's
policy applies to it as to any app. When the daemon is not running (connection refused), the
message is written straight into the queue with store.enqueue -- durably, with the headers
intake would add -- and the daemon sends it when it starts. Exit codes are sysexits(3).

Flags: -t adds the To/Cc/Bcc addresses to the recipients and removes Bcc; -f sets the
envelope sender (default: the user at server.hostname); -F names the sender in the From
header that is added when the message has none. Accepted and ignored, as other sendmails do:
-bm, -oX (other than -oi), -odX, -v, -U, -G, -B TYPE, -N DSN, -R RET, -V ENVID, -L, -X, -h.
-C FILE is taken as relayd's configuration file, like -c. Other modes (-bs, -bp, -q, ...)
are refused with EX_USAGE and a hint.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import smtplib
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formataddr, getaddresses
from pathlib import Path
from typing import BinaryIO

from relayd.clock import Clock
from relayd.config.model import Config, default_config_path, load, parse_listen
from relayd.errors import ConfigError, StoreError
from relayd.policy.addresses import AddressError, check_address
from relayd.policy.headers import prepare
from relayd.policy.longlines import longest_line, wire_safe
from relayd.policy.routing import Routes
from relayd.store import store_for
from relayd.types import NewMessage, Recipient, new_queue_id
from relayd.units import format_rfc5322

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_TEMPFAIL = 75
EX_CONFIG = 78

DEFAULT_LISTEN = "127.0.0.1:2525"
SUBMIT_TIMEOUT = 60.0
_WITH_VALUE = frozenset("fFrBCNRVLXhc")  # flags that take a value (attached or next word)
_IGNORED = frozenset("vUGmn")
_FIELD = re.compile(rb"^[!-9;-~]+:")  # RFC 5322 2.2: a field name is printable ASCII but ":"
_MODES = {
    "s": "-bs (SMTP on standard input) is not supported; connect to the daemon's SMTP port",
    "p": "-bp: use `relayd queue list` to see the queue",
    "i": "-bi: relayd has no aliases database",
    "t": "-bt: relayd has no address test mode",
    "v": "-bv: relayd has no address verification mode",
    "d": "-bd: run the daemon with `relayd run`",
}


class UsageError(Exception):
    """A command line sendmail cannot act on (EX_USAGE)."""


class DataError(Exception):
    """A message or address that cannot be submitted (EX_DATAERR)."""


@dataclass(frozen=True)
class Result:
    """What the command ends with: a sysexits code and, unless it worked, why."""

    code: int
    message: str = ""


@dataclass
class Options:
    extract: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F
    config: Path | None = None  # -c / -C
    recipients: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Composed:
    """The envelope and the message bytes (CRLF line ends) ready to submit."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes

    @property
    def options(self) -> tuple[str, ...]:
        addresses = (self.sender, *self.recipients)
        utf8 = () if all(a.isascii() for a in addresses) else ("SMTPUTF8",)
        return (*(() if self.data.isascii() else ("BODY=8BITMIME",)), *utf8)


# -- the command line ----------------------------------------------------------------------


def parse_args(argv: list[str]) -> Options:
    """sendmail's flags (attached values allowed: -fFROM, -FName, -oi); then recipients."""
    opts = Options()
    words = list(argv)
    while words and words[0].startswith("-") and words[0] != "-":
        word = words.pop(0)
        if word == "--":
            break
        flag, rest = word[1], word[2:]
        if flag in _WITH_VALUE:
            if not rest:
                if not words:
                    raise UsageError(f"option -{flag} needs a value")
                rest = words.pop(0)
            _set_value(opts, flag, rest)
        else:
            _set_flag(opts, flag, rest)
    for word in words:
        opts.recipients += [addr for _, addr in getaddresses([word]) if addr]
    return opts


def _set_value(opts: Options, flag: str, value: str) -> None:
    if flag in "fr":
        opts.sender = value.strip().removeprefix("<").removesuffix(">")
    elif flag == "F":
        opts.full_name = value
    elif flag in "cC":
        opts.config = Path(value)
    # B (body type), N (DSN notify), R (DSN ret), V (envid), L, X, h: accepted, ignored


def _set_flag(opts: Options, flag: str, rest: str) -> None:
    if flag == "t" and not rest:
        opts.extract = True
    elif flag == "i" and not rest:
        opts.ignore_dots = True
    elif flag == "o":
        opts.ignore_dots = opts.ignore_dots or rest == "i"  # -oem, -odi, -oQ...: ignored
    elif flag == "b":
        if rest != "m":
            raise UsageError(_MODES.get(rest, f"-b{rest}: unknown mode (only -bm is supported)"))
    elif flag == "q":
        raise UsageError("-q: relayd delivers continuously; `relayd queue retry --all` retries now")
    elif flag not in _IGNORED:
        raise UsageError(f"unknown option -{flag}{rest}")


# -- the message ---------------------------------------------------------------------------


def read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    """Standard input with CRLF line ends; without -i a line "." alone ends it."""
    lines: list[bytes] = []
    for line in iter(stream.readline, b""):
        text = line.rstrip(b"\r\n")
        if not ignore_dots and text == b".":
            break
        lines.append(text)
    return b"".join(text + b"\r\n" for text in lines)


def split_headers(data: bytes) -> tuple[list[bytes], bytes]:
    """(header lines, body): headers end at an empty line (consumed) or a non-header line."""
    lines = data.split(b"\r\n")
    headers: list[bytes] = []
    for index, line in enumerate(lines):
        if (line[:1] in (b" ", b"\t") and headers) or _FIELD.match(line):
            headers.append(line)
            continue
        body_start = index + 1 if line == b"" else index
        return headers, b"\r\n".join(lines[body_start:])
    return headers, b""


def _fields(headers: list[bytes], names: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """(first line, end line, unfolded value) of each field named in `names`."""
    found = []
    for start, line in enumerate(headers):
        name, _, value = line.partition(b":")
        if (
            line[:1] in (b" ", b"\t")
            or name.strip().lower().decode("ascii", "replace") not in names
        ):
            continue
        end = start + 1
        while end < len(headers) and headers[end][:1] in (b" ", b"\t"):
            value += b" " + headers[end].strip()
            end += 1
        found.append((start, end, value.decode("utf-8", "replace").strip()))
    return found


def compose(data: bytes, opts: Options, default_sender: str) -> Composed:
    """Envelope and headers: -t recipients (Bcc removed), a From when there is none."""
    headers, body = split_headers(data)
    recipients = list(opts.recipients)
    if opts.extract:
        for _, _, value in _fields(headers, ("to", "cc", "bcc")):
            recipients += [addr for _, addr in getaddresses([value]) if addr]
        for start, end, _ in reversed(_fields(headers, ("bcc",))):
            del headers[start:end]
    sender = default_sender if opts.sender is None else opts.sender
    if not _fields(headers, ("from",)):
        shown = sender or default_sender
        headers.append(b"From: " + formataddr((opts.full_name or "", shown), "utf-8").encode())
    unique = list(dict.fromkeys(recipients))
    if not unique:
        raise UsageError("no recipients: give addresses as arguments, or -t with To/Cc/Bcc")
    for address in (sender, *unique) if sender else unique:
        try:
            check_address(address, utf8=not address.isascii())
        except AddressError as exc:
            raise DataError(f"bad address <{address}>: {exc}") from exc
    message = b"".join(line + b"\r\n" for line in headers) + b"\r\n" + body
    return Composed(sender, tuple(unique), message)


def default_sender(environ: Mapping[str, str], hostname: str) -> str:
    user = environ.get("LOGNAME") or environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name
    return f"{user}@{hostname}"


# -- submission ----------------------------------------------------------------------------


def _load(path: Path) -> tuple[Config | None, str]:
    """The configuration, or None and why it could not be read (a user such as www-data
    may lack the rights to the password files: SMTP submission still works)."""
    try:
        return load(path), ""
    except (ConfigError, OSError) as exc:
        return None, str(exc)


def submission_address(config: Config | None, path: Path) -> tuple[str, int]:
    """The first server.listen address (a wildcard becomes loopback); read from the raw TOML
    when the configuration could not be loaded; DEFAULT_LISTEN when there is none."""
    listen = DEFAULT_LISTEN
    if config is not None:
        listen = config.server.listen[0]
    else:
        try:
            with path.open("rb") as handle:
                listen = str(tomllib.load(handle)["server"]["listen"][0])
        except (OSError, tomllib.TOMLDecodeError, KeyError, IndexError, TypeError):
            pass
    try:
        host, port = parse_listen(listen)
    except ValueError:
        host, port = parse_listen(DEFAULT_LISTEN)
    loopback = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - a bind-all address maps to loopback
    return loopback.get(host, host), port


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _reply_code(code: int, text: bytes | str) -> Result:
    kind = EX_TEMPFAIL if 400 <= code < 500 else EX_DATAERR
    return Result(kind, f"the relay refused the message: {code} {_text(text)}")


def via_smtp(address: tuple[str, int], message: Composed, helo: str) -> Result | None:
    """Submit over SMTP; None when nothing listens there (the daemon is not running)."""
    client = smtplib.SMTP(local_hostname=helo, timeout=SUBMIT_TIMEOUT)
    try:
        try:
            code, greeting = client.connect(*address)
        except OSError:
            return None
        if code != 220:  # 554: this client is not in server.allowed_networks
            kind = EX_TEMPFAIL if 400 <= code < 500 else EX_CONFIG
            text = f"{code} {_text(greeting)}"
            return Result(kind, f"the relay at {address[0]}:{address[1]} refused: {text}")
        return _transaction(client, message)
    finally:
        client.close()


def _transaction(client: smtplib.SMTP, message: Composed) -> Result:
    try:
        refused = client.sendmail(
            message.sender, list(message.recipients), message.data, list(message.options)
        )
        client.quit()
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return _reply_code(code, text)
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        return _reply_code(exc.smtp_code, exc.smtp_error)
    except (smtplib.SMTPException, OSError) as exc:
        return Result(EX_TEMPFAIL, f"the relay connection failed: {exc}")
    if refused:
        names = ", ".join(
            f"<{rcpt}>: {code} {text.decode('utf-8', 'replace')}"
            for rcpt, (code, text) in refused.items()
        )
        return Result(EX_DATAERR, f"queued for the other recipients; refused {names}")
    return Result(EX_OK)


def enqueue_directly(config: Config, message: Composed, uid: int, now: float) -> Result:
    """The daemon is not running: commit the message to the queue as intake would."""
    hostname = config.server.hostname
    queue_id = new_queue_id(now)
    received = (
        f"Received: by {hostname} (relayd sendmail, from userid {uid})\r\n"
        f"\tid {queue_id}; {format_rfc5322(now)}\r\n"
    ).encode()
    body, message_id = prepare(
        message.data, received=received, queue_id=queue_id, hostname=hostname, at=now
    )
    if len(body) > config.server.max_message_size:
        return Result(
            EX_DATAERR, f"the message is larger than {config.server.max_message_size} bytes"
        )
    if longest_line(body) > config.server.max_line_length:
        limit = config.server.max_line_length
        return Result(EX_DATAERR, f"a line is longer than server.max_line_length ({limit} bytes)")
    body = wire_safe(body)  # as intake does: the queue holds what goes on the wire
    new = NewMessage(
        mail_from=message.sender,
        recipients=tuple(Recipient(address) for address in message.recipients),
        body=body,
        upstream=Routes.from_config(config).pick(message.sender, None),
        message_id=message_id,
        received_at=now,
        client="local",
        mail_options=message.options,
        queue_id=queue_id,
    )
    try:
        asyncio.run(_commit(config, new))
    except (StoreError, OSError) as exc:
        return Result(
            EX_TEMPFAIL, f"the daemon is not running and the queue cannot be written: {exc}"
        )
    return Result(EX_OK)


async def _commit(config: Config, message: NewMessage) -> None:
    store = store_for(config.queue)
    await store.open()
    try:
        await store.enqueue(message)  # durable when it returns (the store's contract)
    finally:
        await store.close()


def submit(argv: list[str], stdin: BinaryIO, environ: Mapping[str, str], clock: Clock) -> Result:
    """The whole command: parse, read, compose, submit (or queue directly)."""
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        return Result(EX_USAGE, str(exc))
    path = opts.config or default_config_path(environ)
    config, why_not = _load(path)
    hostname = config.server.hostname if config is not None else socket.getfqdn()
    try:
        data = read_message(stdin, opts.ignore_dots)
    except OSError as exc:
        return Result(EX_NOINPUT, f"cannot read the message from standard input: {exc}")
    try:
        message = compose(data, opts, default_sender(environ, hostname))
    except UsageError as exc:
        return Result(EX_USAGE, str(exc))
    except DataError as exc:
        return Result(EX_DATAERR, str(exc))
    address = submission_address(config, path)
    result = via_smtp(address, message, hostname)
    if result is not None:
        return result
    if config is None:
        return Result(
            EX_TEMPFAIL,
            f"the relay at {address[0]}:{address[1]} is not running and the configuration "
            f"cannot be read to queue the message directly ({why_not}); nothing was queued",
        )
    return enqueue_directly(config, message, os.getuid(), clock.now())
