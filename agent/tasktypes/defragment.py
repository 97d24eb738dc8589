"""defragment-computer: the platform's defragment / trim command for a volume."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


async def run(ctx: TaskContext) -> Outcome:
    argv = ctx.commands.argv("defragment", volume=ctx.params.get("volume", "/"))
    if argv is None:
        return Outcome.failed("defragmenting is not supported on this platform")
    return await ctx.run(ScriptRun({}, ctx.tokens, ctx.timeout_s, argv=argv))
