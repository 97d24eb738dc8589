"""Moving an NS's state from its SQLite file to PostgreSQL (``taskfleet migrate``).

The copy is taken from a snapshot of the file (SQLite's online backup, one read transaction),
brought to this build's schema in the snapshot (never in the site's own file), and written to
PostgreSQL in one transaction: every table, in an order that satisfies its foreign keys, rows
in insertion order, by binary COPY; then each table's id sequence is set past its highest id,
and the rows per table are counted on both sides. A target that already holds taskfleet rows
is refused unless ``replace`` (its rows are then deleted in the same transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable
from typing import Any

import asyncpg

from runtime.db import open_db
from server.store.pgdb import PostgresDatabase
from server.store.schema import _MIGRATIONS

CHUNK = 5_000
SEEDED = {"folders"}
"""Tables the schema itself fills (migration 7's folders): not a sign of an earlier site."""


class CopyRefused(Exception):
    """The copy was not made; the message says why and what to do."""


def _snapshot(source: str, dest: str) -> None:
    """A consistent copy of the SQLite file ``source`` at ``dest`` (its -wal included)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _order(db: sqlite3.Connection) -> list[str]:
    """The tables, each after the tables its foreign keys name."""
    tables = [
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    needs = {t: {r[2] for r in db.execute(f'PRAGMA foreign_key_list("{t}")')} - {t} for t in tables}
    ordered: list[str] = []
    while needs:
        ready = sorted(t for t, deps in needs.items() if deps <= set(ordered))
        if not ready:  # a cycle: none in this schema, but never loop for ever
            ready = sorted(needs)
        for t in ready:
            ordered.append(t)
            del needs[t]
    return ordered


def _converter(pg_type: str) -> Callable[[Any], Any]:
    """SQLite's loosely typed value as the PostgreSQL column wants it."""
    if pg_type == "bigint":
        return lambda v: int(v) if isinstance(v, float) and v.is_integer() else v
    if pg_type == "double precision":
        return lambda v: float(v) if isinstance(v, int) else v
    if pg_type == "text":
        return lambda v: v.decode() if isinstance(v, bytes) else v
    return lambda v: v


async def copy_to_postgres(
    source: str, url: str, *, replace: bool = False, progress: Callable[[str, int], None] = print
) -> dict[str, int]:
    """Copy every table of the NS's SQLite file ``source`` to the PostgreSQL ``url``; return
    the rows per table (equal on both sides, or CopyRefused)."""
    if not os.path.isfile(source):
        raise CopyRefused(f"{source} does not exist: give the NS's DATA/server.db")
    with tempfile.TemporaryDirectory(prefix="taskfleet-migrate-") as tmp:
        snap = os.path.join(tmp, "server.db")
        try:
            await asyncio.to_thread(_snapshot, source, snap)
        except sqlite3.Error as exc:
            raise CopyRefused(f"cannot read {source} as an SQLite database: {exc}") from None
        lite = await open_db(snap, _MIGRATIONS)  # this build's schema, in the snapshot only
        await lite.close()
        db = sqlite3.connect(snap)
        try:
            target = await PostgresDatabase.open(url, _MIGRATIONS)
            try:
                return await _copy(db, target, replace, progress)
            finally:
                await target.close()
        finally:
            db.close()


async def _copy(
    db: sqlite3.Connection,
    target: PostgresDatabase,
    replace: bool,
    progress: Callable[[str, int], None],
) -> dict[str, int]:
    tables = _order(db)
    counts = {t: int(db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}
    async with target.pool.acquire() as conn, conn.transaction():
        kinds = await _column_types(conn)
        missing = sorted(set(tables) - set(kinds))
        if missing:
            raise CopyRefused(f"the target has no table {', '.join(missing)}")
        held = {
            t: int(await conn.fetchval(f'SELECT count(*) FROM "{t}"'))
            for t in tables
            if t not in SEEDED
        }
        if any(held.values()) and not replace:
            busy = ", ".join(f"{t} ({n})" for t, n in sorted(held.items()) if n)
            raise CopyRefused(
                f"the target {target.description} already holds taskfleet rows ({busy}): give"
                " --force to delete them and copy anew, or name an empty database"
            )
        await conn.execute(
            "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
        )
        for table in tables:
            await _copy_table(db, conn, table, kinds[table])
            progress(table, counts[table])
        for table in tables:
            if "id" in kinds[table]:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'),"
                    f' coalesce((SELECT max(id) FROM "{table}"), 0) + 1, false)'
                )
        copied = {t: int(await conn.fetchval(f'SELECT count(*) FROM "{t}"')) for t in tables}
        if copied != counts:
            wrong = ", ".join(
                f"{t}: {counts[t]} in the file, {copied[t]} copied"
                for t in tables
                if counts[t] != copied[t]
            )
            raise CopyRefused(f"the counts differ ({wrong}); nothing was kept")
    return counts


async def _column_types(conn: Any) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for r in await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema='public' ORDER BY table_name, ordinal_position"
    ):
        out.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
    return out


async def _copy_table(db: sqlite3.Connection, conn: Any, table: str, kinds: dict[str, str]) -> None:
    columns = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
    convert = [_converter(kinds[c]) for c in columns]
    names = ", ".join(f'"{c}"' for c in columns)
    cur = db.execute(f'SELECT {names} FROM "{table}" ORDER BY rowid')
    try:
        while rows := cur.fetchmany(CHUNK):
            records = [tuple(f(v) for f, v in zip(convert, row, strict=True)) for row in rows]
            try:
                await conn.copy_records_to_table(table, records=records, columns=columns)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise CopyRefused(f"copying {table} failed: {exc}") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            cur.close()
