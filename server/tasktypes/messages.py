"""raise-message: an alert in `taskfleet messages`, pushed to admins that watch messages."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from protocol.states import InstanceState
from protocol.tasks import replace_tokens
from runtime.runner import Outcome

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def run(ctx: ServerContext) -> Outcome:
    started = time.time()
    text = replace_tokens(str(ctx.params["text"]), ctx.tokens)
    severity = str(ctx.params.get("severity", "warning"))
    message_id = await ctx.ns.raise_message(severity, text, f"run {ctx.run_id}")
    ctx.ns.log.warning("message_raised", id=message_id, severity=severity, text=text)
    return Outcome(InstanceState.SUCCEEDED, 0, f"message {message_id}", "", started, time.time())
