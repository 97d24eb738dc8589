"""The agent's catalog of client task types: one small module per type, one line here each.

A runner takes a :class:`TaskContext` and returns an ``Outcome``. Parameters were validated by
the NS when the task was saved (``protocol.tasks.CATALOG``), with their defaults filled in.
``TaskContext`` and ``Runner`` live in ``agent.tasktypes.context`` (the task types import them
from there, so that none imports this registry back) and are re-exported here.
"""

from __future__ import annotations

from agent.tasktypes import (
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
from agent.tasktypes.context import Runner, TaskContext

__all__ = ["RUNNERS", "Runner", "TaskContext"]

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
