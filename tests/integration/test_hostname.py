"""server.hostname (issue 15): a better default than getfqdn's "localhost", and a warning at
start when the name has no dot (providers check EHLO and Message-ID domains)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from relayd.config.model import default_hostname
from tests.conftest import ConfigFactory, running

CAPTURE = 'provider = "directory"\npath = "{path}"'


def test_etc_mailname_names_the_mail_system_when_present(tmp_path: Path) -> None:
    mailname = tmp_path / "mailname"
    mailname.write_text("mail.practice.example\n")
    assert default_hostname(mailname) == "mail.practice.example"


def test_without_mailname_a_localhost_fqdn_gives_way_to_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Debian's /etc/hosts (`127.0.1.1 vm`) makes getfqdn answer; this machine's own."""
    monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    assert default_hostname(tmp_path / "absent") == "vm"
    monkeypatch.setattr(socket, "getfqdn", lambda: "vm.lan.example")
    assert default_hostname(tmp_path / "absent") == "vm.lan.example"


@pytest.mark.parametrize(("hostname", "warned"), [("vm", True), ("relay.test", False)])
async def test_a_hostname_without_a_dot_is_warned_about_at_start(
    make_config: ConfigFactory, tmp_path: Path, hostname: str, warned: bool
) -> None:
    config = make_config(CAPTURE.format(path=tmp_path / "outbox"))
    server = config.server.model_copy(update={"hostname": hostname})
    with capture_logs() as logs:
        async with running(config.model_copy(update={"server": server})):
            pass
    warnings = [e for e in logs if e["event"] == "hostname_not_qualified"]
    assert bool(warnings) is warned
    if warned:
        assert warnings[0]["hostname"] == hostname
        assert "server.hostname" in warnings[0]["fix"]
