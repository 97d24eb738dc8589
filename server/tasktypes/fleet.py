"""assign-to-group, update-filter-membership, run-report, purge-report: the NS's own model."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from agent.runner import Outcome
from protocol.filters import matches, record, validate_filter
from protocol.jobs import referenced_names
from protocol.session import NAME
from protocol.states import InstanceState
from server.tasktypes.sql_query import query

if TYPE_CHECKING:
    from server.core import NotificationServer
    from server.tasktypes import ServerContext


def _done(started: float, output: Any) -> Outcome:
    return Outcome(InstanceState.SUCCEEDED, 0, json.dumps(output), "", started, time.time())


def _failed(started: float, reason: str) -> Outcome:
    return Outcome(InstanceState.FAILED, reason=reason, started_at=started, ended_at=time.time())


async def recompute_filters(
    ns: NotificationServer, only: str = ""
) -> dict[str, dict[str, list[str]]]:
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


async def assign_to_group(ctx: ServerContext) -> Outcome:
    started = time.time()
    group = str(ctx.params["group"])
    names = [str(n) for n in ctx.params.get("computers") or []] or ctx.targets
    if not names:
        return _failed(
            started, "no computers: list them in params.computers or run the task with targets"
        )
    rows = await ctx.ns.db.computers(names)
    missing = sorted(set(names) - {r["name"] for r in rows})
    if missing:
        return _failed(started, f"unknown computer(s): {', '.join(missing)}")
    group_id = await ctx.ns.db.group_id(group)
    if group_id is None:
        if not ctx.params.get("create"):
            return _failed(started, f"no group named {group!r}; set create = true to make it")
        if not NAME.fullmatch(group):
            return _failed(
                started, f"{group!r} is not a valid group name (letters, digits, '.', '_', '-')"
            )
        group_id = await ctx.ns.db.add_group(group, None)
    added = await ctx.ns.db.add_to_group(group_id, [r["id"] for r in rows])
    return _done(started, {"group": group, "added": added, "already": len(rows) - added})


async def update_filter_membership(ctx: ServerContext) -> Outcome:
    started = time.time()
    only = str(ctx.params.get("filter", ""))
    changes = await recompute_filters(ctx.ns, only)
    if only and only not in changes:
        return _failed(started, f"no filter named {only!r}")
    return _done(started, changes)


async def run_report(ctx: ServerContext) -> Outcome:
    started = time.time()
    name = str(ctx.params["report"])
    report = await ctx.ns.db.report(name)
    if report is None:
        return _failed(started, f"no report named {name!r}")
    try:
        columns, rows, more = await query(
            ctx.ns.db_path, report["query"], False, int(ctx.params.get("row_limit", 10_000))
        )
    except Exception as exc:
        return _failed(started, f"the report's query failed: {exc}")
    snapshot = await ctx.ns.db.add_snapshot(name, ctx.run_id, columns, rows)
    return _done(
        started, {"snapshot": snapshot, "columns": columns, "rows": rows, "truncated": more}
    )


async def purge_report(ctx: ServerContext) -> Outcome:
    started = time.time()
    older = time.time() - int(ctx.params["older_than_days"]) * 86400
    return _done(started, await ctx.ns.db.purge(older, bool(ctx.params.get("runs"))))


def _uses(definition: dict[str, Any]) -> set[str]:
    return set(referenced_names(definition.get("steps", [])))


async def delete_item(ctx: ServerContext) -> Outcome:
    started = time.time()
    ref = str(ctx.params["item"])
    item = await ctx.ns.db.find_item(ref)
    if item is None:
        return _failed(
            started, f"no item {ref!r}; `taskfleet items` lists them (ids look like task:NAME)"
        )
    if item["kind"] in ("task", "job"):
        users = sorted(j["name"] for j in await ctx.ns.db.jobs() if item["name"] in _uses(j))
        users += sorted(
            f"policy {p['name']}" for p in await ctx.ns.db.policies() if p["task"] == item["name"]
        )
        if users:
            return _failed(
                started,
                f"{item['kind']} {item['name']!r} is used by job(s) {', '.join(users)}; "
                "change or delete those first",
            )
    await ctx.ns.db.delete_item(item["kind"], item["name"])
    return _done(started, {"deleted": [item["id"]]})


async def move_item(ctx: ServerContext) -> Outcome:
    started = time.time()
    ref, folder = str(ctx.params["item"]), str(ctx.params["folder"]).rstrip("/") or "/"
    item = await ctx.ns.db.find_item(ref)
    if item is None:
        return _failed(
            started, f"no item {ref!r}; `taskfleet items` lists them (ids look like task:NAME)"
        )
    await ctx.ns.db.move_item(item["kind"], item["name"], folder)
    return _done(started, {"id": item["id"], "path": f"{folder.rstrip('/')}/{item['name']}"})


async def enable_disable_policy(ctx: ServerContext) -> Outcome:
    from server.policies import targets

    started = time.time()
    name, enabled = str(ctx.params["policy"]), bool(ctx.params["enabled"])
    if not await ctx.ns.db.set_policy_enabled(name, enabled):
        return _failed(started, f"no policy named {name!r}; `taskfleet policies` lists them")
    policy = next(p for p in await ctx.ns.db.policies() if p["name"] == name)
    reached, offline = await ctx.ns.tickle(
        [c for c in await targets(ctx.ns, policy) if c["has_agent"]]
    )
    return _done(
        started,
        {
            "policy": name,
            "enabled": enabled,
            "tickled": sorted(reached),
            "offline": sorted(offline),
        },
    )


async def restart_server_services(ctx: ServerContext) -> Outcome:
    started = time.time()
    names = [str(n) for n in ctx.params.get("services") or []]
    unknown = sorted(set(names) - set(ctx.ns.SERVICES))
    if unknown:
        return _failed(
            started, f"unknown service(s) {', '.join(unknown)}; known: {', '.join(ctx.ns.SERVICES)}"
        )
    for name in names:
        await ctx.ns.restart_service(name)
    return _done(started, {"restarted": names})


async def file_resource_cleanup(ctx: ServerContext) -> Outcome:
    import os

    started = time.time()
    root = os.path.join(ctx.ns.data_dir, "resources")
    cutoff = time.time() - int(ctx.params.get("older_than_days", 30)) * 86400
    referenced = " ".join(
        json.dumps(i) for i in [*await ctx.ns.db.tasks(), *await ctx.ns.db.jobs()]
    )
    deleted, freed = [], 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            info = os.stat(path)
            old = info.st_mtime < cutoff
            unused = bool(ctx.params.get("unreferenced", True)) and relative not in referenced
            if old or unused:
                os.remove(path)
                deleted.append(relative)
                freed += info.st_size
    return _done(started, {"files": sorted(deleted), "bytes_freed": freed})
