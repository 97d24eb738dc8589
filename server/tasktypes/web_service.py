"""call-web-service-server: an HTTP(S) request from the NS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.httpcall import call
from runtime.runner import Outcome

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def run(ctx: ServerContext) -> Outcome:
    return await call(ctx.params, ctx.tokens)
