"""unix-service-control: systemctl, or `service` where systemctl is absent, or launchctl."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from agent.tasktypes.services import not_supported
from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


async def run(ctx: TaskContext) -> Outcome:
    action, service = str(ctx.params["action"]), str(ctx.params["service"])
    argv = ctx.commands.argv(f"service.{action}", service=service)
    if (
        argv
        and argv[0] == "systemctl"
        and shutil.which("systemctl") is None
        and shutil.which("service")
    ):
        argv = ["service", service, "status" if action == "status" else action]  # SysV init
    if argv is None:
        return not_supported(action)
    return await ctx.run(ScriptRun({}, ctx.tokens, ctx.timeout_s, argv=argv))
