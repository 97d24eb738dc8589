"""Human output: plain tables, times, and text from agents made safe for a terminal."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 controls but tab and newline, DEL and C1: what a terminal may act on (colours, titles,
erase-line, clipboard writes). A carriage return is among them: it rewrites the line shown."""


def printable(text: str) -> str:
    """``text`` with every control character a terminal would act on shown as ``\\xNN``.

    Script output, reasons and step names come from agents, which an admin trusts less than
    their own terminal: printed raw, a script could set the window title, hide or fake lines
    (``ESC[2K`` + ``\\r``) or write the clipboard. Every human printer of such text goes
    through here (not ``--json``, whose encoder escapes them, nor ``--csv``, a data format)."""
    if text.isprintable():  # the common case, without the regular expression
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def _datetime(ts: float) -> dt.datetime | None:
    """``ts`` as a UTC time, or None for a value no calendar date fits (NaN, inf, year > 9999)."""
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return None


def iso(ts: float | None) -> str | None:
    """UNIX seconds → UTC ISO 8601 with microseconds (None stays None).

    Total: a value no date fits (an agent's NaN or 1e20; the NS clamps new ones, older rows
    may hold them) is given as the number in text (``"1e+20"``, ``"nan"``), so one bad row
    never breaks a listing (docs/json.md, "Times")."""
    if ts is None:
        return None
    when = _datetime(ts)
    if when is None:
        return repr(ts) if isinstance(ts, float) else str(ts)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def short_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    when = _datetime(ts)
    return str(ts) if when is None else when.strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    s = max(0, int(now - ts))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """Render ``rows`` with ``columns`` as (key, heading) pairs."""
    cells = [
        [("" if r.get(k) is None else printable(str(r.get(k)))) for k, _ in columns] for r in rows
    ]
    widths = [len(h) for _, h in columns]
    for row in cells:
        for i, c in enumerate(row):
            first = c.splitlines()[0] if c else ""
            widths[i] = min(max(widths[i], len(first)), 60)
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, (_, h) in enumerate(columns)).rstrip()]
    for row in cells:
        out = []
        for i, c in enumerate(row):
            first = c.splitlines()[0] if c else ""
            if len(first) > widths[i]:
                first = first[: widths[i] - 1] + "…"
            out.append(first.ljust(widths[i]))
        lines.append("  ".join(out).rstrip())
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)
