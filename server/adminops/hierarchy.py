"""Admin operations on this NS's children (docs/hierarchy.md): ``children.list`` and
``children.show``, both for viewers. Each row is the child as the store keeps it
(``Store.children``), with its lag (how long the oldest change it has not acknowledged has
waited) and its computers from the last summary it sent. Each registers itself with
:func:`server.adminops.base.op`."""

from __future__ import annotations

from typing import Any

from runtime.link import Link
from server.adminops.base import ApiError, _arg, op
from server.interface import NS


async def _row(ns: NS, row: dict[str, Any]) -> dict[str, Any]:
    """A child's row for the admin: linked now (this process's view), lag, computers."""
    summary = row.get("summary") if isinstance(row.get("summary"), dict) else None
    computers = (summary or {}).get("computers") or {}
    return {
        **row,
        "connected": row["name"] in ns.hierarchy.connected_children(),
        "lag_s": await ns.db.child_lag_s(int(row.get("acked_seq") or 0)),
        "clashes": list(row.get("clashes") or []),
        "below": list(row.get("below") or []),
        "online": computers.get("online") if summary else None,
        "total": computers.get("total") if summary else None,
    }


@op("children.list")
async def children_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    rows = []
    for row in await ns.db.children():
        line = await _row(ns, row)
        line.pop("summary", None)  # `children show` has it
        rows.append(line)
    return rows


@op("children.show")
async def children_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    row = await ns.db.child(name)
    if row is None:
        known = ", ".join(r["name"] for r in await ns.db.children()) or "none"
        raise ApiError(
            "unknown_child", f"no child NS named {name!r} (children: {known}; `taskfleet children`)"
        )
    return await _row(ns, row)
