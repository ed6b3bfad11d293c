"""Sender routing: which upstream a message goes through, from its envelope sender and the
local user who authenticated (`senders` patterns of [upstreams.NAME], then routing.default).

Pure lookup: config/model.py has already proved the patterns unambiguous, every `user:NAME` a
real user, and that an unmatched sender has somewhere to go. Policy does not import the
config, so `Routes.from_config` reads it through the small Protocols below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class RoutedUpstream(Protocol):
    @property
    def senders(self) -> Sequence[str]: ...


class RoutingDefault(Protocol):
    @property
    def default(self) -> str | None: ...


class RoutingSource(Protocol):
    """What routing reads of the configuration (a config.model.Config)."""

    @property
    def upstreams(self) -> Mapping[str, RoutedUpstream]: ...

    @property
    def routing(self) -> RoutingDefault: ...


@dataclass(frozen=True)
class Routes:
    by_pattern: Mapping[str, str]  # sender pattern (lower case) -> upstream name
    fallback: str  # for a sender no pattern matches

    @classmethod
    def from_config(cls, config: RoutingSource) -> Routes:
        """The routes of a validated config; unmatched senders go to routing.default, else
        the sole upstream (with several and no default, a "*" pattern matches them all)."""
        by_pattern = {
            pattern: name
            for name, upstream in config.upstreams.items()
            for pattern in upstream.senders
        }
        return cls(by_pattern, config.routing.default or next(iter(config.upstreams)))

    def pick(self, sender: str, user: str | None) -> str:
        """The upstream for a message: user:NAME > exact address > *@domain > * > fallback."""
        address = sender.strip().strip("<>").lower()
        candidates = [f"user:{user}"] if user is not None else []
        if address:
            candidates.append(address)
        if "@" in address:
            candidates.append("*@" + address.rpartition("@")[2])
        candidates.append("*")
        for pattern in candidates:
            if pattern in self.by_pattern:
                return self.by_pattern[pattern]
        return self.fallback
