"""aiosmtpd builds its verb, AUTH and hook tables from dir() on every connection; relayd's
lean __dir__ (intake/auth.py's prefixed_names) must leave those tables exactly as they were."""

from __future__ import annotations

from pathlib import Path

from relayd.clock import SystemClock
from relayd.config.model import load
from relayd.intake.handler import IntakeHandler
from relayd.intake.server import IntakeServerFactory, IntakeSMTP

DEV_CONFIG = Path(__file__).parents[2] / "config" / "relayd.dev.toml"


def _full(obj: object, prefix: str) -> set[str]:
    """What aiosmtpd would find with the default dir()."""
    return {name.removeprefix(prefix) for name in object.__dir__(obj) if name.startswith(prefix)}


async def test_the_verb_auth_and_hook_tables_are_complete() -> None:
    """Async: aiosmtpd takes the running loop (outside one it would make a new one)."""
    handler = IntakeHandler(load(DEV_CONFIG), None, SystemClock())  # type: ignore[arg-type]
    protocol: IntakeSMTP = IntakeServerFactory(handler)()
    assert set(protocol._smtp_methods) == _full(protocol, "smtp_")
    assert {"MAIL", "RCPT", "DATA", "AUTH", "EHLO", "STARTTLS"} <= set(protocol._smtp_methods)
    assert set(protocol._auth_methods) == _full(protocol, "auth_") == {"PLAIN", "LOGIN"}
    assert set(protocol._handle_hooks) == _full(handler, "handle_")
    assert protocol._ehlo_hook_ver == "new"  # the kept signature is still the 5-argument one
    # The tables hold this connection's bound methods, not another's.
    assert protocol._smtp_methods["MAIL"].__self__ is protocol
