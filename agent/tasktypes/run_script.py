"""run-script: a script with a chosen interpreter (see ``runtime.runner``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


async def run(ctx: TaskContext) -> Outcome:
    return await ctx.run(ScriptRun(ctx.params, ctx.tokens, ctx.timeout_s))
