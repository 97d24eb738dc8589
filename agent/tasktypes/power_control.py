"""power-control: restart, shut down or log off. The agent reports first, then acts.

An agent acts only when it was allowed to: started with ``--allow-power``, or given its own
command for that action (an entry of its ``--commands`` file that differs from the platform's
default, such as a script). Otherwise a task, a job step or a policy that an operator meant for
another machine would really restart this one (an agent running as root can).
"""

from __future__ import annotations

import asyncio
import getpass
import time
from typing import TYPE_CHECKING

from agent.commands import default_table
from protocol.states import InstanceState
from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext

COMMAND_LIMIT_S = 60
"""How long the power command itself may run (its result is not reported)."""
_DELAY_PLACEHOLDERS = ("{delay_s}", "{delay_min}")


def allowed(ctx: TaskContext, action: str) -> bool:
    """Whether this agent may run ``power.<action>``: ``--allow-power``, or an entry of its own
    in the command table (one equal to the platform's default does not count: it would still
    restart the machine)."""
    if ctx.agent.allow_power:
        return True
    name = f"power.{action}"
    return ctx.commands.table.get(name) != default_table().get(name)


def refusal(action: str) -> str:
    """The reason a refused power action fails with: how to allow it."""
    return (
        f"power actions are off on this agent: start it with --allow-power (or give"
        f' "power.{action}" a command of your own in its --commands file) to {action} it'
    )


async def run(ctx: TaskContext) -> Outcome:
    action = str(ctx.params["action"])
    delay_s = int(ctx.params.get("delay_s", 60))
    if not allowed(ctx, action):
        return Outcome.failed(refusal(action))
    template = ctx.commands.table.get(f"power.{action}") or []
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
    # A command that takes no delay of its own (logoff) is started by the agent after delay_s.
    wait_s = 0 if any(p in part for part in template for p in _DELAY_PLACEHOLDERS) else delay_s

    async def act() -> None:
        # Runs after the result is reported: the machine may not come back to report it.
        async def later() -> None:
            await asyncio.sleep(wait_s)
            await ScriptRun({}, ctx.tokens, COMMAND_LIMIT_S, argv=argv).run()

        ctx.agent.keep(asyncio.create_task(later()))

    ctx.after_report.append(act)
    return Outcome(
        InstanceState.SUCCEEDED,
        0,
        f"{action} in {delay_s} s: {' '.join(argv)}",
        "",
        now,
        time.time(),
    )
