"""run-script-on-server: a script run once on the NS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def run(ctx: ServerContext) -> Outcome:
    return await ctx.run(ScriptRun(ctx.params, ctx.tokens, ctx.timeout_s))
