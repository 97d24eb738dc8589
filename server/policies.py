"""Which policies reach which computers, and the configuration agents get with them."""

from __future__ import annotations

from typing import Any

from server.interface import NS


async def targets(ns: NS, policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The computers a policy targets (all, names, groups, filters)."""
    t = policy.get("targets", {})
    if t.get("all"):
        return await ns.db.computers()
    chosen: dict[int, dict[str, Any]] = {}
    if t.get("computers"):
        chosen.update((c["id"], c) for c in await ns.db.computers(list(t["computers"])))
    if t.get("groups"):
        chosen.update((c["id"], c) for c in await ns.db.group_computers(list(t["groups"])))
    if t.get("filters"):
        chosen.update((c["id"], c) for c in await ns.db.filter_computers(list(t["filters"])))
    return list(chosen.values())


async def for_computer(ns: NS, computer_id: int) -> list[dict[str, Any]]:
    """The enabled policies that target this computer, with their tasks resolved."""
    out = []
    for policy in await ns.db.policies():
        if not policy["enabled"]:
            continue
        if computer_id not in {c["id"] for c in await targets(ns, policy)}:
            continue
        task = await ns.db.task(policy["task"])
        if task is None or task.get("kind") != "client":
            continue
        out.append({"name": policy["name"], "task": task, "schedule": policy["schedule"]})
    return out
