"""`relayd test-upstream` against provider-like servers on loopback, with TLS from a test CA.

The CLI runs in a worker thread (it runs its own event loop, as from a terminal) while the
test's loop serves the fake provider; what it prints is what a user would read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import socket
import ssl
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from relayd.cli.main import main
from relayd.clock import SystemClock
from relayd.config.model import Config, load
from relayd.delivery.session import SmtpSession
from relayd.errors import UpstreamUnavailable
from relayd.policy.hints import Problem, hint_for
from relayd.tools.probe import MASK, Step, probe_upstream
from relayd.types import Outgoing
from tests.support.fake_provider import FakeProvider, Login, Mode
from tests.support.tls import PrivateCA

SECRET = "Xq7-probe-DISTINCTIVE-secret-4Lm"
USER = "practice@gmail.com"
STARTTLS_STEPS = ["resolve", "connect", "greeting", "tls", "ehlo", "auth"]
TLS_STEPS = ["resolve", "connect", "tls", "greeting", "ehlo", "auth"]


@pytest.fixture
def ca() -> PrivateCA:
    return PrivateCA()


def write_config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "practice.secret").write_text(SECRET + "\n", encoding="utf-8")
    path = tmp_path / "relayd.toml"
    head = '[server]\nhostname = "relay.test"\n\n[upstreams.practice]\n'
    path.write_text(head + textwrap.dedent(body).strip() + "\n", encoding="utf-8")
    return path


def account(
    tmp_path: Path,
    ca: PrivateCA,
    port: int,
    provider: str = "gmail",
    extra: str = "",
    connect_timeout: str = "2s",
) -> Path:
    """An upstream like a user's, pointed at the fake on 127.0.0.1 and trusting the test CA."""
    auth = 'auth = "password"' if provider == "microsoft365" else ""
    body = f"""
        provider = "{provider}"
        host = "127.0.0.1"
        port = {port}
        tls_ca_file = "{ca.save(tmp_path / "ca")}"
        username = "{USER}"
        password_file = "practice.secret"
        connect_timeout = "{connect_timeout}"
        timeout = "5s"
        {auth}
        {extra}
    """
    return write_config(tmp_path, body)


def upstream_of(path: Path) -> Config:
    return load(path, environ={})


async def probe(path: Path) -> list[Step]:
    return await probe_upstream(
        upstream_of(path).upstreams["practice"], "relay.test", SystemClock()
    )


def _run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code
    assert isinstance(code, int)
    return code, out.getvalue(), err.getvalue()


async def cli(path: Path, *args: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(_run_cli, ["test-upstream", "practice", *args, "-c", str(path)])


def flat(text: str) -> str:
    """Whitespace-normalised, so wrapped hints compare with the table's text."""
    return " ".join(text.split())


def free_port() -> int:
    """A loopback port nothing listens on (bound once, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- an account that can send -------------------------------------------------------------


async def test_gmail_like_starttls_account_can_send(tmp_path: Path, ca: PrivateCA) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        code, out, err = await cli(account(tmp_path, ca, fake.port))

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (
        f"upstream practice: provider gmail, 127.0.0.1 port {fake.port}, security starttls, "
        f"auth password as {USER}"
    )
    assert "  ok      resolve   127.0.0.1 -> 127.0.0.1" in lines
    assert f"  ok      connect   connected to 127.0.0.1:{fake.port}" in lines
    assert "  ok      greeting  220 smtp.fake-provider.test" in out
    assert "verified" in out
    assert "  ok      ehlo      250 smtp.fake-provider.test\n" in out
    assert "AUTH LOGIN PLAIN" in out  # the extensions offered after STARTTLS
    assert f"  ok      auth      235 2.7.0 Authentication successful (logged in as {USER})" in lines
    assert lines[-1] == "result: ok: practice can send"
    assert fake.logins == [Login("PLAIN", USER, SECRET)]
    assert fake.messages == []  # a probe sends nothing


async def test_yahoo_like_implicit_tls_account_can_send(tmp_path: Path, ca: PrivateCA) -> None:
    async with FakeProvider("tls", ca.server_context()) as fake:
        steps = await probe(account(tmp_path, ca, fake.port, provider="yahoo"))

    assert [step.name for step in steps] == TLS_STEPS
    assert all(step.ok for step in steps)
    tls = steps[2]
    assert "TLSv1.3" in tls.detail
    assert "issued by relayd test CA, verified" in tls.detail
    assert fake.logins == [Login("PLAIN", USER, SECRET)]


async def test_an_upstream_without_auth_is_checked_up_to_ehlo(
    tmp_path: Path, ca: PrivateCA
) -> None:
    async with FakeProvider("tls", ca.server_context()) as fake:
        path = account(tmp_path, ca, fake.port, provider="generic", extra='security = "tls"')
        text = path.read_text().replace(f'username = "{USER}"', 'auth = "none"')
        path.write_text(text.replace('password_file = "practice.secret"', ""))
        code, out, _ = await cli(path)

    assert code == 0
    assert "  ok      ehlo" in out
    assert "  ok      auth" not in out
    assert fake.logins == []


# -- the provider refuses the login -------------------------------------------------------

AUTH_ERRORS = [
    (
        "gmail",
        "535 5.7.8 Username and Password not accepted. For more information, go to "
        "https://support.google.com/mail/?p=BadCredentials",
        "https://myaccount.google.com/apppasswords",
    ),
    (
        "gmail",
        "534 5.7.9 Application-specific password required. Learn more at "
        "https://support.google.com/mail/?p=InvalidSecondFactor",
        "turn on 2-Step Verification",
    ),
    (
        "gmail",
        "534 5.7.14 <https://accounts.google.com/signin/continue?sarp=1> Please log in via "
        "your web browser and then try again.",
        "sign in to the account in a web browser",
    ),
    (
        "microsoft365",
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
        "Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
        "SMTP AUTH is disabled for the tenant or the mailbox",
    ),
    (
        "microsoft365",
        "535 5.7.3 Authentication unsuccessful [LO2P265CA0123.GBRP265.PROD.OUTLOOK.COM]",
        "username is the mailbox's full address",
    ),
    (
        "microsoft365",
        "550 5.7.30 Basic authentication is not supported for Client Submission.",
        'OAuth2 (auth = "xoauth2";',
    ),
    (
        "microsoft365",
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
        "asks Microsoft support to release the tenant",
    ),
    (
        "microsoft365",
        "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
        "'Send As' permission",
    ),
]


@pytest.mark.parametrize(
    ("provider", "reply", "advice"),
    AUTH_ERRORS,
    ids=[f"{provider}-{reply.split()[1]}" for provider, reply, _ in AUTH_ERRORS],
)
async def test_each_refused_login_prints_the_exact_reply_and_what_to_do(
    tmp_path: Path, ca: PrivateCA, provider: str, reply: str, advice: str
) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.auth_reply = reply
        code, out, _ = await cli(account(tmp_path, ca, fake.port, provider=provider))

    assert code == 1
    assert f"  FAILED  auth      {reply}\n" in out
    assert "                    what to do: " in out
    assert advice in flat(out)
    assert out.splitlines()[-1] == "result: FAILED: practice cannot send"
    assert fake.logins[0] == Login("PLAIN", USER, SECRET)


# -- transport problems -------------------------------------------------------------------


async def test_starttls_not_offered_fails_before_any_password_is_sent(
    tmp_path: Path, ca: PrivateCA
) -> None:
    async with FakeProvider("starttls", tls_context=None) as fake:
        code, out, _ = await cli(account(tmp_path, ca, fake.port))
        steps = await probe(account(tmp_path, ca, fake.port))

    assert code == 1
    assert [step.name for step in steps] == ["resolve", "connect", "greeting", "tls"]
    tls = steps[-1]
    assert not tls.ok
    assert tls.detail.startswith("STARTTLS is not offered; the server's EHLO reply:\n250 ")
    assert tls.hint == hint_for("gmail", None, Problem.STARTTLS_NOT_OFFERED)
    assert "  FAILED  tls       STARTTLS is not offered" in out
    assert "did not offer STARTTLS, so relayd will not send the password" in flat(out)
    assert fake.logins == []


async def test_connection_refused(tmp_path: Path, ca: PrivateCA) -> None:
    port = free_port()
    code, out, _ = await cli(account(tmp_path, ca, port))

    assert code == 1
    assert f"  FAILED  connect   127.0.0.1:{port}: connection refused\n" in out
    assert "A firewall here, on the network or at the hosting provider" in flat(out)
    assert " greeting " not in out  # the checks stop at the first failure


async def test_a_host_that_does_not_resolve(tmp_path: Path, ca: PrivateCA) -> None:
    path = account(tmp_path, ca, 587)
    path.write_text(path.read_text().replace('"127.0.0.1"', '"relayd-test.invalid"'))
    steps = await probe(path)

    assert [(step.name, step.ok) for step in steps] == [("resolve", False)]
    assert steps[0].detail.startswith("relayd-test.invalid: ")
    assert steps[0].hint == hint_for("gmail", None, Problem.RESOLVE)


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_a_certificate_from_an_untrusted_ca_fails_with_the_certificate_hint(
    tmp_path: Path, ca: PrivateCA, mode: str
) -> None:
    stranger = PrivateCA("someone else's CA")
    async with FakeProvider(mode, stranger.server_context()) as fake:  # type: ignore[arg-type]
        provider = "gmail" if mode == "starttls" else "yahoo"
        code, out, _ = await cli(account(tmp_path, ca, fake.port, provider=provider))

    assert code == 1
    assert "  FAILED  tls       certificate not trusted: unable to get local issuer" in out
    assert "The server's certificate could not be verified" in flat(out)
    assert "set tls_ca_file" in flat(out)
    assert fake.logins == []


async def test_a_certificate_for_another_name_fails(tmp_path: Path, ca: PrivateCA) -> None:
    async with FakeProvider("starttls", ca.server_context("smtp.other.test")) as fake:
        steps = await probe(account(tmp_path, ca, fake.port))

    tls = steps[-1]
    assert (tls.name, tls.ok) == ("tls", False)
    assert "certificate not trusted" in tls.detail
    assert "127.0.0.1" in tls.detail  # "IP address mismatch, ... not valid for '127.0.0.1'"
    assert tls.hint == hint_for("gmail", None, Problem.CERTIFICATE)


async def test_a_tls_ca_file_that_is_no_certificate(tmp_path: Path, ca: PrivateCA) -> None:
    path = account(tmp_path, ca, free_port())
    next(tmp_path.glob("ca/*.pem")).write_text("not a certificate\n")
    steps = await probe(path)

    assert [(step.name, step.ok) for step in steps] == [("tls", False)]
    assert steps[0].detail.startswith("cannot load tls_ca_file: ")
    assert steps[0].hint == hint_for("gmail", None, Problem.CERTIFICATE)


async def test_starttls_on_an_implicit_tls_port_gets_no_greeting(
    tmp_path: Path, ca: PrivateCA
) -> None:
    async with FakeProvider("tls", ca.server_context()) as fake:
        steps = await probe(account(tmp_path, ca, fake.port, connect_timeout="1s"))

    greeting = steps[-1]
    assert (greeting.name, greeting.ok) == ("greeting", False)
    assert greeting.detail == "connected, but the server sent no greeting in 1s"
    assert greeting.hint == hint_for("gmail", None, Problem.NO_GREETING)


async def test_implicit_tls_on_a_plaintext_port(tmp_path: Path, ca: PrivateCA) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        steps = await probe(account(tmp_path, ca, fake.port, provider="yahoo"))

    tls = steps[-1]
    assert (tls.name, tls.ok) == ("tls", False)
    assert tls.detail.startswith("TLS failed: ")
    assert tls.hint == hint_for("yahoo", None, Problem.PLAINTEXT_PORT)


async def test_no_auth_offered_on_the_connection(tmp_path: Path, ca: PrivateCA) -> None:
    async with FakeProvider("none") as fake:  # offers AUTH only over TLS, and has none
        extra = 'provider = "generic"\nsecurity = "none"\nallow_plaintext_auth = true'
        path = account(tmp_path, ca, fake.port, extra=extra)
        path.write_text(path.read_text().replace('provider = "gmail"\n', ""))
        steps = await probe(path)

    assert [step.name for step in steps] == ["resolve", "connect", "greeting", "ehlo", "auth"]
    auth = steps[-1]
    assert not auth.ok
    assert auth.detail == "the server's EHLO reply offers no AUTH"
    assert auth.hint == hint_for("generic", None, Problem.AUTH_NOT_OFFERED)
    assert fake.logins == []


# -- output ---------------------------------------------------------------------------------


async def test_the_secret_is_never_printed_even_when_the_server_echoes_it(
    tmp_path: Path, ca: PrivateCA
) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.auth_reply = "535 5.7.8 Username and Password not accepted."
        fake.echo_secret = True
        path = account(tmp_path, ca, fake.port)
        text = await cli(path)
        as_json = await cli(path, "--json")

    assert fake.logins[0].password == SECRET  # it was sent, and echoed back
    plain = base64.b64encode(f"\0{USER}\0{SECRET}".encode()).decode()
    for code, out, err in (text, as_json):
        assert code == 1
        for form in (SECRET, base64.b64encode(SECRET.encode()).decode(), plain):
            assert form not in out + err
        assert f"(you sent {MASK} {MASK})" in out


async def test_json_output(tmp_path: Path, ca: PrivateCA) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        fake.auth_reply = "535 5.7.8 Username and Password not accepted."
        code, out, _ = await cli(account(tmp_path, ca, fake.port), "--json")

    assert code == 1
    document = json.loads(out)
    assert {key: document[key] for key in ("upstream", "provider", "host", "port", "ok")} == {
        "upstream": "practice",
        "provider": "gmail",
        "host": "127.0.0.1",
        "port": fake.port,
        "ok": False,
    }
    assert (document["security"], document["auth"], document["username"]) == (
        "starttls",
        "password",
        USER,
    )
    assert [step["name"] for step in document["steps"]] == STARTTLS_STEPS
    auth = document["steps"][-1]
    assert auth["ok"] is False
    assert auth["detail"] == "535 5.7.8 Username and Password not accepted."
    assert "app password" in auth["hint"]
    assert all(set(step) == {"name", "ok", "detail", "hint"} for step in document["steps"])


async def test_an_unknown_upstream_name_lists_the_known_ones(tmp_path: Path, ca: PrivateCA) -> None:
    path = account(tmp_path, ca, 587)
    code, out, err = await asyncio.to_thread(
        _run_cli, ["test-upstream", "pracitce", "-c", str(path)]
    )
    assert (code, out) == (2, "")
    assert f'relayd: no upstream "pracitce" in {path} (known: practice)' in err


async def test_a_config_error_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'provider = "microsoft365"\nusername = "a@b.example"')
    code, _, err = await cli(path)
    assert code == 2
    assert 'upstreams.practice.client_id: auth = "xoauth2" needs client_id' in err


# -- the directory upstream ---------------------------------------------------------------


async def test_directory_upstream_checks_the_path_is_writable(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'provider = "directory"\npath = "outbox"')
    (tmp_path / "outbox").mkdir()
    code, out, _ = await cli(path)
    assert code == 0
    assert f"  ok      directory {tmp_path / 'outbox'} is writable" in out

    (tmp_path / "outbox").rmdir()
    (tmp_path / "outbox").write_text("a file, not a directory")
    code, out, _ = await cli(path)
    assert code == 1
    assert f"  FAILED  directory {tmp_path / 'outbox'} is not a directory" in out
    assert "make it writable by the user relayd runs as" in flat(out)


# -- delivery trusts the same CA ------------------------------------------------------------


async def test_delivery_uses_tls_ca_file_too(tmp_path: Path, ca: PrivateCA) -> None:
    async with FakeProvider("starttls", ca.server_context()) as fake:
        upstream = upstream_of(account(tmp_path, ca, fake.port)).upstreams["practice"]
        session = SmtpSession(upstream, "relay.test")
        try:
            result = await session.send(
                Outgoing(USER, ("to@example.com",), b"Subject: hi\r\n\r\nhello\r\n", "m1")
            )
        finally:
            await session.close()

        stranger = PrivateCA("someone else's CA")
        other = upstream.model_copy(update={"tls_ca_file": stranger.save(tmp_path / "other")})
        refused = SmtpSession(other, "relay.test")
        with pytest.raises(UpstreamUnavailable, match="certificate verify failed"):
            await refused.send(Outgoing(USER, ("to@example.com",), b"x\r\n", "m2"))
        await refused.close()

    assert result.replies["to@example.com"].code == 250
    assert len(fake.messages) == 1


@pytest.mark.parametrize(("mode", "contexts"), [("starttls", 1), ("none", 0)])
async def test_a_session_loads_the_certificates_once_and_only_for_tls(
    tmp_path: Path, ca: PrivateCA, monkeypatch: pytest.MonkeyPatch, mode: Mode, contexts: int
) -> None:
    """Loading the CA certificates costs ~17 ms of CPU: a session that reconnects for every
    message must not pay it each time, and a plaintext upstream not at all."""
    made: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(create(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    async with FakeProvider(mode, ca.server_context() if mode != "none" else None) as fake:
        upstream = upstream_of(account(tmp_path, ca, fake.port)).upstreams["practice"]
        plain = {"security": "none", "auth": "none"}  # no AUTH over plaintext
        upstream = upstream.model_copy(update=plain if mode == "none" else {})
        monkeypatch.setattr("relayd.delivery.session.ssl.create_default_context", counting)
        session = SmtpSession(upstream, "relay.test")
        for name in ("m1", "m2", "m3"):
            await session.send(
                Outgoing(USER, ("to@example.com",), b"Subject: hi\r\n\r\nhi\r\n", name)
            )
            await session.close()  # the next message opens a new connection
    assert len(fake.messages) == 3
    assert len(made) == contexts
