"""No password, in any encoding relayd sends it, appears in anything relayd writes or prints:
a realistic run (check-config, a daemon whose AUTH fails then works against a server that
echoes secrets, transcripts, reload with a new password, the queue tool, sendmail, the admin
endpoint, test-upstream) and a grep over every byte of output."""

from __future__ import annotations

import asyncio
import base64
import signal
from pathlib import Path

import pytest

from tests.acceptance.process import Launcher, arun_cli, free_port, run_cli
from tests.support.client import message, send
from tests.support.fake_provider import FakeProvider
from tests.support.http import get
from tests.support.tls import PrivateCA

pytestmark = pytest.mark.slow

USERNAME = "relay@example.net"
PASSWORDS = ("Scan-Me-Pw-0f9e8d7c6b", "Rotated-Pw-1a2b3c4d5e")


def forms(password: str) -> list[str]:
    """The password as relayd sends it: plain, base64 (LOGIN), base64 of PLAIN's string."""
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{USERNAME}\0{password}".encode()).decode(),
        base64.b64encode(f"{USERNAME}\0{password}".encode()).decode()[:-4],
    ]


def config_text(directory: Path, port: int, admin: int, provider: int, ca: Path) -> str:
    return f"""\
[server]
listen = ["127.0.0.1:{port}"]
hostname = "relay.test"

[queue]
path = "{directory / "queue.db"}"
retry = ["1h"]
lease_time = "5s"
shutdown_timeout = "5s"

[log]
format = "json"
level = "debug"
transcript_dir = "{directory / "transcripts"}"

[admin]
listen = "127.0.0.1:{admin}"

[upstreams.main]
provider = "generic"
host = "127.0.0.1"
port = {provider}
security = "starttls"
tls_ca_file = "{ca}"
username = "{USERNAME}"
auth = "password"
password_file = "{directory / "main.secret"}"
timeout = "3s"
connect_timeout = "3s"
"""


async def test_no_secret_in_any_output(tmp_path: Path, launch: Launcher, port: int) -> None:
    ca = PrivateCA()
    secret = tmp_path / "main.secret"
    secret.write_text(PASSWORDS[0] + "\n")
    outputs: list[str] = []
    admin = free_port()
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.auth_reply = "535 5.7.8 Username and Password not accepted"
        fake.echo_secret = True
        config = tmp_path / "relayd.toml"
        config.write_text(config_text(tmp_path, port, admin, fake.port, ca.save(tmp_path / "ca")))

        async def cli(*args: str, stdin: str | None = None) -> None:
            if stdin is None:
                result = await arun_cli(*args, "-c", str(config))
            else:
                result = await asyncio.to_thread(
                    run_cli, *args, "-c", str(config), input_text=stdin
                )
            outputs.extend([result.stdout, result.stderr])

        await cli("check-config")
        await cli("test-upstream", "main")
        await cli("test-upstream", "main", "--json")
        daemon = await launch.start_ready(config, port)
        await send(port, message(subject="scan"))
        await daemon.wait_event("upstream_auth_failed")
        for args in (("list",), ("list", "--json"), ("summary",), ("summary", "--json")):
            await cli("queue", *args)
        queue_id = daemon.find("queued")[0]["queue_id"]
        await cli("queue", "show", queue_id)
        await cli("queue", "show", queue_id, "--json")
        for path in ("/readyz", "/metrics", "/healthz"):
            outputs.append((await get(admin, path))[2])

        # The operator fixes the password and reloads; then retries.
        secret.write_text(PASSWORDS[1] + "\n")
        fake.auth_reply = None
        daemon.send_signal(signal.SIGHUP)
        await daemon.wait_event("config_reloaded")
        await cli("queue", "retry", "--all")
        await cli("sendmail", "-t", stdin="To: second@example.net\nSubject: via sendmail\n\nx\n")
        await daemon.wait_event("delivered", count=2, timeout=15)
        await cli("queue", "list")
        code, _ = await daemon.terminate()
        assert code == 0
        assert {login.password for login in fake.logins} >= set(PASSWORDS)  # both were used

    outputs.append(daemon.log_text())
    transcript_files = list((tmp_path / "transcripts").iterdir())
    assert transcript_files
    outputs += [path.read_text() for path in transcript_files]
    everything = "\n".join(outputs)
    assert "upstream_auth_failed" in everything and "AUTH PLAIN ********" in everything
    for password in PASSWORDS:
        for form in forms(password):
            assert form not in everything, f"a form of a test password leaked: {form!r}"
