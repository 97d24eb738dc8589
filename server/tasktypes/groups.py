"""assign-to-group: add computers (listed, or the run's targets) to an organizational group."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from protocol.session import NAME
from runtime.runner import Outcome
from server.tasktypes.result import done, failed

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def assign_to_group(ctx: ServerContext) -> Outcome:
    started = time.time()
    group = str(ctx.params["group"])
    names = [str(n) for n in ctx.params.get("computers") or []] or ctx.targets
    if not names:
        return failed(
            started, "no computers: list them in params.computers or run the task with targets"
        )
    rows = await ctx.ns.db.computers(names)
    missing = sorted(set(names) - {r["name"] for r in rows})
    if missing:
        return failed(started, f"unknown computer(s): {', '.join(missing)}")
    group_id = await ctx.ns.db.group_id(group)
    if group_id is None:
        if not ctx.params.get("create"):
            return failed(started, f"no group named {group!r}; set create = true to make it")
        if not NAME.fullmatch(group):
            return failed(
                started, f"{group!r} is not a valid group name (letters, digits, '.', '_', '-')"
            )
        group_id = await ctx.ns.db.add_group(group, None)
    added = await ctx.ns.db.add_to_group(group_id, [r["id"] for r in rows])
    return done(started, {"group": group, "added": added, "already": len(rows) - added})
