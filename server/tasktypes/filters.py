"""update-filter-membership: recompute the cached membership of one or every filter."""

from __future__ import annotations

import json
import time

from protocol.filters import matches, record, validate_filter
from runtime.runner import Outcome
from server.interface import NS
from server.tasktypes.context import ServerContext
from server.tasktypes.result import done, failed


async def recompute_filters(ns: NS, only: str = "") -> dict[str, dict[str, list[str]]]:
    """Recompute cached filter membership; return, per filter, the computers added and removed."""
    computers = await ns.db.computers()
    names = {c["id"]: c["name"] for c in computers}
    groups = await ns.db.memberships()
    inventories = await ns.db.latest_inventories()
    records = []
    for c in computers:
        c = {**c, "addresses": json.loads(c["addresses"] or "[]")}
        records.append((c["id"], record(c, groups.get(c["id"], []), inventories.get(c["id"]))))
    changes: dict[str, dict[str, list[str]]] = {}
    for f in await ns.db.filters():
        if only and f["name"] != only:
            continue
        _, condition = validate_filter({k: f[k] for k in ("name", "query", "description")})
        members = {cid for cid, values in records if matches(condition, values)}
        added, removed = await ns.db.set_filter_members(f["name"], members)
        changes[f["name"]] = {
            "added": [names[i] for i in added],
            "removed": [names[i] for i in removed],
        }
    return changes


async def update_filter_membership(ctx: ServerContext) -> Outcome:
    started = time.time()
    only = str(ctx.params.get("filter", ""))
    changes = await recompute_filters(ctx.ns, only)
    if only and only not in changes:
        return failed(started, f"no filter named {only!r}")
    return done(started, changes)
