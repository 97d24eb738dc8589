"""update-client-configuration and reset-task-agent: the agent acting on itself."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from protocol.states import InstanceState
from runtime.runner import Outcome

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


async def update_configuration(ctx: TaskContext) -> Outcome:
    """Re-register with the NS once this result is reported: the welcome carries the configuration."""
    now = time.time()
    ctx.after_report.append(ctx.agent.reconnect)
    return Outcome(
        InstanceState.SUCCEEDED, 0, "configuration will be fetched from the NS now", "", now, now
    )


async def reset(ctx: TaskContext) -> Outcome:
    """Stop every other task, forget queued work and job state, then re-register."""
    now = time.time()
    stopped = await ctx.agent.reset()
    ctx.after_report.append(ctx.agent.reconnect)
    return Outcome(
        InstanceState.SUCCEEDED, 0, f"stopped {stopped} task(s); job state cleared", "", now, now
    )
