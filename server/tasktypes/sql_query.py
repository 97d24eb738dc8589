"""run-sql-query-on-server: SQL on the NS database; read-only unless the task allows writes.

On SQLite, read-only is enforced twice: the connection is opened ``mode=ro``, and SQLite's
authorizer allows reads only (``_read_only``). ``mode=ro`` alone let a query write files
elsewhere: ``VACUUM INTO '/path'`` and ``ATTACH 'file:/path?mode=rwc'`` open a new file of their
own.

On PostgreSQL (``--database``), the query runs on a connection of its own, as one prepared
statement (never several) in a ``READ ONLY`` transaction that is rolled back, with a statement
timeout (``STATEMENT_TIMEOUT_S``); ``allow_write`` makes it a read-write transaction that is
committed. What the database's user may do beyond tables (functions with effects of their
own) is PostgreSQL's to refuse: give the NS a user that owns its database and is no superuser.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import asyncpg

from protocol.states import InstanceState
from runtime.runner import Outcome
from server.store.dbapi import is_postgres_url

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


_READS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_READ_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
    }
)
"""Pragmas that only describe the schema, whatever their argument."""
_VALUE_PRAGMAS = frozenset(
    {"user_version", "application_id", "page_count", "page_size", "freelist_count", "encoding"}
)
"""Pragmas read-only when asked without a value (``PRAGMA user_version``, not ``= 5``)."""
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master"})
_WRITES = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ")
    for name in (
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE_TABLE",
        "CREATE_INDEX",
        "CREATE_TRIGGER",
        "CREATE_VIEW",
        "CREATE_TEMP_TABLE",
        "CREATE_TEMP_INDEX",
        "CREATE_TEMP_TRIGGER",
        "CREATE_TEMP_VIEW",
        "CREATE_VTABLE",
        "DROP_TABLE",
        "DROP_INDEX",
        "DROP_TRIGGER",
        "DROP_VIEW",
        "DROP_TEMP_TABLE",
        "DROP_TEMP_INDEX",
        "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW",
        "DROP_VTABLE",
        "ALTER_TABLE",
        "REINDEX",
        "ANALYZE",
    )
}
"""Statements that write: refused with SQLite's own words for ``mode=ro``, and what they are."""
_OTHERS = {
    sqlite3.SQLITE_ATTACH: "ATTACH or VACUUM (they open another database file)",
    sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_TRANSACTION: "BEGIN, COMMIT or ROLLBACK",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT",
}


def _read_only(denied: list[str]) -> Any:
    """An authorizer that allows reads only; what it refuses is appended to ``denied``.

    Allowed: SELECT, reading any column, recursive CTEs, functions (but ``load_extension``), the
    schema pragmas, value pragmas without a value. Refused: every write (even to a temporary
    table), CREATE, DROP, ALTER, transactions, ATTACH and DETACH (VACUUM INTO attaches its target
    file, so it is refused too), and every other pragma (``writable_schema``, ``journal_mode``...).
    An eponymous virtual table (``json_each``, ``pragma_table_info``) declares itself to SQLite
    with an internal UPDATE of ``sqlite_master``; that is allowed: SQLite itself refuses a
    statement's UPDATE of ``sqlite_master`` unless ``writable_schema``, which is refused here.
    """

    def authorize(
        action: int, arg1: str | None, arg2: str | None, _db: str | None, _source: str | None
    ) -> int:
        if action in _READS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() != "load_extension":
                return sqlite3.SQLITE_OK
            what = "the function load_extension"
        elif action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _READ_PRAGMAS or (name in _VALUE_PRAGMAS and arg2 is None):
                return sqlite3.SQLITE_OK
            what = f"PRAGMA {name}" + ("" if arg2 is None else f" = {arg2}")
        elif action == sqlite3.SQLITE_UPDATE and (arg1 or "").lower() in _SCHEMA_TABLES:
            return sqlite3.SQLITE_OK
        elif action in _WRITES and (arg1 or "").lower() in _SCHEMA_TABLES:
            # CREATE asks first to insert its row in the schema table.
            what = "attempt to write a readonly database (CREATE or DROP)"
        elif action in _WRITES:
            what = f"attempt to write a readonly database ({_WRITES[action]})"
        else:
            what = _OTHERS.get(action, f"SQLite action {action}")
        denied.append(what)
        return sqlite3.SQLITE_DENY

    return authorize


def _query(
    path: str, sql: str, allow_write: bool, limit: int
) -> tuple[list[str], list[list[Any]], bool]:
    # Its own connection: read-only (mode=ro) unless writes are allowed; never the server's own.
    uri = f"file:{path}?mode={'rw' if allow_write else 'ro'}"
    db = sqlite3.connect(uri, uri=True, timeout=10)
    denied: list[str] = []
    if not allow_write:
        db.set_authorizer(_read_only(denied))
    try:
        try:
            cur = db.execute(sql)
        except sqlite3.DatabaseError as exc:
            if not denied:
                raise
            raise sqlite3.DatabaseError(
                f"{denied[0]}: not allowed in a read-only query (only SELECT, and the pragmas "
                "that describe tables, may run; a run-sql-query-on-server task with "
                "allow_write = true may write the NS database)"
            ) from exc
        columns = [d[0] for d in cur.description or []]
        rows = [list(r) for r in cur.fetchmany(limit + 1)]
        if allow_write:
            db.commit()
        return columns, rows[:limit], len(rows) > limit
    finally:
        db.close()


STATEMENT_TIMEOUT_S = 60
"""How long one administrator's query may run on PostgreSQL before it is cancelled."""


async def _pg_query(
    url: str, sql: str, allow_write: bool, limit: int
) -> tuple[list[str], list[list[Any]], bool]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        async with conn.transaction(readonly=not allow_write):
            await conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_S * 1000}")
            try:
                stmt = await conn.prepare(sql)
                columns = [a.name for a in stmt.get_attributes()]
                if columns:
                    rows = [list(r) for r in await (await stmt.cursor()).fetch(limit + 1)]
                else:
                    rows = [list(r) for r in await stmt.fetch()]
            except asyncpg.ReadOnlySQLTransactionError as exc:
                raise asyncpg.ReadOnlySQLTransactionError(
                    f"{exc}: not allowed in a read-only query (only reads may run; a"
                    " run-sql-query-on-server task with allow_write = true may write the NS"
                    " database)"
                ) from exc
            if not allow_write:
                # Nothing to keep; rolled back rather than committed, whatever ran.
                raise _ReadDone(columns, rows)
    except _ReadDone as done:
        columns, rows = done.columns, done.rows
    finally:
        await conn.close()
    return columns, rows[:limit], len(rows) > limit


class _ReadDone(Exception):
    """Ends a read-only query's transaction with a rollback, carrying what it read."""

    def __init__(self, columns: list[str], rows: list[list[Any]]):
        super().__init__("read done")
        self.columns, self.rows = columns, rows


async def query(
    path: str, sql: str, allow_write: bool, limit: int
) -> tuple[list[str], list[list[Any]], bool]:
    """Run SQL on its own connection (read-only unless ``allow_write``): an SQLite file's in a
    thread, or the PostgreSQL database ``path`` names (a ``postgresql://`` URL)."""
    if is_postgres_url(path):
        return await _pg_query(path, sql, allow_write, limit)
    return await asyncio.to_thread(_query, path, sql, allow_write, limit)


async def run(ctx: ServerContext) -> Outcome:
    started = time.time()
    limit = int(ctx.params.get("row_limit", 1000))
    try:
        columns, rows, more = await query(
            ctx.ns.db_path,
            str(ctx.params["query"]),
            bool(ctx.params.get("allow_write")),
            limit,
        )
    except (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return Outcome.failed(f"SQL error: {exc}", started_at=started)
    data = {"columns": columns, "rows": rows, "truncated": more}
    return Outcome(
        InstanceState.SUCCEEDED, 0, json.dumps(data, default=str), "", started, time.time()
    )
