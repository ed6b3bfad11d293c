"""The configuration file as text: where each key sits, errors that point there, TOML out.

tomllib parses but gives no positions, and pydantic reports a `loc` tuple, so a config error
would otherwise say *what* is wrong but not *where*. `read_toml` parses the file and builds a
`KeyLocator`, which scans the text once and maps key paths to line numbers; `config_error`
turns a pydantic ValidationError into a `ConfigError` that names the dotted key and its line
(validators point below their model with `KeyedValueError`). `render_model` writes a validated
model back as TOML for `relayd check-config`, with secrets masked and preset-derived values
marked.

This module knows TOML and pydantic, not relayd's models (config/model.py imports it, never the
reverse).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import tomllib
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails

from relayd.errors import ConfigError
from relayd.types import Ceiling
from relayd.units import format_duration

Loc = tuple[str | int, ...]
Hidden = Collection[tuple[type[BaseModel], str]]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_BASIC = re.compile(r'"((?:[^"\\]|\\.)*)"')
_LITERAL = re.compile(r"'([^']*)'")
MASK = "********"


class KeyedValueError(ValueError):
    """A validator's error about a key below the model being validated (`path` is relative)."""

    def __init__(self, path: Loc, message: str) -> None:
        super().__init__(message)
        self.path = path


class SizeField:
    """Annotated marker: this int is a size in bytes, rendered as "25MB" when exact."""


SIZE = SizeField()


# -- locating keys ------------------------------------------------------------------------


def _unquote(text: str) -> str:
    try:
        return str(json.loads(f'"{text}"'))
    except ValueError:
        return text


def _split_key(text: str, pos: int) -> tuple[list[str], int] | None:
    """Parse a (dotted, possibly quoted) TOML key at `pos`; return its parts and the end."""
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        for pattern, decode in ((_BARE, False), (_BASIC, True), (_LITERAL, False)):
            match = pattern.match(text, pos)
            if match:
                raw = match.group(1) if pattern is not _BARE else match.group(0)
                parts.append(_unquote(raw) if decode else raw)
                pos = match.end()
                break
        else:
            return None
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text) or text[pos] != ".":
            return parts, pos
        pos += 1


class KeyLocator:
    """Line numbers (1-based) of the keys and table headers in one TOML document."""

    def __init__(self, text: str) -> None:
        self._lines: dict[Loc, int] = {}
        # Tables only implied by a header below them ([bounces] by [bounces.imap]): their
        # line is that header's, used when the table has no line of its own.
        self._implied: dict[Loc, int] = {}
        self._arrays: dict[tuple[str, ...], int] = {}
        table: Loc = ()
        fence: str | None = None  # inside a multi-line string opened with this quote
        for number, line in enumerate(text.splitlines(), start=1):
            if fence is not None:
                if line.count(fence) % 2 == 1:
                    fence = None
                continue
            header = self._header(line)
            if header is not None:
                table = header
                self._lines.setdefault(table, number)
                for end in range(1, len(table)):
                    self._implied.setdefault(table[:end], number)
                continue
            fence = self._key_line(line, table, number)

    def line_of(self, loc: Loc) -> int | None:
        """The line of `loc`, else of its nearest enclosing key or table; None if nowhere."""
        for end in range(len(loc), 0, -1):
            line = self._lines.get(loc[:end], self._implied.get(loc[:end]))
            if line is not None:
                return line
        return None

    def error(self, message: str, loc: Loc) -> ConfigError:
        """A ConfigError about the key at `loc`, with its line."""
        return ConfigError(message, key=dotted(loc) or None, line=self.line_of(loc))

    def _resolve(self, parts: Sequence[str]) -> Loc:
        """A header's path with the current index of every array of tables on the way."""
        loc: list[str | int] = []
        for end in range(1, len(parts) + 1):
            loc.append(parts[end - 1])
            index = self._arrays.get(tuple(parts[:end]))
            if index is not None:
                loc.append(index)
        return tuple(loc)

    def _header(self, line: str) -> Loc | None:
        stripped = line.lstrip()
        is_array = stripped.startswith("[[")
        if not stripped.startswith("["):
            return None
        parsed = _split_key(stripped, 2 if is_array else 1)
        closing = "]]" if is_array else "]"
        if parsed is None or not stripped.startswith(closing, parsed[1]):
            return None
        parts = parsed[0]
        if is_array:
            self._arrays[tuple(parts)] = self._arrays.get(tuple(parts), -1) + 1
        return self._resolve(parts)

    def _key_line(self, line: str, table: Loc, number: int) -> str | None:
        """Record a `key = value` line; return the quote of a multi-line string it opens."""
        parsed = _split_key(line, 0)
        if parsed is None or not line.startswith("=", parsed[1]):
            return None
        parts, end = parsed
        for stop in range(1, len(parts) + 1):
            self._lines.setdefault(table + tuple(parts[:stop]), number)
        value = line[end + 1 :]
        for fence in ('"""', "'''"):
            if value.count(fence) % 2 == 1:
                return fence
        return None


# -- pydantic errors -> ConfigError -------------------------------------------------------


def dotted(loc: Loc) -> str:
    """`("upstreams", "a", "rate_limits", 1)` -> "upstreams.a.rate_limits"; inner indexes stay."""
    parts = list(loc)
    while parts and isinstance(parts[-1], int):
        parts.pop()
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in ("model_type", "dict_type"):
        return "must be a table ([name] or { ... })"
    if kind == "list_type":
        return "must be an array ([...])"
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Exception):
        return str(cause)
    message = error["msg"]
    message = message[0].lower() + message[1:]
    if kind == "literal_error":
        return f"{json.dumps(error['input'])} is not allowed: {message}"
    return message


def _one_error(error: ErrorDetails, locator: KeyLocator) -> ConfigError:
    loc: Loc = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, KeyedValueError):
        loc += cause.path
    return locator.error(_message(error), loc)


def config_error(exc: ValidationError, locator: KeyLocator) -> ConfigError:
    """The first problem (in file order) as a ConfigError; the others become its notes."""
    errors = [_one_error(error, locator) for error in exc.errors()]
    errors.sort(key=lambda error: error.line if error.line is not None else 1 << 30)
    for other in errors[1:]:
        errors[0].add_note(str(other))
    return errors[0]


def read_toml(source: Path) -> tuple[dict[str, Any], KeyLocator]:
    """The parsed file and a locator for its keys; unreadable or invalid TOML -> ConfigError."""
    try:
        text = source.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source} is not UTF-8 text") from exc
    try:
        return tomllib.loads(text), KeyLocator(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's message ends "(at line L, column C)"; the line goes where ours go.
        match = re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", str(exc))
        if match is None:
            raise ConfigError(f"invalid TOML: {exc}") from exc
        message = f"invalid TOML: {match.group(1)} at column {match.group(3)}"
        raise ConfigError(message, line=int(match.group(2))) from exc


# -- rendering ----------------------------------------------------------------------------


def _key(name: str) -> str:
    return name if _BARE.fullmatch(name) else json.dumps(name)


def format_size(size: int) -> str:
    """25_000_000 -> "25MB", 10_485_760 -> "10MiB", 1234 -> "1234B" (units.parse_size reads all)."""
    units = (("GB", 1000**3), ("GiB", 1024**3), ("MB", 1000**2), ("MiB", 1024**2))
    for unit, factor in (*units, ("KB", 1000), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def toml_value(value: Any, *, size: bool = False) -> str:
    """One value as TOML. Every float in the configuration is a duration, by construction."""
    if isinstance(value, SecretStr):
        return json.dumps(MASK)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return json.dumps(format_size(value)) if size else str(value)
    if isinstance(value, float):
        return json.dumps(format_duration(value))
    if isinstance(value, list | tuple | frozenset):
        return "[" + ", ".join(toml_value(item, size=size) for item in value) + "]"
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str | Path | Ceiling | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return json.dumps(str(value), ensure_ascii=False)
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _comment(model: BaseModel, name: str) -> str:
    if name in getattr(model, "preset_fields", ()):
        return f"  # from preset {getattr(model, 'provider', '?')}"
    if name == "password" and getattr(model, "password", None) is not None:
        for source in ("password_file", "password_env"):
            if getattr(model, source, None) is not None:
                return f"  # from {source} {getattr(model, source)}"
    return ""


def _is_table(value: Any) -> bool:
    if isinstance(value, BaseModel):
        return True
    if isinstance(value, dict):
        return bool(value)
    return isinstance(value, list) and bool(value) and isinstance(value[0], BaseModel)


def _table(model: BaseModel, path: Sequence[str], hidden: Hidden) -> Iterator[str]:
    fields = type(model).model_fields
    children: list[tuple[str, Any]] = []
    for name, info in fields.items():
        value = getattr(model, name)
        if (type(model), name) in hidden:
            continue
        key = info.alias or name  # the file's spelling: `from`, not the field name `from_`
        if _is_table(value):
            children.append((key, value))
        elif value is None:
            yield f"# {_key(key)} is not set"
        else:
            size = any(isinstance(item, SizeField) for item in info.metadata)
            yield f"{_key(key)} = {toml_value(value, size=size)}{_comment(model, name)}"
    for name, value in children:
        yield from _child(name, value, path, hidden)


def _child(name: str, value: Any, path: Sequence[str], hidden: Hidden) -> Iterator[str]:
    here = [*path, _key(name)]
    if isinstance(value, BaseModel):
        yield f"\n[{'.'.join(here)}]"
        yield from _table(value, here, hidden)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"\n[{'.'.join([*here, _key(key)])}]"
            yield from _table(item, [*here, _key(key)], hidden)
    else:
        for item in value:
            yield f"\n[[{'.'.join(here)}]]"
            yield from _table(item, here, hidden)


def render_model(model: BaseModel, *, hidden: Hidden, header: str = "") -> str:
    """`model` as TOML, secrets masked, without the (model class, field) pairs in `hidden`."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.extend(_table(model, [], hidden))
    return "\n".join(lines).lstrip("\n") + "\n"
