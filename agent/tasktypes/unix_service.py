"""unix-service-control: systemctl, or `service` where systemctl is absent (SysV init, OpenRC,
containers), or launchctl; all by the command table's ``service.<action>``."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from agent.tasktypes.services import not_supported
from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext

SERVICE_ACTIONS = ("start", "stop", "restart", "reload", "status")
"""What ``service NAME ACTION`` does everywhere it exists; enabling at boot is not one of them
(``update-rc.d``, ``chkconfig`` and ``rc-update`` differ by distribution)."""


def fallback(argv: list[str], service: str, action: str) -> list[str] | None:
    """``argv`` unchanged, unless it is a ``systemctl`` command on a machine with no systemctl
    but a ``service`` program: then ``service SERVICE ACTION``, or None for an action ``service``
    does not have (the task then fails, saying why)."""
    if argv[0] != "systemctl" or shutil.which("systemctl") or not shutil.which("service"):
        return argv
    return ["service", service, action] if action in SERVICE_ACTIONS else None


async def run(ctx: TaskContext) -> Outcome:
    action, service = str(ctx.params["action"]), str(ctx.params["service"])
    argv = ctx.commands.argv(f"service.{action}", service=service)
    if argv is None:
        return not_supported(action)
    command = fallback(argv, service, action)
    if command is None:
        return Outcome.failed(
            f"'{action}' of a service needs systemctl, and this computer has only `service`"
            " (which starts, stops, restarts, reloads and shows services, but does not"
            f" {action} them at boot)"
        )
    return await ctx.run(ScriptRun({}, ctx.tokens, ctx.timeout_s, argv=command))
