"""IntakeHandler's answers that it keeps between connections: which clients may connect and
where a sender's mail goes. A reload must change them at once."""

from __future__ import annotations

from pathlib import Path

from relayd.clock import SystemClock
from relayd.config.model import load
from relayd.intake.handler import IntakeHandler

BASE = """
[server]
listen = ["127.0.0.1:2525"]
hostname = "relay.test"
{networks}
[upstreams.one]
provider = "directory"
path = "{out}/one"
senders = ["*@one.example"]
[upstreams.two]
provider = "directory"
path = "{out}/two"
senders = [{two}]
[routing]
default = "one"
"""


def config(tmp_path: Path, networks: str, two: str) -> Path:
    path = tmp_path / f"relayd-{len(list(tmp_path.iterdir()))}.toml"
    path.write_text(BASE.format(networks=networks, out=tmp_path, two=two))
    return path


def test_a_reload_changes_the_answers_for_clients_and_senders_seen_before(tmp_path: Path) -> None:
    first = load(config(tmp_path, 'allowed_networks = ["127.0.0.0/8"]', '"*@two.example"'))
    handler = IntakeHandler(first, None, SystemClock())  # type: ignore[arg-type]
    assert handler.client_allowed("127.0.0.1")
    assert not handler.client_allowed("192.0.2.7")
    assert handler.client_allowed("127.0.0.1")  # the kept answer
    assert handler.routes.pick("a@two.example", None) == "two"
    assert handler.routes.pick("a@else.example", None) == "one"
    second = load(config(tmp_path, 'allowed_networks = ["192.0.2.0/24"]', '"a@else.example"'))
    handler.reconfigure(second)
    assert not handler.client_allowed("127.0.0.1")
    assert handler.client_allowed("192.0.2.7")
    assert handler.routes.pick("a@two.example", None) == "one"
    assert handler.routes.pick("a@else.example", None) == "two"
    assert not handler.client_allowed("not an address")


def test_the_kept_answers_are_bounded(tmp_path: Path) -> None:
    """A client may connect from many addresses (each refused): memory stays bounded."""
    handler = IntakeHandler(load(config(tmp_path, "", '"*@two.example"')), None, SystemClock())  # type: ignore[arg-type]
    for n in range(3000):
        handler.client_allowed(f"10.0.{n // 256}.{n % 256}")
    assert 0 < len(handler._allowed) <= 1024
