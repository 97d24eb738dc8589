"""defragment-computer: the platform's defragment / trim command for a volume."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent.runner import Outcome, ScriptRun
from protocol.states import InstanceState

if TYPE_CHECKING:
    from agent.tasktypes import TaskContext


async def run(ctx: TaskContext) -> Outcome:
    argv = ctx.commands.argv("defragment", volume=ctx.params.get("volume", "/"))
    if argv is None:
        now = time.time()
        return Outcome(
            InstanceState.FAILED,
            reason="defragmenting is not supported on this platform",
            started_at=now,
            ended_at=now,
        )
    return await ctx.run(ScriptRun({}, ctx.tokens, ctx.timeout_s, argv=argv))
