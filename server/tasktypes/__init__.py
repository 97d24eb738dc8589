"""The NS's catalog of server task types: one small module per type, one line here each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.runner import Outcome, ScriptRun

if TYPE_CHECKING:
    from server.core import NotificationServer


@dataclass
class ServerContext:
    """What a server task type may use: the NS itself, its run, parameters and tokens."""

    ns: NotificationServer
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

from server.tasktypes import (  # noqa: E402  (the registry below needs ServerContext first)
    filters,
    groups,
    hierarchy,
    items,
    messages,
    policy,
    reports,
    resources,
    restart,
    script,
    send_email,
    server_log,
    sql_query,
    tickle,
    web_service,
)

SERVER_RUNNERS: dict[str, ServerRunner] = {
    "run-script-on-server": script.run,
    "write-server-log": server_log.run,
    "raise-message": messages.run,
    "call-web-service-server": web_service.run,
    "run-sql-query-on-server": sql_query.run,
    "send-email": send_email.run,
    "tickle-client": tickle.run,
    "replicate-hierarchy": hierarchy.run,
    "assign-to-group": groups.assign_to_group,
    "update-filter-membership": filters.update_filter_membership,
    "run-report": reports.run_report,
    "purge-report": reports.purge_report,
    "delete-item": items.delete_item,
    "move-item": items.move_item,
    "enable-disable-policy": policy.enable_disable_policy,
    "restart-server-services": restart.restart_server_services,
    "file-resource-cleanup": resources.file_resource_cleanup,
}
