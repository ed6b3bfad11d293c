"""structlog setup: one event per state change, JSON or console, secrets redacted.

Redaction is a processor, so no caller can forget it: any field whose name says it holds
a secret is masked before rendering, whatever the value.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

_SECRET_WORDS = ("password", "secret", "token", "auth_data", "credential", "authorization")
MASK = "********"
_configured = False  # configure() ran: set_level() may change the level (a SIGHUP reload)


def redact_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask fields named like secrets (`password`, `client_secret`, `refresh_token`, ...)."""
    for key in event_dict:
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS) and event_dict[key] is not None:
            event_dict[key] = MASK
    return event_dict


class LineLogger:
    """Writes each event with ONE os.write: lines from several processes sharing stderr
    (intake workers, the journal's stream) never interleave mid-line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "replace")
        while data:
            data = data[os.write(self.fd, data) :]

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _factory(stream: Any) -> Any:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO in tests
        return structlog.PrintLoggerFactory(stream)
    stream.flush()
    return lambda *_args: LineLogger(fd)


def configure(
    fmt: Literal["json", "console"] = "json", level: str = "info", stream: Any = None
) -> None:
    """Configure structlog once for the process (stderr by default, as systemd expects)."""
    global _configured
    _configured = True
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_factory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


class _Stderr:
    """Whatever sys.stderr is when a line is written (a CLI command run in-process by a
    test writes to that test's captured stream, not to one closed since)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_cli(fmt: Literal["json", "console"] = "console", level: str = "info") -> None:
    """A CLI command's logs go to stderr: its stdout is its output (`--json` documents, the
    effective config), which scripts parse."""
    configure(fmt, level, stream=_Stderr())


def set_level(level: str) -> None:
    """Change the level of a process configure() set up; a no-op otherwise (in-process tests)."""
    if _configured:
        level_number = logging.getLevelNamesMapping()[level.upper()]
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level_number))


def get_logger(name: str) -> Any:
    """A bound logger carrying `component=name`."""
    return structlog.get_logger(component=name)
