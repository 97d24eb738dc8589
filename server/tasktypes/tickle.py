"""tickle-client: tell agents to check in now (through their TS, or directly when served here)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from protocol.states import InstanceState
from runtime.runner import Outcome

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def run(ctx: ServerContext) -> Outcome:
    started = time.time()
    names = [str(n) for n in ctx.params.get("computers") or []] or ctx.targets
    rows = await ctx.ns.db.computers(names or None)
    missing = sorted(set(names) - {r["name"] for r in rows})
    if missing:
        return Outcome.failed(f"unknown computer(s): {', '.join(missing)}", started_at=started)
    reached, offline = await ctx.ns.tickle([r for r in rows if r["has_agent"]])
    output = json.dumps({"reached": sorted(reached), "offline": sorted(offline)})
    return Outcome(InstanceState.SUCCEEDED, 0, output, "", started, time.time())
