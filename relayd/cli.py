"""The command line: the only module that prints to the terminal or exits."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from relayd import __version__
from relayd.config import Config, UpstreamConfig, default_config_path, load, render_effective
from relayd.errors import ConfigError, StoreError
from relayd.store import open_store
from relayd.store.base import Store
from relayd.types import MessageView, QueueId, RecipientState

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayd", description="outbound mail relay daemon")
    parser.add_argument("--version", action="version", version=f"relayd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        help="config file (default: $RELAYD_CONFIG, then /etc/relayd/relayd.toml)",
    )
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    sub.add_parser("check-config", parents=[common], help="validate and print the effective config")
    test = sub.add_parser(
        "test-upstream", parents=[common], help="connect, TLS, AUTH: can this upstream send?"
    )
    test.add_argument("name", help="the NAME of an [upstreams.NAME] table")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    queue = sub.add_parser("queue", parents=[common], help="inspect and manage the queue")
    queue.add_argument("action", choices=["list", "show", "retry", "hold", "release", "delete"])
    queue.add_argument("queue_id", nargs="?")
    queue.add_argument(
        "--all", action="store_true", help="retry: every pending message, and end upstream pauses"
    )
    queue.add_argument("--state", choices=[s.value for s in RecipientState])
    queue.add_argument("--upstream")
    queue.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        config = load(args.config or default_config_path(dict(os.environ)))
    except ConfigError as exc:
        print(f"relayd: config error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        print(f"relayd: cannot read the config: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if args.command == "check-config":
        print(render_effective(config), end="")
        sys.exit(EXIT_OK)
    if args.command == "test-upstream":
        sys.exit(_test_upstream(config, args.name, args.json))
    if args.command == "run":
        sys.exit(_run(config))
    try:
        sys.exit(asyncio.run(_queue(config, args)))
    except StoreError as exc:
        print(f"relayd: queue store error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)


def _run(config: Config) -> int:
    from relayd.daemon import Relayd
    from relayd.logs import configure

    configure(config.log.format, config.log.level)
    try:
        return Relayd(config).run()
    except OSError as exc:
        print(f"relayd: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except StoreError as exc:
        print(f"relayd: cannot open the queue: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def _test_upstream(config: Config, name: str, as_json: bool) -> int:
    """Exit 0 only if every check passed: the account can send."""
    from relayd.probe import can_send, probe_upstream

    upstream = config.upstreams.get(name)
    if upstream is None:
        known = ", ".join(config.upstreams)
        print(f'relayd: no upstream "{name}" in {config.source} (known: {known})', file=sys.stderr)
        return EXIT_CONFIG
    steps = asyncio.run(probe_upstream(upstream, config.server.hostname))
    ok = can_send(steps)
    if as_json:
        document = {
            "upstream": name,
            "provider": upstream.provider,
            "host": upstream.host,
            "port": upstream.port,
            "security": upstream.security,
            "auth": upstream.auth,
            "username": upstream.username,
            "ok": ok,
            "steps": [asdict(step) for step in steps],
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK if ok else EXIT_FAILURE
    print(_upstream_line(upstream))
    for step in steps:
        _print_step(step.name, step.ok, step.detail, step.hint)
    print(f"result: {'ok' if ok else 'FAILED'}: {name} {'can' if ok else 'cannot'} send")
    return EXIT_OK if ok else EXIT_FAILURE


def _upstream_line(upstream: UpstreamConfig) -> str:
    if upstream.path is not None and upstream.host is None:
        return f"upstream {upstream.name}: provider {upstream.provider}, directory {upstream.path}"
    login = f", auth {upstream.auth}" if upstream.auth else ""
    if upstream.username:
        login += f" as {upstream.username}"
    return (
        f"upstream {upstream.name}: provider {upstream.provider}, {upstream.host} port "
        f"{upstream.port}, security {upstream.security}{login}"
    )


def _print_step(name: str, ok: bool, detail: str, hint: str | None) -> None:
    pad = " " * 20
    lines = detail.splitlines() or [""]
    print(f"  {'ok' if ok else 'FAILED':8}{name:10}{lines[0]}")
    for line in lines[1:]:
        print(pad + line)
    if hint:
        print(textwrap.fill(hint, 100, initial_indent=pad + "what to do: ", subsequent_indent=pad))


async def _queue(config: Config, args: argparse.Namespace) -> int:
    from relayd.clock import SystemClock

    now = SystemClock().now()
    store = open_store(config.queue.backend, config.queue.path)
    await store.open()
    try:
        if args.action == "retry" and args.all:
            # An operator's retry also ends upstream pauses (auth failed, throttled).
            for name in config.upstreams:
                await store.release_upstream(name)
        return await _queue_action(store, args, now)
    finally:
        await store.close()


async def _queue_action(store: Store, args: argparse.Namespace, now: float) -> int:
    action, qid = args.action, QueueId(args.queue_id) if args.queue_id else None
    if action == "list":
        state = RecipientState(args.state) if args.state else None
        views = await store.list_messages(state=state, upstream=args.upstream)
        _print_views(views, args.json)
        return EXIT_OK
    if qid is None and not (action == "retry" and args.all):
        print(f"relayd: queue {action} needs a queue ID", file=sys.stderr)
        return EXIT_CONFIG
    if action == "show":
        view = await store.show(qid) if qid else None
        if view is None:
            print(f"relayd: no message {qid}", file=sys.stderr)
            return EXIT_FAILURE
        _print_views([view], args.json)
        return EXIT_OK
    count: int | bool
    if action == "retry":
        count = await store.retry_now(qid, now)
    elif action == "hold" and qid:
        count = await store.hold_message(qid)
    elif action == "release" and qid:
        count = await store.release_message(qid, now)
    else:
        count = await store.delete_message(QueueId(str(qid)))
    print(
        json.dumps({"action": action, "affected": int(count)})
        if args.json
        else f"{action}: {int(count)}"
    )
    return EXIT_OK


def _print_views(views: list[MessageView], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(v) for v in views], indent=2, default=str))
        return
    for view in views:
        print(f"{view.queue_id}  {view.upstream}  <{view.mail_from}>  {view.size} bytes", end="")
        print(f"  {view.message_id}")
        for rcpt in view.recipients:
            why = f"  ({rcpt.wait_reason})" if rcpt.wait_reason else ""
            last = f"  last: {rcpt.last_reply}" if rcpt.last_reply else ""
            print(f"    {rcpt.state.value:9} {rcpt.address}  attempts={rcpt.attempts}{why}{last}")
