"""SQLite as every role opens it, and the rows that carry results between roles.

``open_db`` opens a file in WAL mode and applies forward migrations; ``run_many`` is the
``executemany`` that is safe beside aiosqlite's statement cache; ``report_to_row`` and
``report_from_row`` are an outbox row (the agent's and the task server's); ``SEEN_KEEP_S`` is how
long agents and relays remember the instances they took, to drop repeats.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

import aiosqlite
import msgpack

from protocol.messages import Report

_REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(Report))


def report_to_row(r: Report) -> bytes:
    """A report as stored in an outbox: every field, so nothing changes on the way back
    (msgpack: a third of JSON's cost on a task server storing thousands a second)."""
    return bytes(msgpack.packb({name: getattr(r, name) for name in _REPORT_FIELDS}))


def report_from_row(data: bytes | str) -> Report:
    """The report an outbox row holds (JSON text in rows written by earlier builds)."""
    fields = json.loads(data) if isinstance(data, str) else msgpack.unpackb(data)
    return Report(**{k: v for k, v in fields.items() if k in _REPORT_FIELDS})


async def run_many(db: aiosqlite.Connection, sql: str, rows: Iterable[Iterable[Any]]) -> None:
    """``executemany`` whose cursor is closed in the database's own thread.

    A cursor left to be freed by the event loop's thread resets its statement there, while the
    database thread may already run the same (cached) statement for the next caller: SQLite then
    answers "bad parameter or other API misuse" (seen on the NS under a 10,000-agent burst, and
    reproduced by two coroutines updating the same rows). So every statement here either runs
    through ``execute_fetchall`` (its cursor lives and dies in that thread) or closes its cursor.
    """
    async with db.executemany(sql, rows):
        pass


async def open_db(path: str, migrations: list[str]) -> aiosqlite.Connection:
    """Open (creating) a SQLite file in WAL mode and apply forward migrations."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = await aiosqlite.connect(path)
    await db.execute_fetchall("PRAGMA journal_mode=WAL")
    await db.execute_fetchall("PRAGMA synchronous=NORMAL")
    await db.execute_fetchall("PRAGMA foreign_keys=ON")
    await db.execute_fetchall("PRAGMA busy_timeout=5000")
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    if current > len(migrations):
        await db.close()
        raise RuntimeError(
            f"{path} has schema version {current}, newer than this taskfleet ({len(migrations)}); "
            "upgrade taskfleet"
        )
    for version in range(current, len(migrations)):
        async with db.executescript(
            "BEGIN;\n" + migrations[version] + f"\nPRAGMA user_version={version + 1};\nCOMMIT;"
        ):
            pass
    return db


SEEN_KEEP_S = 14 * 24 * 3600
"""How long agents and relays remember an instance they took, so a re-sent one is a repeat."""
