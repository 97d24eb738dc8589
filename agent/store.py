"""All SQL of the agent: instances it accepted (``seen``), unacknowledged results (``outbox``)
and its last configuration. Simulated agents (``data_dir=None``) keep the same state in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
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


_MIGRATIONS = [
    """
    CREATE TABLE seen (instance_id INTEGER PRIMARY KEY, state TEXT NOT NULL, at REAL NOT NULL);
    CREATE TABLE outbox (instance_id INTEGER PRIMARY KEY, report TEXT NOT NULL);
    CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: client jobs: results per step, and each job's state
    """
    CREATE TABLE outbox_v2 (
        instance_id INTEGER NOT NULL,
        step TEXT NOT NULL DEFAULT '',
        report TEXT NOT NULL,
        PRIMARY KEY (instance_id, step)
    );
    INSERT INTO outbox_v2(instance_id, step, report) SELECT instance_id, '', report FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v2 RENAME TO outbox;
    CREATE TABLE jobs (
        instance_id INTEGER PRIMARY KEY,
        execute TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        deadline REAL NOT NULL
    );
    """,
]

SEEN_KEEP_S = 14 * 24 * 3600

Key = tuple[int, str]
"""An outbox entry: (instance id, step id or '' for the instance itself)."""


class AgentStore:
    """The agent's memory: SQLite in its data folder, or dicts for simulated agents."""

    def __init__(self, db: aiosqlite.Connection | None):
        self.db = db
        self.seen: dict[int, str] = {}
        self.outbox: dict[Key, Report] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.config: dict[str, Any] = {}

    @classmethod
    async def open(cls, data_dir: str | None) -> AgentStore:
        if data_dir is None:
            return cls(None)
        db = await open_db(os.path.join(data_dir, "agent.db"), _MIGRATIONS)
        store = cls(db)
        await db.execute_fetchall("DELETE FROM seen WHERE at < ?", (time.time() - SEEN_KEEP_S,))
        await db.commit()
        async with db.execute("SELECT instance_id, state FROM seen") as cur:
            store.seen = {int(r[0]): str(r[1]) async for r in cur}
        async with db.execute("SELECT instance_id, step, report FROM outbox") as cur:
            store.outbox = {(int(r[0]), str(r[1])): report_from_row(r[2]) async for r in cur}
        async with db.execute("SELECT instance_id, execute, snapshot, deadline FROM jobs") as cur:
            store.jobs = {
                int(r[0]): {
                    "execute": json.loads(r[1]),
                    "snapshot": json.loads(r[2]),
                    "deadline": float(r[3]),
                }
                async for r in cur
            }
        async with db.execute("SELECT value FROM config WHERE key='config'") as cur:
            row = await cur.fetchone()
            store.config = json.loads(row[0]) if row else {}
        return store

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()

    async def _seen(self, instance_id: int, state: str) -> None:
        self.seen[instance_id] = state
        if self.db is not None:
            await self.db.execute_fetchall(
                "INSERT INTO seen(instance_id, state, at) VALUES (?, ?, ?)"
                " ON CONFLICT(instance_id) DO UPDATE SET state=excluded.state",
                (instance_id, state, time.time()),
            )

    async def mark(self, instance_id: int, state: str) -> None:
        await self._seen(instance_id, state)
        if self.db is not None:
            await self.db.commit()

    async def finish(self, report: Report, job_snapshot: dict[str, Any] | None = None) -> None:
        """Remember a result (of an instance, or of a job's step) until the relay acknowledges it.

        For a job step, the job's new state is stored in the same transaction.
        """
        key = (report.instance_id, report.step)
        self.outbox[key] = report
        if not report.step:
            self.seen[report.instance_id] = report.state
            self.jobs.pop(report.instance_id, None)
        elif job_snapshot is not None and report.instance_id in self.jobs:
            self.jobs[report.instance_id]["snapshot"] = job_snapshot
        if self.db is None:
            return
        if not report.step:
            await self._seen(report.instance_id, report.state)
            await self.db.execute_fetchall(
                "DELETE FROM jobs WHERE instance_id=?", (report.instance_id,)
            )
        elif job_snapshot is not None:
            await self.db.execute_fetchall(
                "UPDATE jobs SET snapshot=? WHERE instance_id=?",
                (json.dumps(job_snapshot), report.instance_id),
            )
        await self.db.execute_fetchall(
            "INSERT OR REPLACE INTO outbox(instance_id, step, report) VALUES (?, ?, ?)",
            (report.instance_id, report.step, report_to_row(report)),
        )
        await self.db.commit()

    async def start_job(
        self, instance_id: int, execute: dict[str, Any], snapshot: dict[str, Any], deadline: float
    ) -> None:
        """Keep a client job (its ``execute`` and state) so a restarted agent resumes it."""
        self.jobs[instance_id] = {"execute": execute, "snapshot": snapshot, "deadline": deadline}
        await self._seen(instance_id, "running")
        if self.db is not None:
            await self.db.execute_fetchall(
                "INSERT OR REPLACE INTO jobs(instance_id, execute, snapshot, deadline) VALUES (?, ?, ?, ?)",
                (instance_id, json.dumps(execute), json.dumps(snapshot), deadline),
            )
            await self.db.commit()

    async def clear_jobs(self) -> None:
        """reset-task-agent: forget every client job's state (their results stay in the outbox)."""
        self.jobs.clear()
        if self.db is not None:
            await self.db.execute_fetchall("DELETE FROM jobs")
            await self.db.commit()

    async def delivered(self, keys: list[Key]) -> None:
        for k in keys:
            self.outbox.pop(k, None)
        if self.db is not None and keys:
            await run_many(self.db, "DELETE FROM outbox WHERE instance_id=? AND step=?", keys)
            await self.db.commit()

    async def save_config(self, config: dict[str, Any]) -> None:
        self.config = config
        if self.db is not None:
            await self.db.execute_fetchall(
                "INSERT OR REPLACE INTO config(key, value) VALUES ('config', ?)",
                (json.dumps(config),),
            )
            await self.db.commit()
