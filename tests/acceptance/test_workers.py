"""`server.workers = 2`: two intake processes share the port and the queue; the main
process only delivers (and serves [admin]), and hears from the workers over a pipe."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.acceptance.process import DaemonProcess, Launcher, free_port, write_config
from tests.support.client import message, send
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow


def workers_config(tmp_path: Path, port: int, upstream_port: int, admin: int) -> Path:
    config = write_config(tmp_path, port=port, upstream_port=upstream_port)
    text = config.read_text().replace(
        'hostname = "relay.test"', 'hostname = "relay.test"\nworkers = 2'
    )
    config.write_text(text + f'\n[admin]\nlisten = "127.0.0.1:{admin}"\n')
    return config


def get(admin: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def accepted_metric(admin: int) -> float:
    _, body = get(admin, "/metrics")
    lines = body.decode().splitlines()
    prefix = 'relayd_messages_accepted_total{upstream="main"} '
    values = [float(line[len(prefix) :]) for line in lines if line.startswith(prefix)]
    return values[0] if values else 0.0


async def start_workers(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> tuple[DaemonProcess, list[int], int]:
    admin = free_port()
    config = workers_config(tmp_path, port, upstream.port, admin)
    daemon = await launch.start_ready(config, port)
    (started,) = await daemon.wait_event("intake_workers_started")
    return daemon, started["pids"], admin


async def test_two_intake_processes_share_the_port_and_every_message_is_delivered(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    daemon, pids, admin = await start_workers(tmp_path, launch, upstream, port)
    assert len(pids) == 2 and daemon.pid not in pids
    workers_started = await daemon.wait_event("intake_worker_started", count=2)
    for event in [*daemon.find("started"), *workers_started]:
        assert event["listen"] == [f"127.0.0.1:{port}"]
    # "started" (READY=1) comes only once both workers listen: /readyz says so at once.
    status, body = await asyncio.to_thread(get, admin, "/readyz")
    assert status == 200, body
    assert json.loads(body)["intake"] == {"ok": True, "listening": [f"127.0.0.1:{port}"]}

    async def sender(index: int) -> None:
        for number in range(10):  # one connection per message: the kernel spreads them
            await send(port, message(subject=f"w{index}-{number}"))

    await asyncio.gather(*(sender(index) for index in range(4)))
    got = await upstream.wait_for(40, timeout=30)
    subjects = {r.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for r in got}
    assert len(subjects) == 40
    # Both workers accepted mail and the main process none (a worker's events carry its pid).
    queued = await daemon.wait_event("queued", count=40)  # both processes' logs are flushed
    by_worker = {pid: [e for e in queued if e.get("intake_worker") == pid] for pid in pids}
    assert all(by_worker.values()), {pid: len(events) for pid, events in by_worker.items()}
    assert sum(map(len, by_worker.values())) == 40
    # The workers' accepted counts reach the main process's /metrics (within a second or so).
    deadline = time.monotonic() + 10
    while (count := await asyncio.to_thread(accepted_metric, admin)) < 40:
        assert time.monotonic() < deadline, f"/metrics counted {count} of 40 accepted"
        await asyncio.sleep(0.2)
    assert count == 40

    code, _ = await daemon.terminate()
    assert code == 0
    for pid in pids:  # the workers stopped with the daemon, which reaped them (no zombie)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_sighup_reaches_the_intake_workers(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    daemon, pids, _ = await start_workers(tmp_path, launch, upstream, port)
    config = tmp_path / "relayd.toml"
    config.write_text(config.read_text().replace("[queue]", "max_message_size = 2000\n\n[queue]"))
    daemon.send_signal(signal.SIGHUP)
    reloaded = await daemon.wait_event("config_reloaded", count=3)  # the main and two workers
    assert {e.get("intake_worker") for e in reloaded} == {None, *pids}
    for _ in range(6):  # new connections: whichever worker takes one applies the new limit
        with pytest.raises(smtplib.SMTPResponseException) as refused:  # at MAIL (SIZE=)
            await send(port, message(body="x" * 3000 + "\r\n"))
        assert refused.value.smtp_code == 552


async def test_a_sighup_while_the_workers_start_reaches_them_once_they_listen(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    """Until a worker's handler is installed SIGHUP would kill it (and fail the daemon): the
    main process holds the reload back and sends it when the worker says it is ready."""
    config = workers_config(tmp_path, port, upstream.port, free_port())
    daemon = launch.start(config, port)
    (started,) = await daemon.wait_event("intake_workers_started")
    daemon.send_signal(signal.SIGHUP)  # the workers are still starting (no "ready" yet)
    await daemon.wait_started()
    reloaded = await daemon.wait_event("config_reloaded", count=3)
    assert {e.get("intake_worker") for e in reloaded} == {None, *started["pids"]}
    assert not daemon.find("service_failed")


async def test_workers_stop_when_the_main_process_is_killed(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    daemon, pids, _ = await start_workers(tmp_path, launch, upstream, port)
    await daemon.kill()  # SIGKILL: the main process cannot stop its workers itself
    deadline = time.monotonic() + 10
    alive = list(pids)
    while alive:
        assert time.monotonic() < deadline, f"intake workers {alive} outlived the main process"
        await asyncio.sleep(0.1)
        alive = [pid for pid in alive if _running(pid)]
    assert len(daemon.find("intake_worker_orphaned")) == 2


def _running(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_worker_that_cannot_listen_fails_the_daemon_before_it_says_ready(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    taken = socket.socket()  # without SO_REUSEPORT: the workers cannot bind beside it
    taken.bind(("127.0.0.1", port))
    taken.listen()
    try:
        daemon = launch.start(workers_config(tmp_path, port, upstream.port, free_port()), port)
        assert await daemon.wait_exit(20) == 1
    finally:
        taken.close()
    assert daemon.find("service_failed", service="intake-workers")
    assert not daemon.find("started")  # no READY=1 either: it comes with this event


async def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    from tests.acceptance.process import arun_cli

    config = write_config(tmp_path, port=0, upstream_port=9)
    config.write_text(
        config.read_text().replace(
            'hostname = "relay.test"', 'hostname = "relay.test"\nworkers = 2'
        )
    )
    result = await arun_cli("run", "-c", str(config))
    assert result.returncode == 3
    assert "fixed ports" in result.stderr


async def test_workers_import_the_installed_relayd_not_one_in_the_working_directory(
    tmp_path: Path, launch: Launcher, upstream: FakeUpstream, port: int
) -> None:
    """The daemon started from a source checkout or a directory that happens to hold a
    `relayd` package: its intake processes (`python -m relayd`) must still run the installed
    code, as the main process (the entry-point script) does."""
    decoy = launch.directory / "relayd"
    decoy.mkdir()
    (decoy / "__init__.py").write_text('raise SystemExit("imported the decoy relayd")\n')
    daemon, pids, _ = await start_workers(tmp_path, launch, upstream, port)
    await daemon.wait_event("intake_worker_started", count=2)
    await send(port, message(subject="from a worker"))
    (got,) = await upstream.wait_for(1, timeout=10)
    assert b"Subject: from a worker" in got.data
    (queued,) = await daemon.wait_event("queued")
    assert queued["intake_worker"] in pids  # accepted by a worker, not the main process
    code, _ = await daemon.terminate()
    assert code == 0
