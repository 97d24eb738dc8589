"""What a client task type is handed (:class:`TaskContext`), and what it is (``Runner``). Every
module of ``agent.tasktypes`` takes it from here; none imports the package's registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.commands import CommandTable
from runtime.runner import Outcome, ScriptRun


@dataclass
class TaskContext:
    """What a client task type may use."""

    params: dict[str, Any]
    tokens: dict[str, str]
    timeout_s: float
    commands: CommandTable
    agent: Any
    track: Callable[[ScriptRun | None], None] = lambda run: None
    """Register the process that runs now, so that ``stop`` can kill it."""
    after_report: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Actions to take once the result is reported (power control acts after it reports)."""

    async def run(self, run: ScriptRun) -> Outcome:
        self.track(run)
        try:
            return await run.run()
        finally:
            self.track(None)


Runner = Callable[[TaskContext], Awaitable[Outcome]]
