"""run-report and purge-report: snapshots of saved read-only SQL, and their clean-up."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from runtime.runner import Outcome
from server.tasktypes.result import done, failed
from server.tasktypes.sql_query import query

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def run_report(ctx: ServerContext) -> Outcome:
    started = time.time()
    name = str(ctx.params["report"])
    report = await ctx.ns.db.report(name)
    if report is None:
        return failed(started, f"no report named {name!r}")
    try:
        columns, rows, more = await query(
            ctx.ns.db_path, report["query"], False, int(ctx.params.get("row_limit", 10_000))
        )
    except Exception as exc:
        return failed(started, f"the report's query failed: {exc}")
    snapshot = await ctx.ns.db.add_snapshot(name, ctx.run_id, columns, rows)
    return done(
        started, {"snapshot": snapshot, "columns": columns, "rows": rows, "truncated": more}
    )


async def purge_report(ctx: ServerContext) -> Outcome:
    started = time.time()
    older = time.time() - int(ctx.params["older_than_days"]) * 86400
    return done(started, await ctx.ns.db.purge(older, bool(ctx.params.get("runs"))))
