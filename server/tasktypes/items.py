"""delete-item and move-item: items (tasks, jobs, reports, filters, policies) in folders."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from protocol.jobs import referenced_names
from runtime.runner import Outcome
from server.tasktypes.result import done, failed

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


def _uses(definition: dict[str, Any]) -> set[str]:
    return set(referenced_names(definition.get("steps", [])))


def _read_only(item: dict[str, Any]) -> str:
    """Why an item from the parent NS may not be deleted or moved here ('' : it may)."""
    if not item.get("origin"):
        return ""
    kind, name, origin = item["kind"], item["name"], item["origin"]
    return f"{kind} {name} comes from the parent NS {origin}: change it there"


async def delete_item(ctx: ServerContext) -> Outcome:
    started = time.time()
    ref = str(ctx.params["item"])
    item = await ctx.ns.db.find_item(ref)
    if item is None:
        return failed(
            started, f"no item {ref!r}; `taskfleet items` lists them (ids look like task:NAME)"
        )
    if refused := _read_only(item):
        return failed(started, refused)
    if item["kind"] in ("task", "job"):
        users = sorted(j["name"] for j in await ctx.ns.db.jobs() if item["name"] in _uses(j))
        users += sorted(
            f"policy {p['name']}" for p in await ctx.ns.db.policies() if p["task"] == item["name"]
        )
        if users:
            return failed(
                started,
                f"{item['kind']} {item['name']!r} is used by job(s) {', '.join(users)}; "
                "change or delete those first",
            )
    await ctx.ns.db.delete_item(item["kind"], item["name"])
    return done(started, {"deleted": [item["id"]]})


async def move_item(ctx: ServerContext) -> Outcome:
    started = time.time()
    ref, folder = str(ctx.params["item"]), str(ctx.params["folder"]).rstrip("/") or "/"
    item = await ctx.ns.db.find_item(ref)
    if item is None:
        return failed(
            started, f"no item {ref!r}; `taskfleet items` lists them (ids look like task:NAME)"
        )
    if refused := _read_only(item):
        return failed(started, refused)
    await ctx.ns.db.move_item(item["kind"], item["name"], folder)
    return done(started, {"id": item["id"], "path": f"{folder.rstrip('/')}/{item['name']}"})
