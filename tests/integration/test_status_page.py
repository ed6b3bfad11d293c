"""The status page of an in-process daemon over HTTP: what it shows, its security headers,
who may press its buttons (token, session, CSRF, rate limits), the queue actions, and its
history across a restart. tests/browser/ drives the same page in Chromium."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from relayd.config.model import Config
from relayd.errors import ConfigError
from relayd.types import RecipientState, UpstreamHold
from relayd.web.auth import CSRF_COOKIE, SESSION_COOKIE
from tests.conftest import ConfigFactory, running
from tests.integration.test_admin import admin_port, generic, store_of
from tests.support.client import send
from tests.support.fake_upstream import FakeUpstream
from tests.support.http import request
from tests.support.waits import until

TOKEN = "page-token-DISTINCTIVE-7f3a"


def page_config(
    make_config: ConfigFactory, tmp_path: Path, port: int, token: bool = True
) -> Config:
    (tmp_path / "admin.token").write_text(TOKEN + "\n")
    admin = '[admin]\nlisten = "127.0.0.1:0"\n'
    if token:
        admin += 'token_file = "admin.token"\n'
    return make_config(generic(port) + 'rate_limits = ["200/hour"]\n', extra=admin)


def cookie(fields: dict[str, list[str]], name: str) -> str:
    for value in fields.get("set-cookie", []):
        if value.startswith(f"{name}="):
            return value.split(";", 1)[0]
    raise AssertionError(f"no {name} cookie in {fields.get('set-cookie')}")


def csrf_of(body: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', body)
    assert match, "no CSRF field in the form"
    return match.group(1)


async def sign_in(port: int) -> tuple[str, str]:
    """(the Cookie header of a signed-in browser, its CSRF form token)."""
    status, fields, body = await request(port, "GET", "/login")
    assert status == 200
    csrf_cookie = cookie(fields, CSRF_COOKIE)
    form = {"csrf": csrf_of(body), "token": TOKEN, "next": "/"}
    status, fields, _ = await request(port, "POST", "/login", form, {"Cookie": csrf_cookie})
    assert status == 303 and fields["location"] == ["/"]
    jar = f"{csrf_cookie}; {cookie(fields, SESSION_COOKIE)}"
    status, _, body = await request(port, "GET", "/", headers={"Cookie": jar})
    return jar, csrf_of(body)


async def test_the_page_shows_upstreams_with_security_headers(
    make_config: ConfigFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = page_config(make_config, tmp_path, upstream.port)
    async with running(config) as daemon:
        port = admin_port(daemon)
        await send(daemon.addresses[0][1], rcpts=["a@example.net"])
        await until(lambda: _delivered(daemon))
        status, fields, body = await request(port, "GET", "/")
        assert status == 200 and fields["content-type"] == ["text/html; charset=utf-8"]
        csp = fields["content-security-policy"][0]
        assert "default-src 'none'" in csp and "script" not in csp
        assert "frame-ancestors 'none'" in csp and fields["x-frame-options"] == ["DENY"]
        assert fields["cache-control"] == ["no-store"]
        assert "<script" not in body and ' style="' not in body
        assert '<meta http-equiv="refresh" content="5">' in body
        _, _, still = await request(port, "GET", "/?refresh=off")  # for keyboard and readers
        assert "http-equiv" not in still and 'href="/">refresh every few seconds' in still
        assert 'data-state="flowing"' in body
        assert "1 / 200 this hour, resets" in body
        assert 'value="1"' in body and 'max="200"' in body  # the <meter> bar
        assert "1 delivered" in body
        assert TOKEN not in body
        status, fields, css = await request(port, "GET", "/style.css")
        assert status == 200 and ".card" in css


async def _delivered(daemon: object) -> bool:
    counts = await store_of(daemon).counts()  # type: ignore[arg-type]
    return counts[RecipientState.DELIVERED] == 1


async def test_buttons_need_the_token_and_the_forms_csrf(
    make_config: ConfigFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = page_config(make_config, tmp_path, upstream.port)
    async with running(config) as daemon:
        port = admin_port(daemon)
        status, _, body = await request(port, "POST", "/upstreams/main/test", {})
        assert status == 401 and "admin token" in body
        bearer = {"Authorization": "Bearer wrong"}
        assert (await request(port, "POST", "/upstreams/main/test", {}, bearer))[0] == 401

        status, fields, body = await request(port, "GET", "/login")
        form = {"csrf": csrf_of(body), "token": "not the token"}
        jar = cookie(fields, CSRF_COOKIE)
        status, _, body = await request(port, "POST", "/login", form, {"Cookie": jar})
        assert status == 401 and "not the admin token" in body

        jar, csrf = await sign_in(port)
        # A form from elsewhere has no valid CSRF token: refused, though the cookie is sent.
        status, _, body = await request(
            port, "POST", "/upstreams/main/test", {"csrf": "0" * 64}, {"Cookie": jar}
        )
        assert status == 403 and "Form expired" in body
        status, _, body = await request(
            port, "POST", "/upstreams/main/test", {"csrf": csrf}, {"Cookie": jar}
        )
        assert status == 200 and "Every check passed" in body
        # Rate-limited per upstream: a provider counts failed logins.
        status, _, body = await request(
            port, "POST", "/upstreams/main/test", {"csrf": csrf}, {"Cookie": jar}
        )
        assert status == 429 and "try again in" in body

        status, fields, _ = await request(port, "POST", "/logout", {"csrf": csrf}, {"Cookie": jar})
        assert status == 303
        status, _, _ = await request(port, "POST", "/send-test", {"csrf": csrf}, {"Cookie": jar})
        assert status == 401  # the session ended


async def test_send_test_and_queue_actions_with_a_bearer_token(
    make_config: ConfigFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = page_config(make_config, tmp_path, upstream.port)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with running(config) as daemon:
        port = admin_port(daemon)
        status, _, body = await request(
            port, "POST", "/send-test", {"to": "ops@example.net"}, bearer
        )
        assert status == 200 and "delivered:" in body, body
        queue_id = re.search(r"follow message (\S+)</a>", body)
        assert queue_id is not None
        assert b"relayd test message" in upstream.received[-1].data

        store = store_of(daemon)
        await store.hold_upstream(UpstreamHold("main", time.time() + 3600, "421 4.7.0 slow down"))
        await send(daemon.addresses[0][1], rcpts=["b@example.net"])
        views = await store.list_messages(state=RecipientState.QUEUED)
        assert len(views) == 1
        qid = views[0].queue_id
        status, _, body = await request(port, "GET", "/queue?state=queued&sender=app@*")
        assert status == 200 and qid in body and "app@example.org" in body
        status, _, body = await request(port, "GET", f"/queue/{qid}")
        assert status == 200 and "b@example.net" in body and "Message-ID" in body
        status, _, body = await request(port, "GET", f"/queue/{qid}/delete")
        assert status == 200 and "Delete this message?" in body  # the confirmation

        # On loopback anyone may read; changing the queue needs the token all the same.
        assert (await request(port, "POST", f"/queue/{qid}/hold", {}))[0] == 401
        status, fields, _ = await request(port, "POST", f"/queue/{qid}/hold", {}, bearer)
        assert status == 303 and fields["location"] == [f"/queue/{qid}?done=held+1+recipient"]
        view = await store.show(qid)
        assert view is not None and view.recipients[0].state is RecipientState.HELD
        status, fields, _ = await request(port, "POST", f"/queue/{qid}/delete", {}, bearer)
        assert status == 303 and await store.show(qid) is None


async def test_without_a_token_the_page_is_read_only(
    make_config: ConfigFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = page_config(make_config, tmp_path, upstream.port, token=False)
    async with running(config) as daemon:
        port = admin_port(daemon)
        status, _, body = await request(port, "GET", "/")
        assert status == 200 and "Read-only" in body and "Test credentials" not in body
        status, _, body = await request(port, "POST", "/send-test", {"to": "a@example.net"})
        assert status == 403 and "token_file" in body


async def test_history_survives_a_restart(
    make_config: ConfigFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = page_config(make_config, tmp_path, upstream.port)
    async with running(config) as daemon:
        await send(daemon.addresses[0][1], rcpts=["a@example.net", "b@example.net"])
        await until(lambda: _all_delivered(daemon, 2))
        assert daemon.jobs is not None
        sample = await daemon.jobs.history.sample(time.time() + 60)
        assert (sample.accepted, sample.delivered) == (1, 2)
    async with running(config) as daemon:
        status, _, body = await request(admin_port(daemon), "GET", "/")
        assert status == 200
        assert "accepted: 1" in body and "delivered: 2" in body
        assert '<polyline class="line s-delivered"' in body


async def _all_delivered(daemon: object, count: int) -> bool:
    counts = await store_of(daemon).counts()  # type: ignore[arg-type]
    return counts[RecipientState.DELIVERED] == count


def test_an_admin_listen_off_loopback_needs_a_token(make_config: ConfigFactory) -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen.*not a loopback address.*token_file"):
        make_config(generic(25), extra='[admin]\nlisten = "0.0.0.0:9025"\n')


async def test_login_goes_back_only_to_a_path_of_this_page(
    make_config: ConfigFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """`next` comes from the query: a CR/LF in it must not become a header, and it must not
    send the browser to another site (//host, /\\host)."""
    config = page_config(make_config, tmp_path, upstream.port)
    async with running(config) as daemon:
        port = admin_port(daemon)
        for target in ("/%0d%0aSet-Cookie:%20x=1", "//evil.example/", "/\\evil.example/"):
            status, fields, body = await request(port, "GET", f"/login?next={target}")
            jar = cookie(fields, CSRF_COOKIE)
            form = {"csrf": csrf_of(body), "token": TOKEN}
            status, fields, _ = await request(
                port, "POST", f"/login?next={target}", form, {"Cookie": jar}
            )
            assert status == 303 and fields["location"] == ["/"], (target, fields)
            assert not any(c.startswith("x=") for c in fields["set-cookie"])
        form_next = {"csrf": csrf_of(body), "token": TOKEN, "next": "/queue?state=held"}
        status, fields, _ = await request(port, "POST", "/login", form_next, {"Cookie": jar})
        assert fields["location"] == ["/queue?state=held"]


async def test_a_reload_with_a_new_token_ends_the_old_tokens_sessions(
    make_config: ConfigFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = page_config(make_config, tmp_path, upstream.port)
    async with running(config) as daemon:
        port = admin_port(daemon)
        jar, csrf = await sign_in(port)
        (tmp_path / "admin.token").write_text("the-new-token\n")
        await daemon.reload()
        status, _, _ = await request(port, "POST", "/send-test", {"csrf": csrf}, {"Cookie": jar})
        assert status == 401
        old = {"Authorization": f"Bearer {TOKEN}"}
        assert (await request(port, "POST", "/send-test", {}, old))[0] == 401
        new = {"Authorization": "Bearer the-new-token"}
        status, _, body = await request(port, "POST", "/send-test", {"to": "x@example.net"}, new)
        assert status == 200, body
