"""`relayd queue ...` on the store of a stopped daemon: list, show, hold, release, retry, delete."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.process import Launcher, arun_cli, write_config
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

REFUSAL = "452 4.2.2 Mailbox full"


class QueueTool:
    """`relayd queue ACTION ... -c CONFIG`, asserting exit 0 unless told otherwise."""

    def __init__(self, config: Path) -> None:
        self.config = config

    async def run(self, *args: str, expect: int = 0) -> str:
        result = await arun_cli("queue", *args, "-c", str(self.config))
        assert result.returncode == expect, (args, result.returncode, result.stderr)
        return result.stdout if expect == 0 else result.stderr

    async def json(self, *args: str) -> Any:
        return json.loads(await self.run(*args, "--json"))

    async def views(self, *args: str) -> dict[str, dict[str, Any]]:
        return {view["queue_id"]: view for view in await self.json("list", *args)}

    async def change(self, *args: str) -> int:
        result = await self.json(*args)
        assert result["action"] == args[0]
        affected: int = result["affected"]
        return affected

    async def states(self) -> dict[str, list[str]]:
        return {
            qid: [r["state"] for r in view["recipients"]]
            for qid, view in (await self.views()).items()
        }


async def test_queue_tool_on_a_stopped_daemons_store(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    upstream.script.rcpt_replies["someone@example.net"] = REFUSAL
    config = write_config(
        tmp_path, port=port, upstream_port=upstream.port, queue={"retry": '["1h"]'}
    )
    daemon = await launch.start_ready(config, port)
    for index in range(3):
        await send(port, message(subject=f"q{index}", extra=f"X-Marker: q{index}\r\n"))
    deferred = await daemon.wait_event("deferred", count=3)
    code, _ = await daemon.terminate()
    assert code == 0
    a, b, c = (event["queue_id"] for event in deferred)
    tool = QueueTool(config)

    # list: every message, its recipients' states and why they wait.
    views = await tool.views()
    assert set(views) == {a, b, c}
    for view in views.values():
        (rcpt,) = view["recipients"]
        assert rcpt["address"] == "someone@example.net"
        assert rcpt["state"] == "deferred"
        assert rcpt["attempts"] == 1
        assert rcpt["last_reply"] == REFUSAL
        assert rcpt["next_attempt_at"] > time.time() + 3000  # the 1h retry step
    text = await tool.run("list")
    assert all(qid in text for qid in (a, b, c)) and "deferred" in text and REFUSAL in text

    # show: one message.
    shown = await tool.json("show", a)
    assert {key: shown[key] for key in views[a]} == views[a]
    assert ["X-Marker", "q0"] in shown["headers"]
    assert a in await tool.run("show", a)

    # hold / release.
    assert await tool.change("hold", a) == 1
    assert await tool.states() == {a: ["held"], b: ["deferred"], c: ["deferred"]}
    assert set(await tool.views("--state", "held")) == {a}
    assert await tool.change("hold", a) == 0  # nothing pending left to hold
    assert await tool.change("release", a) == 1
    (released,) = (await tool.views())[a]["recipients"]
    assert released["state"] == "queued"
    assert released["next_attempt_at"] <= time.time()

    # retry: one message, then every pending one, due now.
    assert await tool.change("retry", b) == 1
    assert (await tool.views())[b]["recipients"][0]["next_attempt_at"] <= time.time()
    assert await tool.change("retry", "--all") == 3
    assert all(
        view["recipients"][0]["next_attempt_at"] <= time.time()
        for view in (await tool.views()).values()
    )

    # delete.
    assert await tool.change("delete", c) == 1
    assert set(await tool.views()) == {a, b}
    assert "no message" in await tool.run("show", c, expect=1)

    # The daemon sees what the tool did: a and b are due now (not in an hour); b is held.
    assert await tool.change("hold", b) == 1
    upstream.script.rcpt_replies.clear()
    again = await launch.start_ready(config, port)
    await again.wait_event("delivered", queue_id=a)
    code, _ = await again.terminate()
    assert code == 0
    assert [r.data.count(b"X-Marker: q0") for r in upstream.received] == [1]
    assert await tool.states() == {a: ["delivered"], b: ["held"]}


async def test_queue_tool_usage_errors(tmp_path: Path, upstream: FakeUpstream, port: int) -> None:
    config = write_config(tmp_path, port=port, upstream_port=upstream.port)
    tool = QueueTool(config)
    assert await tool.json("list") == []  # an empty (new) store
    assert "needs a queue ID" in await tool.run("show", expect=2)
    assert "needs a queue ID" in await tool.run("hold", expect=2)
    assert "no message" in await tool.run("show", "NOSUCHID", expect=1)
    assert "no message" in await tool.run("hold", "NOSUCHID", expect=1)
    assert "needs a queue ID, or --all" in await tool.run("retry", expect=2)


async def test_queue_delete_with_a_report_prints_only_json_with_json(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    """`queue delete ID --dsn --json` (issue 15): stdout is one JSON document; the
    `dsn_queued` log line goes to stderr, as every CLI command's logs do."""
    upstream.script.rcpt_replies["someone@example.net"] = REFUSAL
    config = write_config(
        tmp_path, port=port, upstream_port=upstream.port, queue={"retry": '["1h"]'}
    )
    daemon = await launch.start_ready(config, port)
    await send(port, message(subject="to delete"))
    (deferred,) = await daemon.wait_event("deferred")
    code, _ = await daemon.terminate()
    assert code == 0
    with config.open("a") as file:
        file.write('\n[bounces]\nmailbox = "bounces@example.org"\n')
    result = await arun_cli(
        "queue", "delete", deferred["queue_id"], "--dsn", "--json", "-c", str(config)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["affected"] == 1
    assert "dsn_queued" in result.stderr
