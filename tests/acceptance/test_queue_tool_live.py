"""The queue tool against the store of a RUNNING daemon: filters, show, summary, changes the
daemon acts on, and --dsn refused without a bounce mailbox rather than pretended."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from relayd.store.sqlite.store import SqliteStore
from relayd.types import NewMessage, QueueId, Recipient
from tests.acceptance.process import Launcher, arun_cli, write_config
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

REFUSAL = "452 4.2.2 Mailbox full"


async def tool(config: Path, *args: str, expect: int = 0) -> str:
    result = await arun_cli("queue", *args, "-c", str(config))
    assert result.returncode == expect, (args, result.stdout, result.stderr)
    return result.stdout if expect == 0 else result.stderr


async def tool_json(config: Path, *args: str) -> Any:
    return json.loads(await tool(config, *args, "--json"))


async def enqueue_old(path: Path, hours: float) -> QueueId:
    """A message that arrived `hours` ago, written by this process while the daemon runs."""
    at = time.time() - hours * 3600
    async with SqliteStore(path) as store:
        return await store.enqueue(
            NewMessage(
                mail_from="old@archive.example",
                recipients=(Recipient("full@example.net"),),
                body=b"Subject: old\r\nX-Old: yes\r\n\r\nold\r\n",
                upstream="main",
                message_id="<old@archive.example>",
                received_at=at,
            )
        )


async def test_queue_tool_while_the_daemon_runs(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    upstream.script.rcpt_replies["full@example.net"] = REFUSAL
    config = write_config(
        tmp_path, port=port, upstream_port=upstream.port, queue={"retry": '["1h"]'}
    )
    daemon = await launch.start_ready(config, port)
    await send(
        port, message(subject="one"), mail_from="app@one.example", rcpts=["full@example.net"]
    )
    await send(
        port,
        message(subject="two"),
        mail_from="app@two.example",
        rcpts=["full@example.net", "ok@example.net"],
    )
    old = await enqueue_old(tmp_path / "queue.db", hours=2)
    deferred = await daemon.wait_event("deferred", count=3)
    one, two = (e["queue_id"] for e in deferred if e["queue_id"] != old)

    # list filters: sender glob, upstream, state, age; text says how many.
    assert list(await tool_json(config, "list")) and len(await tool_json(config, "list")) == 3
    assert [
        v["queue_id"] for v in await tool_json(config, "list", "--sender", "*@ONE.example")
    ] == [one]
    assert [v["queue_id"] for v in await tool_json(config, "list", "--older-than", "1h")] == [old]
    assert [v["queue_id"] for v in await tool_json(config, "list", "--state", "delivered")] == [two]
    assert await tool_json(config, "list", "--upstream", "nope") == []
    assert "-- 3 messages" in await tool(config, "list")
    assert "not a duration" in await tool(config, "list", "--older-than", "soon", expect=2)

    # show: envelope, headers from the stored body, each recipient's state and wait.
    shown = await tool_json(config, "show", two)
    assert ["Subject", "two"] in shown["headers"] and shown["mail_from"] == "app@two.example"
    states = {r["address"]: r for r in shown["recipients"]}
    assert states["ok@example.net"]["state"] == "delivered"
    assert states["full@example.net"]["last_reply"] == REFUSAL
    assert states["full@example.net"]["wait_reason"].startswith("retry 1 at ")
    text = await tool(config, "show", two)
    assert "Subject: two" in text and "waiting for    retry 1 at" in text and "next attempt" in text

    # summary: depth per upstream and state, the oldest pending message.
    summary = await tool_json(config, "summary")
    assert summary["upstreams"]["main"]["deferred"] == 3
    assert summary["upstreams"]["main"]["delivered"] == 1
    assert summary["oldest_pending"]["queue_id"] == old
    assert 7000 < summary["oldest_pending"]["age_seconds"] < 7300
    table = await tool(config, "summary")
    assert "deferred" in table and f"oldest pending message: {old}, 2h" in table

    # Changes the running daemon acts on: retry now (a second attempt at once), hold,
    # release, delete; --dsn without a [bounces] mailbox is refused and deletes nothing.
    assert (await tool_json(config, "retry", one))["affected"] == 1
    await daemon.wait_event("deferred", count=4)
    assert (await tool_json(config, "show", one))["recipients"][0]["attempts"] == 2
    assert (await tool_json(config, "hold", one)) == {"action": "hold", "affected": 1}
    assert "held by operator" in await tool(config, "show", one)
    assert (await tool_json(config, "release", one))["affected"] == 1
    refusal = await tool(config, "delete", old, "--dsn", expect=2)
    assert "needs a [bounces] mailbox" in refusal and "nothing was deleted" in refusal
    assert (await tool_json(config, "delete", old))["affected"] == 1
    assert "no message" in await tool(config, "show", old, expect=1)
    upstream.script.rcpt_replies.clear()
    assert (await tool_json(config, "retry", "--all"))["affected"] >= 1
    await upstream.wait_for(3)
    code, _ = await daemon.terminate()
    assert code == 0
