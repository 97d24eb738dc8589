"""What the listings of items show of the hierarchy (docs/hierarchy.md): whether an item is
replicated to the child NS, and which parent NS it came from. The columns appear only when a
row has something to show, so a site with no hierarchy sees its listings as before."""

from __future__ import annotations

from typing import Any

Columns = list[tuple[str, str]]


def hierarchy_line(item: dict[str, Any]) -> str:
    """One line for an item's detail: where it came from, whether it replicates."""
    if item.get("origin"):
        return f"from the parent NS {item['origin']} (read-only here: change it there)"
    return "replicated to the child NS" + (
        " (the parent may start it there)" if item.get("remote_start") else ""
    )


def hierarchy_columns(rows: list[dict[str, Any]], columns: Columns) -> Columns:
    """``columns`` and, when any row needs them, ``replicated`` (``yes``, ``yes, startable``
    when the parent may start it on a child) and ``from`` (the parent NS it came from: such
    an item is read-only here). Fills those cells in ``rows``."""
    out = list(columns)
    if any(r.get("replicate") for r in rows):
        for r in rows:
            flagged = "yes" if r.get("replicate") else ""
            r["replicated"] = (
                f"{flagged}, startable" if flagged and r.get("remote_start") else flagged
            )
        out.append(("replicated", "replicated"))
    if any(r.get("origin") for r in rows):
        for r in rows:
            r["from"] = f"parent {r['origin']}" if r.get("origin") else ""
        out.append(("from", "from"))
    return out
