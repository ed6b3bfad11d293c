#!/usr/bin/env python3
"""Delivery over a distant upstream: msg/s per connection when every round trip costs RTT.

Run by hand from the repository root (root, for smtp-sink's `-u postfix`):

    python bench/upstream_rtt.py                       # 20 ms RTT, 1 connection, 200 messages
    python bench/upstream_rtt.py --rtt-ms 50 --recipients 3
    RELAYD=/path/to/relayd python bench/upstream_rtt.py

A real provider is tens of milliseconds away, so a relay's delivery rate per connection is
set by how many round trips a message costs, not by CPU. This puts a delaying TCP proxy
(RTT/2 each way, order kept) between relayd and Postfix's smtp-sink (which offers
PIPELINING, as Gmail and Microsoft 365 do), submits `--messages` messages over loopback
(fast: intake is not behind the proxy), and times delivery until the sink has counted them
all. It prints msg/s and the round trips per message that time implies (elapsed / messages
/ RTT): 4 for MAIL, RCPT, DATA and the final dot one after another (and one per further
recipient); 2 with MAIL, the RCPTs and DATA pipelined, then the body. The connection is
reused, so connecting and EHLO are paid once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
MESG = re.compile(rb"mesg=(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relayd_command() -> list[str]:
    if os.environ.get("RELAYD"):
        return [os.environ["RELAYD"]]
    beside = Path(sys.executable).parent / "relayd"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "relayd"]


async def delayed_pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Copy reader to writer, each chunk `delay` seconds after it was read, in order."""
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await chunks.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    while data := await reader.read(65536):
        chunks.put_nowait((time.monotonic() + delay, data))
    chunks.put_nowait((0.0, b""))
    await sender


def start_proxy(listen: int, target: int, one_way: float) -> asyncio.AbstractEventLoop:
    """The proxy on an event loop of its own thread, so that waiting for relayd and the
    sink here never holds up the bytes it carries (relayd's QUIT at its stop, say)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(proxy(listen, target, one_way), loop).result(10)
    return loop


async def proxy(listen: int, target: int, one_way: float) -> asyncio.Server:
    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(
            delayed_pipe(client_r, up_w, one_way),
            delayed_pipe(up_r, client_w, one_way),
            return_exceptions=True,
        )

    return await asyncio.start_server(serve, "127.0.0.1", listen)


def sink_count(log: Path) -> int:
    counts = MESG.findall(log.read_bytes()[-400:]) if log.exists() else []
    return int(counts[-1]) if counts else 0


def run(args: argparse.Namespace, work: Path) -> None:
    sink_port, proxy_port, relay_port = free_port(), free_port(), free_port()
    sink_log = work / "sink.log"
    sink = subprocess.Popen(
        [SINK, "-u", "postfix", "-c", f"127.0.0.1:{sink_port}", "64"],
        stdout=sink_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    proxy_loop = start_proxy(proxy_port, sink_port, args.rtt_ms / 2000)
    config = work / "relayd.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{relay_port}"]\nhostname = "relayd.bench.invalid"\n'
        f'[queue]\npath = "{work}/queue.db"\n'
        f'[upstreams.far]\nprovider = "generic"\nhost = "127.0.0.1"\nport = {proxy_port}\n'
        f'security = "none"\nauth = "none"\nrate_limits = []\n'
        f"max_connections = {args.connections}\n"
        f'[log]\nlevel = "warning"\n'
    )
    relayd = subprocess.Popen([*relayd_command(), "run", "-c", str(config)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", relay_port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("relayd did not start listening in 30 s") from None
                time.sleep(0.1)
        rcpts = [f"someone{i}@example.net" for i in range(args.recipients)]
        body = b"Subject: rtt\r\n\r\n" + b"x" * 1000 + b"\r\n"
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", relay_port) as client:
            for _ in range(args.messages):
                client.sendmail("app@example.org", rcpts, body)
        submitted = time.monotonic() - started
        while sink_count(sink_log) < args.messages:
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"only {sink_count(sink_log)} of {args.messages} arrived")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
    finally:
        for process in (relayd, sink):  # relayd first: its QUIT goes through the proxy
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        proxy_loop.call_soon_threadsafe(proxy_loop.stop)
    per_message = elapsed / args.messages
    trips = per_message * args.connections / (args.rtt_ms / 1000)
    print(
        f"rtt {args.rtt_ms:g} ms, {args.connections} connection(s), {args.recipients} "
        f"recipient(s): {args.messages} messages delivered in {elapsed:.2f} s "
        f"(submitted in {submitted:.2f} s): {args.messages / elapsed:.1f} msg/s, "
        f"{per_message * 1000:.1f} ms and {trips:.2f} round trips per message per connection"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--connections", type=int, default=1, help="max_connections")
    parser.add_argument("--recipients", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relayd-rtt-") as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()
