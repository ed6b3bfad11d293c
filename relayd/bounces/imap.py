"""One IMAP session (aioimaplib) in the few verbs the bounce poller needs; no decisions.

The only module that imports aioimaplib. Every failure (refused, reset, TLS, timeout, a NO
or BAD reply) becomes ImapError with the command named and the server's text, never the
password. Messages are read with BODY.PEEK, so reading sets no \\Seen flag.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import aioimaplib  # type: ignore[import-untyped]

from relayd.config.reports import imap_mailbox_problem
from relayd.errors import RelaydError

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)", re.IGNORECASE)
# A mailbox size update, as aioimaplib's protocol sees it ("* 3 EXISTS") or as a command's
# response keeps it ("3 EXISTS"). EXISTS never lowers the count (RFC 3501 5.2); EXPUNGE does.
_SIZE_UPDATE = re.compile(rb"^(?:\* )?(\d+) (EXISTS|EXPUNGE)\b", re.IGNORECASE)
_SEARCH = re.compile(rb"^[\d ]*$")
# `(\HasNoChildren) "/" relayd/bounces` (RFC 3501 7.2.2); the delimiter may be NIL.
_LIST = re.compile(rb'^\(([^)]*)\) (?:"((?:[^"\\]|\\.)*)"|NIL) ')
_ATOM = re.compile(r"^[A-Za-z0-9_./&+-]+$")
_ERRORS = (aioimaplib.AioImapException, TimeoutError, OSError, ValueError)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

MoveHow = Literal["moved", "expunged", "flagged"]


class ImapError(RelaydError):
    """The IMAP server could not be reached, refused a command, or the session broke."""


class ImapAuthError(ImapError):
    """The IMAP server refused the login: the credentials need an operator."""


@dataclass(frozen=True)
class Mailbox:
    """A selected mailbox: its name on the server, UIDVALIDITY and message count."""

    name: str
    uidvalidity: int
    exists: int


def mailbox_arg(name: str) -> str:
    """A mailbox name as an IMAP astring: an atom as is, else quoted (RFC 3501 9). Raises
    ValueError for a name config_reports.imap_mailbox_problem refuses (the config check)."""
    problem = imap_mailbox_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return _astring(name)


def _astring(value: str) -> str:
    if _ATOM.match(value) and value.upper() != "NIL":
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapSession:
    """A logged-in session; `async with await ImapSession.connect(...)` logs out after."""

    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._closed = asyncio.Event()
        # aioimaplib's only hook for the end of the connection (IMAP4_SSL takes no callback).
        client.protocol.conn_lost_cb = lambda _exc: self._closed.set()
        # New mail is announced once (`* 4 EXISTS`), whenever the server notices it: often in
        # the reply to a FETCH or MOVE, or between commands. aioimaplib drops an untagged
        # response no pending command claims ("ignored untagged response"), and a server
        # does not repeat it when IDLE starts, so mail that arrived after a poll's search
        # would wait a whole poll_interval. Every untagged line passes through
        # _untagged_response: count the announcements there (see new_mail_announced).
        self._count = 0  # messages in the selected mailbox, as the server last said
        self._arrivals = 0  # times the server said that count grew
        self._arrivals_at_select = 0
        untagged = client.protocol._untagged_response

        def observe(line: bytes) -> Any:
            self._count, grew = _size_update(self._count, line)
            self._arrivals += grew
            return untagged(line)

        client.protocol._untagged_response = observe

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        username: str,
        password: str,
        ssl_context: ssl.SSLContext | None,
        timeout: float = 30.0,
    ) -> ImapSession:
        """Connect (implicit TLS when `ssl_context` is given), greet and log in."""
        # aioimaplib logs every line it sends and receives at DEBUG: message contents, and
        # a LOGIN whose quoting can defeat its password scrubbing. Never below INFO.
        logging.getLogger("aioimaplib").setLevel(logging.INFO)
        if ssl_context is not None:
            client = aioimaplib.IMAP4_SSL(host, port, timeout=timeout, ssl_context=ssl_context)
        else:
            client = aioimaplib.IMAP4(host, port, timeout=timeout)
        session = cls(client, timeout)
        try:
            await session._call(client.wait_hello_from_server(), "connect")
            # aioimaplib quotes the password but sends the user name as it is given.
            login = client.login(_astring(username), password)
            response = await session._call(login, "LOGIN")
            if response.result != "OK":
                raise ImapAuthError(f"LOGIN refused: {_text(response)}")
            # The capabilities in the login reply may be partial (or glued to "]"): ask.
            await session._call(client.protocol.capability(), "CAPABILITY")
        except BaseException:
            await session._drop()
            raise
        return session

    async def __aenter__(self) -> ImapSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def has(self, capability: str) -> bool:
        return bool(self._client.has_capability(capability))

    def new_mail_announced(self) -> bool:
        """Whether the server has said the mailbox grew since the last SELECT's reply: mail
        a search made after that SELECT may not have seen."""
        return self._arrivals > self._arrivals_at_select

    async def select(self, name: str) -> Mailbox:
        before, self._count = self._arrivals, 0
        response = await self._ok(self._client.select(mailbox_arg(name)), f"SELECT {name}")
        # The SELECT's own EXISTS lines were counted first (they precede its tagged OK);
        # anything counted after them came later, even before this coroutine resumed.
        exists = grown = 0
        uidvalidity = None
        for line in _lines(response):
            if match := _UIDVALIDITY.search(line):
                uidvalidity = int(match.group(1))
            exists, grew = _size_update(exists, line)
            grown += grew
        self._arrivals_at_select = before + grown
        if uidvalidity is None:
            raise ImapError(f"SELECT {name}: the server sent no UIDVALIDITY")
        return Mailbox(name, uidvalidity, exists)

    async def uids_after(self, last_uid: int, since: float | None = None) -> list[int]:
        """UIDs above `last_uid` (that arrived on or after the day of `since`), ascending.
        `n:*` also matches the highest UID (RFC 3501 6.4.8), so the result is filtered."""
        criteria = f"UID {last_uid + 1}:*"
        if since is not None:
            criteria += f" SINCE {imap_date(since)}"
        search = self._client.uid_search(criteria, charset=None)
        response = await self._ok(search, "UID SEARCH")
        uids: set[int] = set()
        for line in _lines(response):
            if _SEARCH.match(line):
                uids.update(int(word) for word in line.split())
        return sorted(uid for uid in uids if uid > last_uid)

    async def fetch_header(self, uid: int) -> tuple[bytes | None, frozenset[str]]:
        """The header block and the flags of one message; (None, {}) if it is gone."""
        fetch = self._client.uid("fetch", str(uid), "(UID FLAGS BODY.PEEK[HEADER])")
        response = await self._ok(fetch, f"UID FETCH {uid}")
        flags: frozenset[str] = frozenset()
        for line in response.lines:
            match = _FLAGS.search(line) if type(line) is bytes else None  # not in a literal
            if match:
                flags = frozenset(match.group(1).decode("ascii", "replace").split())
        return _literal(response), flags

    async def fetch(self, uid: int, section: str = "") -> bytes | None:
        """BODY.PEEK[section] of one message ("" = all of it, "HEADER"); None if it is gone."""
        fetch = self._client.uid("fetch", str(uid), f"(UID BODY.PEEK[{section}])")
        return _literal(await self._ok(fetch, f"UID FETCH {uid}"))

    async def ensure_mailbox(self, path: str) -> str:
        """The server's name for `path` ("/" separates levels), created when missing."""
        delimiter = await self._delimiter()
        name = path.replace("/", delimiter) if delimiter else path
        listed = await self._ok(self._client.list('""', mailbox_arg(name)), f"LIST {name}")
        if not any(_LIST.match(line) for line in _lines(listed)):
            response = await self._call(self._client.create(mailbox_arg(name)), f"CREATE {name}")
            if response.result != "OK" and b"ALREADYEXISTS" not in b" ".join(_lines(response)):
                raise ImapError(f"CREATE {name} refused: {_text(response)}")
        return name

    async def move(self, uid: int, mailbox: str) -> MoveHow:
        """Move one message: UID MOVE (RFC 6851), else COPY + \\Deleted + UID EXPUNGE of that
        UID (RFC 4315). Without UIDPLUS the copy stays flagged \\Deleted: a plain EXPUNGE
        would also remove messages someone else flagged, and this session touches no others.
        """
        target = mailbox_arg(mailbox)
        if self.has("MOVE"):
            await self._ok(self._client.uid("move", str(uid), target), f"UID MOVE {uid}")
            return "moved"
        await self._ok(self._client.uid("copy", str(uid), target), f"UID COPY {uid}")
        store = self._client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
        await self._ok(store, f"UID STORE {uid}")
        if not self.has("UIDPLUS"):
            return "flagged"
        await self._ok(self._client.uid("expunge", str(uid)), f"UID EXPUNGE {uid}")
        return "expunged"

    async def idle(self, timeout: float, stop: asyncio.Event) -> bool:
        """IDLE (RFC 2177) in the selected mailbox until the server reports new mail (True),
        or `timeout` passes or `stop` is set (False). Raises ImapError if the session breaks.
        Servers drop an IDLE after 30 minutes (RFC 2177 3): keep `timeout` below that.

        True at once when new mail was announced since the last SELECT, up to the moment
        the server acknowledged the IDLE: from then on it pushes what arrives, and anything
        before is in the count (new_mail_announced), so no arrival waits for `timeout`."""
        queue = self._client.protocol.idle_queue
        while not queue.empty():  # pushes left over from an earlier IDLE
            queue.get_nowait()
        idle = await self._call(self._client.idle_start(timeout=timeout), "IDLE")
        try:
            if self.new_mail_announced():
                return True
            return await self._wait_push(timeout, stop)
        finally:
            if self._closed.is_set():
                idle.cancel()
                raise ImapError("IDLE: the server closed the connection")
            self._client.idle_done()
            await self._call(asyncio.wait_for(idle, self._timeout), "IDLE DONE")

    async def _wait_push(self, timeout: float, stop: asyncio.Event) -> bool:
        while self._client.has_pending_idle():
            push = asyncio.ensure_future(self._client.wait_server_push(timeout + self._timeout))
            ended = asyncio.ensure_future(stop.wait())
            closed = asyncio.ensure_future(self._closed.wait())
            try:
                await asyncio.wait({push, ended, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (push, ended, closed):
                    task.cancel()
            if not push.done() or push.cancelled() or push.exception() is not None:
                return False  # stopped, closed, or no push in time
            lines = push.result()
            if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                return False  # idle_start's timer: the timeout passed
            if any(_is_exists(bytes(line)) for line in lines):
                return True
        return False

    async def close(self) -> None:
        """LOGOUT, then drop the connection whatever happened; never raises."""
        try:
            await asyncio.wait_for(self._client.logout(), self._timeout)
        except _ERRORS:
            pass
        finally:
            await self._drop()

    async def _delimiter(self) -> str | None:
        response = await self._ok(self._client.list('""', '""'), "LIST")
        for line in _lines(response):
            match = _LIST.match(line)
            if match and match.group(2):
                return re.sub(r"\\(.)", r"\1", match.group(2).decode("ascii", "replace"))
        return None

    async def _ok(self, call: Awaitable[Any], what: str) -> Any:
        response = await self._call(call, what)
        if response.result != "OK":
            raise ImapError(f"{what} refused: {_text(response)}")
        return response

    async def _call(self, call: Awaitable[Any], what: str) -> Any:
        try:
            return await call
        except _ERRORS as exc:
            raise ImapError(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def _drop(self) -> None:
        """Close the connection and wait (briefly) until it is gone: a TLS close is a
        handshake, and a transport left to the garbage collector leaks its socket."""
        task = getattr(self._client, "_client_task", None)
        if task is not None and not task.done():
            task.cancel()
        transport = getattr(self._client.protocol, "transport", None)
        if transport is None or self._closed.is_set():
            return
        transport.close()
        try:
            await asyncio.wait_for(self._closed.wait(), 2.0)
        except TimeoutError:
            transport.abort()


def _is_exists(line: bytes) -> bool:
    match = _SIZE_UPDATE.match(line)
    return match is not None and match.group(2).upper() == b"EXISTS"


def _size_update(count: int, line: bytes) -> tuple[int, bool]:
    """The message count after one untagged line, and whether the line said it grew."""
    match = _SIZE_UPDATE.match(line)
    if match is None:
        return count, False
    if match.group(2).upper() == b"EXPUNGE":
        return max(0, count - 1), False
    number = int(match.group(1))
    return number, number > count


def imap_date(at: float) -> str:
    """An IMAP search date (RFC 3501 9, date-text: `2-Jan-2024`), in UTC."""
    day = datetime.fromtimestamp(at, tz=UTC)
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


def _literal(response: Any) -> bytes | None:
    for line in response.lines:
        if isinstance(line, bytearray):  # aioimaplib hands literals over as bytearray
            return bytes(line)
    return None


def _lines(response: Any) -> list[bytes]:
    return [bytes(line) for line in response.lines if isinstance(line, bytes | bytearray)]


def _text(response: Any) -> str:
    lines = _lines(response)
    return lines[-1].decode("utf-8", "replace") if lines else str(response.result)
