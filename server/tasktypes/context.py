"""What a server task type is handed: the NS (as ``server.interface.NS``), its run, parameters
and tokens. Every module of ``server.tasktypes`` takes it; none imports the package's registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.runner import Outcome, ScriptRun
from server.interface import NS


@dataclass
class ServerContext:
    """What a server task type may use: the NS itself, its run, parameters and tokens."""

    ns: NS
    run_id: int
    instance_id: int
    params: dict[str, Any]
    tokens: dict[str, str]
    timeout_s: float
    track: Callable[[ScriptRun | None], None]
    targets: list[str] = field(default_factory=list)
    """Names of the computers the run was given (a server task may act on them)."""

    async def run(self, run: ScriptRun) -> Outcome:
        self.track(run)
        try:
            return await run.run()
        finally:
            self.track(None)


ServerRunner = Callable[[ServerContext], Awaitable[Outcome]]
