"""Human output: plain tables and times."""

from __future__ import annotations

import datetime as dt
from typing import Any


def iso(ts: float | None) -> str | None:
    """UNIX seconds → UTC ISO 8601 with microseconds (None stays None)."""
    if ts is None:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def short_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


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
    cells = [[("" if r.get(k) is None else str(r.get(k))) for k, _ in columns] for r in rows]
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
