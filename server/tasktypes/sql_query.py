"""run-sql-query-on-server: SQL on the NS database; read-only unless the task allows writes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from protocol.states import InstanceState
from runtime.runner import Outcome

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


def _query(
    path: str, sql: str, allow_write: bool, limit: int
) -> tuple[list[str], list[list[Any]], bool]:
    # Its own connection: read-only (mode=ro) unless writes are allowed; never the server's own.
    uri = f"file:{path}?mode={'rw' if allow_write else 'ro'}"
    db = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        cur = db.execute(sql)
        columns = [d[0] for d in cur.description or []]
        rows = [list(r) for r in cur.fetchmany(limit + 1)]
        if allow_write:
            db.commit()
        return columns, rows[:limit], len(rows) > limit
    finally:
        db.close()


async def query(
    path: str, sql: str, allow_write: bool, limit: int
) -> tuple[list[str], list[list[Any]], bool]:
    """Run SQL on its own connection (read-only unless ``allow_write``), in a thread."""
    return await asyncio.to_thread(_query, path, sql, allow_write, limit)


async def run(ctx: ServerContext) -> Outcome:
    started = time.time()
    limit = int(ctx.params.get("row_limit", 1000))
    try:
        columns, rows, more = await asyncio.to_thread(
            _query,
            ctx.ns.db_path,
            str(ctx.params["query"]),
            bool(ctx.params.get("allow_write")),
            limit,
        )
    except sqlite3.Error as exc:
        return Outcome.failed(f"SQL error: {exc}", started_at=started)
    data = {"columns": columns, "rows": rows, "truncated": more}
    return Outcome(
        InstanceState.SUCCEEDED, 0, json.dumps(data, default=str), "", started, time.time()
    )
