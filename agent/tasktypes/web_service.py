"""call-web-service-client: an HTTP(S) request from the agent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.httpcall import call
from runtime.runner import Outcome

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


async def run(ctx: TaskContext) -> Outcome:
    return await call(ctx.params, ctx.tokens)
