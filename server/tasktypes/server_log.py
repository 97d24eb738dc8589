"""write-server-log: an entry (level, message with tokens) in the NS's log table and its log."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from protocol.states import InstanceState
from protocol.tasks import replace_tokens
from runtime.runner import Outcome

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def run(ctx: ServerContext) -> Outcome:
    started = time.time()
    message = replace_tokens(str(ctx.params.get("message", "")), ctx.tokens)
    level = str(ctx.params.get("level", "info"))
    entry = await ctx.ns.db.write_log(level, message, f"run {ctx.run_id}")
    getattr(ctx.ns.log, level, ctx.ns.log.info)(
        "server_log", message=message, entry=entry, run_id=ctx.run_id
    )
    return Outcome(InstanceState.SUCCEEDED, 0, f"log entry {entry}", "", started, time.time())
