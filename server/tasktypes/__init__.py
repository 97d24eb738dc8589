"""The NS's catalog of server task types: one small module per type, one line here each."""

from __future__ import annotations

from server.tasktypes import (
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
from server.tasktypes.context import ServerContext, ServerRunner

__all__ = ["SERVER_RUNNERS", "ServerContext", "ServerRunner"]

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
