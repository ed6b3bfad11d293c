"""policy.routing: the upstream for a sender, most specific pattern first, then the fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relayd.policy.routing import Routes
from tests.support.config_files import load_text


@dataclass(frozen=True)
class _Upstream:
    senders: list[str]


@dataclass(frozen=True)
class _Routing:
    default: str | None = None


@dataclass(frozen=True)
class _Config:
    """The part of config.model.Config that Routes reads."""

    upstreams: dict[str, _Upstream]
    routing: _Routing = field(default_factory=_Routing)


def routes(senders: dict[str, list[str]], default: str | None = None) -> Routes:
    upstreams = {name: _Upstream(patterns) for name, patterns in senders.items()}
    return Routes.from_config(_Config(upstreams, _Routing(default)))


SENDERS = {
    "by_user": ["user:billing-app"],
    "by_address": ["alerts@practice.example"],
    "by_domain": ["*@practice.example"],
    "catch_all": ["*"],
}


@pytest.mark.parametrize(
    ("sender", "user", "expected"),
    [
        ("alerts@practice.example", "billing-app", "by_user"),
        ("ALERTS@practice.EXAMPLE", None, "by_address"),
        ("<alerts@practice.example>", "someone-else", "by_address"),
        ("billing@practice.example", None, "by_domain"),
        ("billing@elsewhere.example", None, "catch_all"),
        ("", None, "catch_all"),
    ],
)
def test_most_specific_sender_pattern_wins(sender: str, user: str | None, expected: str) -> None:
    assert routes(SENDERS).pick(sender, user) == expected


def test_unmatched_senders_go_to_the_default() -> None:
    table = routes({**SENDERS, "catch_all": []}, default="catch_all")
    assert table.pick("x@elsewhere.example", None) == "catch_all"
    assert table.pick("x@practice.example", None) == "by_domain"


def test_a_sole_upstream_takes_everything() -> None:
    assert routes({"capture": []}).pick("anyone@anywhere.example", None) == "capture"


def test_a_loaded_configs_patterns_match_whatever_the_case(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[upstreams.by_address]\nprovider = "directory"\npath = "a"\n'
        'senders = ["Alerts@Practice.example"]\n\n'
        '[upstreams.catch_all]\nprovider = "directory"\npath = "c"\nsenders = ["*"]\n',
    )
    assert Routes.from_config(config).pick("ALERTS@practice.EXAMPLE", None) == "by_address"
