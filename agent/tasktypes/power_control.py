"""power-control: restart, shut down or log off. The agent reports first, then acts."""

from __future__ import annotations

import asyncio
import getpass
import time
from typing import TYPE_CHECKING

from protocol.states import InstanceState
from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


async def run(ctx: TaskContext) -> Outcome:
    action = str(ctx.params["action"])
    delay_s = int(ctx.params.get("delay_s", 60))
    argv = ctx.commands.argv(
        f"power.{action}",
        delay_s=delay_s,
        delay_min=max(0, (delay_s + 59) // 60),
        message=str(ctx.params.get("message", "")),
        user=getpass.getuser(),
    )
    now = time.time()
    if argv is None:
        return Outcome.failed(f"power action '{action}' is not supported on this platform")

    async def act() -> None:
        # Runs after the result is reported: the machine may not come back to report it.
        task = asyncio.create_task(ScriptRun({}, ctx.tokens, 60, argv=argv).run())
        ctx.agent.keep(task)

    ctx.after_report.append(act)
    return Outcome(
        InstanceState.SUCCEEDED,
        0,
        f"{action} in {delay_s} s: {' '.join(argv)}",
        "",
        now,
        time.time(),
    )
