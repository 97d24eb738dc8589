"""The agent's catalog of client task types: one small module per type, one line here each.

A runner takes a :class:`TaskContext` and returns an ``Outcome``. Parameters were validated by
the NS when the task was saved (``protocol.tasks.CATALOG``), with their defaults filled in.
"""

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

from agent.tasktypes import (  # noqa: E402  (the registry below needs TaskContext defined first)
    agent_control,
    basic_inventory,
    defragment,
    ip_configuration,
    noop,
    power_control,
    run_script,
    services,
    unix_service,
    web_service,
)

RUNNERS: dict[str, Runner] = {
    "run-script": run_script.run,
    "noop": noop.run,
    "call-web-service-client": web_service.run,
    "send-basic-inventory": basic_inventory.run,
    "get-ip-configuration": ip_configuration.run,
    "control-service-state": services.control_service_state,
    "unix-service-control": unix_service.run,
    "defragment-computer": defragment.run,
    "power-control": power_control.run,
    "update-client-configuration": agent_control.update_configuration,
    "reset-task-agent": agent_control.reset,
}
