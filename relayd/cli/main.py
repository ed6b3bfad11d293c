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
from relayd.clock import Clock, SystemClock
from relayd.config.model import Config, UpstreamConfig, default_config_path, load, render_effective
from relayd.errors import ConfigError, RelaydError, StoreError
from relayd.logs import configure_cli
from relayd.store import migrate_store, store_for
from relayd.store.base import Store
from relayd.tools.queue import CHANGES
from relayd.types import QueueId, RecipientState
from relayd.units import parse_duration

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3
SENDMAIL_NAMES = ("sendmail", "relayd-sendmail")


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
    run = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    run.add_argument("--intake-only", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser(
        "migrate", parents=[common], help="create or upgrade the queue schema, then exit"
    )
    sub.add_parser("check-config", parents=[common], help="validate and print the effective config")
    test = sub.add_parser(
        "test-upstream", parents=[common], help="connect, TLS, AUTH: can this upstream send?"
    )
    test.add_argument("name", help="the NAME of an [upstreams.NAME] table")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser(
        "hash-password",
        parents=[common],
        help="make a password_hash for [[server.users]] (prompts, or reads one line of stdin)",
    )
    send_test = sub.add_parser(
        "send-test", parents=[common], help="queue a test message and wait for its outcome"
    )
    send_test.add_argument("--to", help="recipient (default: the notification mailbox)")
    send_test.add_argument("--from", dest="sender", help="envelope sender (chooses the route)")
    send_test.add_argument("--upstream", help="send through this upstream (default: routed)")
    send_test.add_argument("--timeout", default="2m", help='how long to wait (default "2m")')
    _queue_parser(sub.add_parser("queue", parents=[common], help="inspect and manage the queue"))
    sub.add_parser(
        "sendmail",
        parents=[common],
        help="sendmail-compatible submission: relayd sendmail [-t] [-i] [-f FROM] [RCPT...]",
        add_help=False,
    )
    return parser


def _queue_parser(queue: argparse.ArgumentParser) -> None:
    queue.add_argument("action", choices=["list", "show", "summary", *CHANGES])
    queue.add_argument("queue_id", nargs="?")
    queue.add_argument(
        "--all", action="store_true", help="retry: every pending message, and end upstream pauses"
    )
    queue.add_argument("--state", choices=[s.value for s in RecipientState], help="list filter")
    queue.add_argument("--upstream", help="list filter: routed through this upstream")
    queue.add_argument("--sender", help='list filter: envelope sender, a glob ("*@example.org")')
    queue.add_argument("--older-than", metavar="DURATION", help='list filter, e.g. "1h"')
    queue.add_argument("--limit", type=int, default=1000, help="list at most this many")
    queue.add_argument("--dsn", action="store_true", help="delete: send a bounce report")
    queue.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: Sequence[str] | None = None) -> None:
    configure_cli()  # until the config says how: never on stdout, which carries output
    clock = SystemClock()  # the one every command is given
    _exit_if_sendmail(argv, clock)
    args = _parse(argv)
    if args.command == "hash-password":
        sys.exit(_hash_password())
    try:
        config = load(args.config or default_config_path(dict(os.environ)))
    except ConfigError as exc:
        print(f"relayd: config error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        print(f"relayd: cannot read the config: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    configure_cli(config.log.format, config.log.level)
    if args.command == "check-config":
        print(render_effective(config), end="")
        sys.exit(EXIT_OK)
    if args.command == "test-upstream":
        sys.exit(_test_upstream(config, args.name, args.json, clock))
    if args.command == "run":
        sys.exit(_run(config, clock, args.intake_only))
    if args.command == "migrate":
        sys.exit(_migrate(config))
    if args.command == "send-test":
        sys.exit(_send_test(config, args, clock))
    try:
        sys.exit(asyncio.run(_queue(config, args, clock)))
    except StoreError as exc:
        print(f"relayd: queue store error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)


def _run(config: Config, clock: Clock, intake_only: bool = False) -> int:
    from relayd.daemon.relayd import Relayd
    from relayd.logs import configure

    configure(config.log.format, config.log.level)
    try:
        return Relayd(config, clock=clock).run(intake_only=intake_only)
    except StoreError as exc:
        print(f"relayd: cannot open the queue: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except (RelaydError, OSError) as exc:
        print(f"relayd: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def _migrate(config: Config) -> int:
    """Bring the queue schema up to this version (nodes do it on start too, one at a time)."""
    queue = config.queue
    try:
        before, after = asyncio.run(migrate_store(queue.backend, queue.path, dsn=queue.dsn_text))
    except StoreError as exc:
        print(f"relayd: cannot migrate the queue: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if before is None or before == after:
        print(f"{queue.backend} queue schema is at version {after}")
    else:
        print(f"{queue.backend} queue schema migrated from version {before} to {after}")
    return EXIT_OK


def _test_upstream(config: Config, name: str, as_json: bool, clock: Clock) -> int:
    """Exit 0 only if every check passed: the account can send."""
    from relayd.tools.probe import can_send, probe_upstream

    upstream = config.upstreams.get(name)
    if upstream is None:
        known = ", ".join(config.upstreams)
        print(f'relayd: no upstream "{name}" in {config.source} (known: {known})', file=sys.stderr)
        return EXIT_CONFIG
    steps = asyncio.run(probe_upstream(upstream, config.server.hostname, clock))
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


def _hash_password() -> int:
    """Prompt twice on a terminal; otherwise read the password from one line of stdin."""
    import getpass

    from relayd.policy.localauth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("relayd: the two passwords differ", file=sys.stderr)
            return EXIT_FAILURE
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("relayd: the password is empty", file=sys.stderr)
        return EXIT_FAILURE
    print(hash_password(password))
    return EXIT_OK


def _send_test(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    """Exit 0 only when the test message was delivered."""
    from relayd.tools.sendtest import SendTestError, plan_send_test, send_test

    try:
        plan = plan_send_test(config, args.to, args.sender, args.upstream, args.timeout)
    except SendTestError as exc:
        print(f"relayd: send-test: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"queueing a test message from <{plan.sender}> to <{plan.recipient}> via {plan.upstream}")
    try:
        result = asyncio.run(send_test(config, plan, clock))
    except StoreError as exc:
        print(f"relayd: queue store error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(result.text)
    return EXIT_OK if result.delivered else EXIT_FAILURE


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


def _queue_usage(args: argparse.Namespace, config_bounces: object) -> str | None:
    """Why the queue command line cannot be run (exit 2), or None."""
    action = args.action
    if action in ("show", "hold", "release", "delete") and not args.queue_id:
        return f"queue {action} needs a queue ID"
    if action == "retry" and not args.queue_id and not args.all:
        return "queue retry needs a queue ID, or --all"
    if args.dsn and action != "delete":
        return "--dsn goes with queue delete"
    if args.dsn and config_bounces is None:
        return (
            "queue delete --dsn needs a [bounces] mailbox to send the report to; nothing was "
            "deleted (queue delete ID removes it without a report)"
        )
    if args.older_than is not None:
        try:
            parse_duration(args.older_than)
        except ValueError as exc:
            return f"--older-than: {exc}"
    return None


async def _queue(config: Config, args: argparse.Namespace, clock: Clock) -> int:
    problem = _queue_usage(args, config.bounces)
    if problem is not None:
        print(f"relayd: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    store = store_for(config.queue)
    await store.open()
    try:
        text = await _queue_action(store, config, args, clock.now())
    finally:
        await store.close()
    if text is None:
        print(f"relayd: no message {args.queue_id}", file=sys.stderr)
        return EXIT_FAILURE
    print(text, end="")
    return EXIT_OK


async def _queue_action(
    store: Store, config: Config, args: argparse.Namespace, now: float
) -> str | None:
    """The output of one queue command; None when its message does not exist."""
    from relayd.cli import queuefmt
    from relayd.tools import queue

    qid = QueueId(args.queue_id) if args.queue_id else None
    if args.action == "list":
        filters = queue.Filters(
            state=RecipientState(args.state) if args.state else None,
            upstream=args.upstream,
            sender=args.sender,
            older_than=parse_duration(args.older_than) if args.older_than else None,
        )
        views = await queue.list_views(store, filters, now, args.limit)
        return queuefmt.list_json(views) if args.json else queuefmt.list_text(views, now)
    if args.action == "summary":
        result = await queue.summary(store, list(config.upstreams))
        summary_format = queuefmt.summary_json if args.json else queuefmt.summary_text
        return summary_format(result, now)
    if qid is not None and await store.show(qid) is None:
        return None
    if args.action == "show":
        detail = await queue.show(store, QueueId(str(qid)))
        if detail is None:  # deleted between the two reads
            return None
        return queuefmt.show_json(detail) if args.json else queuefmt.show_text(detail, now)
    if args.action == "delete" and args.dsn and qid is not None:
        from relayd.reports.dsn_reports import deletion_report

        await deletion_report(config, store, qid, now)  # queued before the message goes
    affected = await queue.change(store, args.action, qid, now, list(config.upstreams))
    format_change = queuefmt.change_json if args.json else queuefmt.change_text
    return format_change(args.action, affected)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, except that `queue show -c FILE ID` works too: argparse fills an optional
    positional before the options that follow it, leaving the ID unrecognised."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    lone = extra[0] if len(extra) == 1 and not extra[0].startswith("-") else None
    if args.command == "queue" and args.queue_id is None and lone is not None:
        args.queue_id, extra = lone, []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _exit_if_sendmail(argv: Sequence[str] | None, clock: Clock) -> None:
    """`relayd sendmail ...`, or this script installed as `sendmail`: sendmail's own flags
    (-oi, -FName, ...) are not argparse's, so they are parsed by cli/sendmail.py."""
    if argv is None:
        invoked_as_sendmail = Path(sys.argv[0]).name in SENDMAIL_NAMES
        argv = ["sendmail", *sys.argv[1:]] if invoked_as_sendmail else sys.argv[1:]
    if list(argv[:1]) == ["sendmail"]:
        sys.exit(_sendmail(list(argv[1:]), clock))


def _sendmail(argv: list[str], clock: Clock) -> int:
    """`relayd sendmail ...` and the relayd-sendmail script: see cli/sendmail.py."""
    from relayd.cli.sendmail import submit

    result = submit(argv, sys.stdin.buffer, dict(os.environ), clock)
    if result.message:
        print(f"sendmail: {result.message}", file=sys.stderr)
    return result.code


def sendmail_main() -> None:
    """The `relayd-sendmail` console script (install it as /usr/sbin/sendmail)."""
    main(["sendmail", *sys.argv[1:]])
