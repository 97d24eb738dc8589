"""replicate-hierarchy: hierarchy replication comes in a later issue; until then it says so."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from protocol.states import InstanceState
from runtime.runner import Outcome

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def run(ctx: ServerContext) -> Outcome:
    now = time.time()
    return Outcome(InstanceState.FAILED, None, "", "no hierarchy configured", now, now)
