"""control-service-state: start, stop, restart or query a service through the platform's manager."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


def not_supported(action: str) -> Outcome:
    return Outcome.failed(f"'{action}' of a service is not supported on this platform")


async def _service(ctx: TaskContext) -> Outcome:
    action, service = str(ctx.params["action"]), str(ctx.params["service"])
    argv = ctx.commands.argv(f"service.{action}", service=service)
    if argv is None:
        return not_supported(action)
    return await ctx.run(ScriptRun({}, ctx.tokens, ctx.timeout_s, argv=argv))


async def control_service_state(ctx: TaskContext) -> Outcome:
    return await _service(ctx)
