#!/usr/bin/env python3
"""Acceptance and end-to-end throughput: 1, 2 and 3 relayd nodes on PostgreSQL vs 1 on SQLite.

Run by hand from the repository root (root, for smtp-sink's `-u postfix`):

    /work/venv/bin/python bench/multinode_bench.py              # 3 runs per scenario
    python bench/multinode_bench.py --messages 1000 --runs 1    # a quick look

Every scenario gets the same load: `--messages` messages of `--size` bytes offered by
Postfix's smtp-source in `--sessions` parallel SMTP sessions in all, split evenly over the
scenario's nodes (one smtp-source per node, started together). The upstream is Postfix's
smtp-sink, which counts and discards. Per run it measures

- accepted msg/s: messages / time until every smtp-source has had its last 250;
- end-to-end msg/s: messages / time until the sink has counted every one of them;

and, for PostgreSQL, the peak number of relayd's server sessions (pg_stat_activity). The
nodes use no rate limits, `max_connections` 4 each, log level warning, a fresh store per
scenario (a temp SQLite file; a new schema in --dsn's database, dropped at the end). After
the runs it checks the store: every recipient delivered. It prints one line per run
(stderr), then a table of medians (min-max) and the ratios to SQLite and to one PG node.

The machine has 2 cores shared by the nodes, PostgreSQL, smtp-source and the sink: the
figures say what more nodes cost or bring on ONE host; on separate hosts the nodes would
not compete for the same CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
MESG = re.compile(rb"mesg=(\d+)")
ENVELOPE = ["-f", "app@example.org", "-t", "someone@example.net"]


def relayd_command() -> list[str]:
    beside = Path(sys.executable).parent / "relayd"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "relayd"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Until `port` accepts; fails with the log's tail if `proc` exits or a minute passes."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
    raise SystemExit(f"nothing listens on {port}:\n{tail}")


@dataclass
class Sink:
    """smtp-sink with counters (`-c`) written to a file we read."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / "sink.log").open("wb")
        command = [SINK, "-u", "postfix", "-c", "-m", "512", f"127.0.0.1:{self.port}", "1024"]
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)

    def count(self) -> int:
        data = (self.workdir / "sink.log").read_bytes()[-200:]
        found = MESG.findall(data)
        return int(found[-1]) if found else 0

    def wait_for(self, target: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= target:
                return time.monotonic()
            time.sleep(0.005)
        return None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Scenario:
    name: str
    backend: str
    nodes: int


SCENARIOS = [
    Scenario("sqlite x1", "sqlite", 1),
    Scenario("postgres x1", "postgres", 1),
    Scenario("postgres x2", "postgres", 2),
    Scenario("postgres x3", "postgres", 3),
]


def node_config(workdir: Path, index: int, port: int, sink: int, queue: str) -> Path:
    path = workdir / f"node{index}.toml"
    path.write_text(
        f"""[server]
listen = ["127.0.0.1:{port}"]
hostname = "bench.test"
max_message_size = "10MB"

[queue]
{queue}

[log]
format = "json"
level = "warning"

[upstreams.sink]
provider = "generic"
host = "127.0.0.1"
port = {sink}
security = "none"
auth = "none"
max_connections = 4
"""
    )
    return path


@dataclass
class Cluster:
    """N relayd nodes on one store."""

    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def start(self, count: int, sink: int, queue: str) -> None:
        for index in range(count):
            port = free_port()
            config = node_config(self.workdir, index, port, sink, queue)
            log_path = self.workdir / f"node{index}.log"
            command = [*relayd_command(), "run", "-c", str(config)]
            with log_path.open("wb") as log:
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(proc)
            self.ports.append(port)
            wait_port(port, proc, log_path)  # one at a time: the first migrates the schema

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Result:
    accepted: float
    e2e: float | None
    connections: int | None


async def pg_sessions(dsn: str) -> int:
    """relayd's sessions of this scenario (named after its schema) on the server now."""
    conn = await asyncpg.connect(dsn)
    try:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = current_schema()"
        return int(await conn.fetchval(query)) - 1  # not this one
    finally:
        await conn.close()


def one_run(args: argparse.Namespace, cluster: Cluster, sink: Sink, dsn: str | None) -> Result:
    """One load on every node at once; accepted and end-to-end rates, peak PG sessions."""
    before = sink.count()
    messages = split(args.messages, len(cluster.ports))
    sessions = split(args.sessions, len(cluster.ports))
    reuse = ["-d", "-C", str(args.per_connection)] if args.per_connection > 1 else []
    started = time.monotonic()
    load = [*reuse, "-l", str(args.size), *ENVELOPE]
    sources = [
        subprocess.Popen(
            [SOURCE, *load, "-s", str(s), "-m", str(m), f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port, m, s in zip(cluster.ports, messages, sessions, strict=True)
    ]
    connections = asyncio.run(pg_sessions(dsn)) if dsn else None
    for source in sources:
        _, err = source.communicate(timeout=args.timeout)
        if source.returncode != 0:
            raise SystemExit(f"smtp-source failed ({source.returncode}): {err.decode()[-300:]}")
    accepted = time.monotonic()
    done = sink.wait_for(before + args.messages, args.timeout)
    if dsn:
        connections = max(connections or 0, asyncio.run(pg_sessions(dsn)))
    e2e = None if done is None else args.messages / (done - started)
    return Result(args.messages / (accepted - started), e2e, connections)


async def pg_states(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT state, count(*) FROM recipients GROUP BY state")
        return {row["state"]: int(row["count"]) for row in rows}
    finally:
        await conn.close()


def sqlite_states(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall()
    return {state: int(count) for state, count in rows}


async def pg_schema(dsn: str, schema: str, create: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        verb = "CREATE SCHEMA" if create else "DROP SCHEMA IF EXISTS"
        await conn.execute(f'{verb} "{schema}"{"" if create else " CASCADE"}')
    finally:
        await conn.close()


def run_scenario(args: argparse.Namespace, scenario: Scenario, sink: Sink) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix=f"relayd-bench-{scenario.backend}-"))
    schema = f"relayd_bench_{secrets.token_hex(4)}"
    dsn = None
    if scenario.backend == "postgres":
        asyncio.run(pg_schema(args.dsn, schema, create=True))
        query = f"search_path={schema}&application_name={schema}"  # its sessions, counted
        dsn = f"{args.dsn}{'&' if '?' in args.dsn else '?'}{query}"
        queue = f'backend = "postgres"\ndsn = "{dsn}"'
    else:
        queue = f'backend = "sqlite"\npath = "{workdir / "queue.db"}"'
    cluster = Cluster(workdir)
    try:
        cluster.start(scenario.nodes, sink.port, queue)
        time.sleep(1.0)
        results = []
        for run in range(1, args.runs + 1):
            result = one_run(args, cluster, sink, dsn)
            if not cluster.alive():
                raise SystemExit(f"a node of {scenario.name} died; logs in {workdir}")
            e2e = f"{result.e2e:.0f}" if result.e2e else "timeout"
            print(
                f"  {scenario.name} run {run}: accepted {result.accepted:.0f} msg/s, "
                f"end-to-end {e2e} msg/s, pg sessions {result.connections}",
                file=sys.stderr,
            )
            results.append(result)
            time.sleep(1.0)
        states = asyncio.run(pg_states(dsn)) if dsn else sqlite_states(workdir / "queue.db")
        expected = args.messages * args.runs
        if states != {"delivered": expected}:
            print(
                f"  PROBLEM {scenario.name}: states {states}, expected {expected}", file=sys.stderr
            )
        return results
    finally:
        cluster.stop()
        if dsn:
            asyncio.run(pg_schema(args.dsn, schema, create=False))
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def report(args: argparse.Namespace, table: dict[str, list[Result]]) -> None:
    print(
        f"\nrelayd multi-node benchmark: {args.messages} messages x {args.size} B, "
        f"{args.sessions} sessions in all, {args.per_connection} message(s) per connection, "
        f"{args.runs} run(s); medians (min-max), msg/s\n"
    )
    print("| scenario | accepted msg/s | end-to-end msg/s | PG sessions (peak) |")
    print("|---|---|---|---|")
    medians: dict[str, tuple[float, float]] = {}
    for name, results in table.items():
        accepted = [r.accepted for r in results]
        e2e = [r.e2e for r in results if r.e2e is not None]
        peaks = [r.connections for r in results if r.connections is not None]
        medians[name] = (statistics.median(accepted), statistics.median(e2e) if e2e else 0.0)
        print(f"| {name} | {cell(accepted)} | {cell(e2e)} | {max(peaks) if peaks else '-'} |")
    print(
        "\n| scenario | accepted / sqlite x1 | e2e / sqlite x1 | accepted / pg x1 | e2e / pg x1 |"
    )
    print("|---|---|---|---|---|")
    base, pg1 = medians.get("sqlite x1"), medians.get("postgres x1")
    for name, (acc, e2e) in medians.items():
        ratios = [
            f"{value / ref:.2f}" if ref else "n/a"
            for value, ref in (
                (acc, base[0] if base else 0),
                (e2e, base[1] if base else 0),
                (acc, pg1[0] if pg1 else 0),
                (e2e, pg1[1] if pg1 else 0),
            )
        ]
        print(f"| {name} | {' | '.join(ratios)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="per run (default 3000)")
    parser.add_argument("--size", type=int, default=10240, help="bytes (smtp-source -l)")
    parser.add_argument("--sessions", type=int, default=30, help="parallel, over all nodes")
    parser.add_argument("--per-connection", type=int, default=1, help="messages per session")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on one run (s)")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--only", nargs="*", help="scenario names, e.g. 'postgres x2'")
    parser.add_argument("--keep", action="store_true", help="keep configs, logs and queue")
    args = parser.parse_args()
    for tool in (SINK, SOURCE):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} missing: apt-get install -y postfix")
    workdir = Path(tempfile.mkdtemp(prefix="relayd-bench-sink-"))
    sink = Sink(workdir)
    sink.start()
    table: dict[str, list[Result]] = {}
    try:
        for scenario in SCENARIOS:
            if args.only and scenario.name not in args.only:
                continue
            print(f"{scenario.name}: {scenario.nodes} node(s)", file=sys.stderr)
            table[scenario.name] = run_scenario(args, scenario, sink)
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, table)


if __name__ == "__main__":
    main()
