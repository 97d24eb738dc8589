"""The Task Server's catalog of task-server task types: one module per type, one line here each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from runtime.runner import Outcome, ScriptRun
from taskserver.tasktypes import wake_on_lan

TsRunner = Callable[
    [dict[str, Any], dict[str, str], float, Callable[[ScriptRun], None]], Awaitable[Outcome]
]


async def run_script(
    params: dict[str, Any],
    tokens: dict[str, str],
    timeout_s: float,
    track: Callable[[ScriptRun], None],
) -> Outcome:
    """run-script-on-taskserver: the script, run here with the target's tokens."""
    run = ScriptRun(params, tokens, timeout_s)
    track(run)
    return await run.run()


TS_RUNNERS: dict[str, TsRunner] = {
    "run-script-on-taskserver": run_script,
    "wake-on-lan": wake_on_lan.run,
}
