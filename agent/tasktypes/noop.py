"""noop: succeed after an optional delay (for measuring the control plane)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.runner import Outcome, run_noop

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


async def run(ctx: TaskContext) -> Outcome:
    return await run_noop(ctx.params, ctx.timeout_s)
