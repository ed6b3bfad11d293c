"""A private Dovecot for tests: a real IMAP server on a random loopback port.

Started as an ordinary process (`dovecot -F -c CONF`), never the system service: the config,
a passwd-file user, its Maildir, the run and state directories and the log all live in one
temp directory; imaps only, with a trustme certificate; nothing goes to syslog. Dovecot will
not run its login processes as root nor mail processes as UID 0, so as root the login
processes run as `dovenull` and internal ones as `dovecot` (both made by Debian's
dovecot-core) and mail as `nobody`; as another user everything runs as that user, unchrooted.

When Dovecot is not installed the test is skipped with the reason, except under CI=true,
where a missing service is a failure (.ci/run installs dovecot-imapd).

The helpers talk to the server with the stdlib's imaplib, a client independent of the code
under test, and EXAMINE (read-only) so that looking never changes a flag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relayd.bounces.poller import ImapSettings
from tests.support.tls import PrivateCA

USERNAME = "office@practice.example"
PASSWORD = "imap-test-secret"  # a fixture, not a secret
START_TIMEOUT = 15.0
_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


def require_dovecot() -> str:
    """The dovecot binary; skip the test without it, or fail under CI=true."""
    binary = dovecot_binary()
    if binary is not None:
        return binary
    reason = "Dovecot is not installed (apt-get install dovecot-imapd)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


@dataclass
class Message:
    uid: int
    flags: frozenset[str]
    message_id: str | None


@dataclass
class Dovecot:
    """A running private server and helpers to set up and inspect its one mailbox."""

    host: str
    port: int
    directory: Path
    config: Path
    ca_file: Path
    username: str = USERNAME
    password: str = PASSWORD

    def settings(self, **overrides: Any) -> ImapSettings:
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "tls_ca_file": str(self.ca_file),
            "poll_interval": 0.2,
            "timeout": 10.0,
        }
        values.update(overrides)
        return ImapSettings(**values)

    @contextlib.contextmanager
    def client(self) -> Iterator[imaplib.IMAP4_SSL]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        imap = imaplib.IMAP4_SSL(self.host, self.port, ssl_context=context, timeout=10)
        try:
            imap.login(self.username, self.password)
            yield imap
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()

    def append(
        self, raw: bytes, folder: str = "INBOX", flags: str = "", date: float | None = None
    ) -> int:
        """APPEND a message (LF line ends become CRLF) that arrived at `date` (default: now);
        returns its UID."""
        data = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
        arrived = imaplib.Time2Internaldate(date) if date is not None else None
        with self.client() as imap:
            status, answer = imap.append(folder, f"({flags})" if flags else None, arrived, data)
        assert status == "OK", answer
        match = re.search(rb"APPENDUID \d+ (\d+)", answer[0] or b"")
        assert match, answer
        return int(match.group(1))

    def messages(self, folder: str = "INBOX") -> list[Message]:
        """Every message in `folder` (EXAMINE: looking changes nothing), by UID; [] when
        the folder does not exist."""
        with self.client() as imap:
            status, _ = imap.select(folder, readonly=True)
            if status != "OK":
                return []
            status, data = imap.uid(
                "FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
            )
        assert status == "OK", data
        found = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            head, body = item
            uid, flags = _FETCH_UID.search(head), _FETCH_FLAGS.search(head)
            assert uid and flags, head
            match = re.search(rb"Message-ID:\s*(\S+)", body, re.IGNORECASE)
            found.append(
                Message(
                    uid=int(uid.group(1)),
                    flags=frozenset(flags.group(1).decode().split()) - {"\\Recent"},
                    message_id=match.group(1).decode() if match else None,
                )
            )
        return sorted(found, key=lambda m: m.uid)

    def folders(self) -> list[str]:
        with self.client() as imap:
            status, data = imap.list()
        assert status == "OK", data
        lines = [line for line in data if isinstance(line, bytes)]
        return [line.decode().rsplit(" ", 1)[-1].strip('"') for line in lines]

    def set_uidvalidity(self, value: int, folder: str = "INBOX") -> None:
        """Give `folder` a new UIDVALIDITY, as a server does after rebuilding its index."""
        doveadm = shutil.which("doveadm") or shutil.which("doveadm", path="/usr/bin:/usr/sbin")
        assert doveadm, "doveadm comes with dovecot-core"
        command = [doveadm, "-c", str(self.config), "mailbox", "update", "-u", self.username]
        subprocess.run(
            [*command, "--uid-validity", str(value), folder],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def log(self) -> str:
        path = self.directory / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def private_dovecot(capability: str | None = None) -> Iterator[Dovecot]:
    """Start a private Dovecot; stop it and remove its directory on exit.

    `capability` replaces the CAPABILITY list sent after login (imap_capability), e.g. to
    leave out MOVE or UIDPLUS and exercise a client's fallbacks.
    """
    binary = require_dovecot()
    # Not pytest's tmp_path: its parents are private to root, and Dovecot's unprivileged
    # processes must reach the passwd file and the Maildir.
    directory = Path(tempfile.mkdtemp(prefix="relayd-dovecot-"))
    try:
        directory.chmod(0o755)
        server = _prepare(directory, capability)
        process = _start(binary, server)
        for _ in range(2):  # another process took the free port first: try another
            if process is not None:
                break
            server = _new_port(server)
            process = _start(binary, server)
        if process is None:
            stdout = (directory / "stdout.log").read_text(errors="replace")
            pytest.fail(f"Dovecot did not start (port {server.port}):\n{stdout}\n{server.log()}")
        try:
            yield server
        finally:
            _stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _prepare(directory: Path, capability: str | None) -> Dovecot:
    ca = PrivateCA("relayd dovecot CA")
    ca_file = ca.save(directory / "ca")
    cert, key = ca.save_server_files(directory / "tls")
    home = directory / "home"
    home.mkdir()
    (directory / "passwd").write_text(f"{USERNAME}:{{PLAIN}}{PASSWORD}\n")
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        users = _ROOT_USERS.format(uid=nobody.pw_uid, gid=nobody.pw_gid, home=home)
    else:
        me = pwd.getpwuid(os.getuid())
        users = _USER_USERS.format(user=me.pw_name, uid=me.pw_uid, gid=me.pw_gid, home=home)
    port = _free_port()
    text = _CONFIG.format(dir=directory, cert=cert, key=key, port=port) + users
    if capability:
        text += f"imap_capability = {capability}\n"
    config = directory / "dovecot.conf"
    config.write_text(text)
    return Dovecot("127.0.0.1", port, directory, config, ca_file)


def _new_port(server: Dovecot) -> Dovecot:
    port = _free_port()
    text = server.config.read_text().replace(f"port = {server.port}\n", f"port = {port}\n")
    server.config.write_text(text)
    return dataclasses.replace(server, port=port)


def _start(binary: str, server: Dovecot) -> subprocess.Popen[bytes] | None:
    """The running master, or None when it exited (or never listened) within the timeout."""
    output = (server.directory / "stdout.log").open("wb")
    process = subprocess.Popen(
        [binary, "-F", "-c", str(server.config)],
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    output.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _greets(server):
            return process
        time.sleep(0.05)
    _stop(process)
    return None


def _greets(server: Dovecot) -> bool:
    """Whether an IMAP server answers on the port over TLS with our CA (and so is this
    Dovecot, not whatever else listens there)."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    try:
        imap = imaplib.IMAP4_SSL(server.host, server.port, ssl_context=context, timeout=1)
    except (OSError, imaplib.IMAP4.error):
        return False
    with contextlib.suppress(OSError, imaplib.IMAP4.error):
        imap.logout()
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the master (it stops its children), SIGKILL after 10 seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_ROOT_USERS = """\
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
first_valid_gid = 1
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/%u
}}
"""

_USER_USERS = """\
default_internal_user = {user}
default_login_user = {user}
first_valid_uid = {uid}
first_valid_gid = {gid}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/%u
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""

_CONFIG = textwrap.dedent(
    """\
    base_dir = {dir}/run
    state_dir = {dir}/state
    log_path = {dir}/dovecot.log
    info_log_path = {dir}/dovecot.log
    protocols = imap
    listen = 127.0.0.1
    ssl = required
    ssl_cert = <{cert}
    ssl_key = <{key}
    auth_mechanisms = plain
    auth_failure_delay = 0
    passdb {{
      driver = passwd-file
      args = scheme=PLAIN username_format=%u {dir}/passwd
    }}
    mail_location = maildir:~/Maildir
    namespace inbox {{
      inbox = yes
      separator = /
    }}
    service imap-login {{
      inet_listener imap {{
        port = 0
      }}
      inet_listener imaps {{
        address = 127.0.0.1
        port = {port}
        ssl = yes
      }}
    }}
    """
)
