"""Load a backend's named SQL blocks (`-- name: xyz`) from the .sql file beside it.

Queries live in one reviewed SQL file per backend instead of strings scattered through
Python (procrastinate's queries.sql); the loader only splits the file, so nothing is
ever built by formatting input into SQL.
"""

from __future__ import annotations

import re
from importlib import resources

from relayd.errors import StoreError

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$")


def parse(text: str) -> dict[str, str]:
    """Split `text` into {name: sql}; comment lines are dropped from each block."""
    queries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            name = match.group(1)
            if name in queries:
                raise StoreError(f"duplicate SQL block {name!r}")
            current = queries[name] = []
        elif current is not None and not line.lstrip().startswith("--"):
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in queries.items()}


def load(package: str, filename: str) -> dict[str, str]:
    """The named blocks of `filename`, a resource of `package`."""
    return parse(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))
