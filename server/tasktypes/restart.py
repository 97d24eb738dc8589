"""restart-server-services: restart the NS's scheduler, task service or listeners in place."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from runtime.runner import Outcome
from server.tasktypes.result import done, failed

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def restart_server_services(ctx: ServerContext) -> Outcome:
    started = time.time()
    names = [str(n) for n in ctx.params.get("services") or []]
    unknown = sorted(set(names) - set(ctx.ns.SERVICES))
    if unknown:
        return failed(
            started, f"unknown service(s) {', '.join(unknown)}; known: {', '.join(ctx.ns.SERVICES)}"
        )
    for name in names:
        await ctx.ns.restart_service(name)
    return done(started, {"restarted": names})
