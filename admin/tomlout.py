"""Write a document (tasks, jobs: what ``task add`` / ``job add`` read) as TOML.

Python's standard library reads TOML (``tomllib``) but does not write it. This writer covers
the values a saved document holds, plain data as JSON gives it: tables, arrays of tables (a
job's ``[[steps]]``, and ``[[steps.then]]`` inside them), arrays, strings (multi-line scripts
as literal ``'''`` strings when they can be, else basic ``\"\"\"`` strings with escapes),
integers, floats and booleans. ``tomllib.loads(dumps(doc)) == doc`` for every such document;
a value TOML cannot hold (``None``, a non-string key) raises :class:`TomlError`.
"""

from __future__ import annotations

import math
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


class TomlError(ValueError):
    """A value with no TOML form."""


def dumps(doc: dict[str, Any]) -> str:
    """``doc`` as a TOML document."""
    lines: list[str] = []
    _table(doc, [], lines, header=None)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(table: dict[str, Any], path: list[str], lines: list[str], header: str | None) -> None:
    """A table's section: its header, its plain keys, then its sub-tables and arrays of tables
    (TOML needs every plain key of a table before the first sub-table's header)."""
    for key in table:
        if not isinstance(key, str):
            raise TomlError(f"key {key!r} at {'.'.join(path) or '(top)'} is not a string")
    if header is not None:
        lines.append("")
        lines.append(header)
    nested: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value, [*path, key])}")
    for key, value in nested:
        sub = [*path, key]
        name = ".".join(_key(k) for k in sub)
        if isinstance(value, dict):
            _table(value, sub, lines, f"[{name}]")
        else:
            for item in value:
                _table(item, sub, lines, f"[[{name}]]")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _basic(key)


def _value(value: Any, path: list[str]) -> str:
    """An inline value: a scalar, an array, or an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v, path) for v in value) + "]"
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TomlError(f"key {k!r} at {'.'.join(path)} is not a string")
            parts.append(f"{_key(k)} = {_value(v, [*path, k])}")
        return "{ " + ", ".join(parts) + " }" if parts else "{}"
    where = ".".join(path) or "(top)"
    raise TomlError(f"{where}: {type(value).__name__} {value!r} has no TOML form")


def _control(ch: str) -> bool:
    return ch < " " or ch == "\x7f"


def _string(text: str) -> str:
    if "\n" not in text:
        return _basic(text)
    # Multi-line: the newline right after the opening quotes is dropped by the reader, so
    # the one written there is ours and the text keeps every newline it had.
    literal_ok = (
        "'''" not in text
        and not text.endswith("'")
        and not any(_control(c) and c not in "\n\t" for c in text)
    )
    if literal_ok:
        return "'''\n" + text + "'''"
    body = "".join(
        c if c in "\n\t" else _escape(c) if c in _ESCAPES or _control(c) else c for c in text
    )
    return '"""\n' + body + '"""'


def _escape(ch: str) -> str:
    return _ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


def _basic(text: str) -> str:
    return '"' + "".join(_escape(c) if c in _ESCAPES or _control(c) else c for c in text) + '"'
