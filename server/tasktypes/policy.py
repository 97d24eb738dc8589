"""enable-disable-policy: switch a policy and tickle the agents it targets."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from runtime.runner import Outcome
from server.policies import targets
from server.tasktypes.result import done, failed

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def enable_disable_policy(ctx: ServerContext) -> Outcome:
    started = time.time()
    name, enabled = str(ctx.params["policy"]), bool(ctx.params["enabled"])
    if origin := await ctx.ns.db.item_origin("policy", name):
        return failed(started, f"policy {name} comes from the parent NS {origin}: change it there")
    if not await ctx.ns.db.set_policy_enabled(name, enabled):
        return failed(started, f"no policy named {name!r}; `taskfleet policies` lists them")
    policy = next(p for p in await ctx.ns.db.policies() if p["name"] == name)
    reached, offline = await ctx.ns.tickle(
        [c for c in await targets(ctx.ns, policy) if c["has_agent"]]
    )
    return done(
        started,
        {
            "policy": name,
            "enabled": enabled,
            "tickled": sorted(reached),
            "offline": sorted(offline),
        },
    )
