"""All SQL of the agent: instances it accepted (``seen``), unacknowledged results (``outbox``)
and its last configuration. Simulated agents (``data_dir=None``) keep the same state in memory.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from typing import Any

import aiosqlite

from protocol.messages import Report
from runtime.db import (
    SEEN_KEEP_S,
    Write,
    open_db,
    report_from_row,
    report_to_row,
    transaction,
)

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


Key = tuple[int, str]
"""An outbox entry: (instance id, step id or '' for the instance itself)."""


class NotStored(Exception):
    """A write the agent's database could not take (its disk is full): nothing of it was kept.

    ``reason`` is what the agent tells the NS."""

    def __init__(self, exc: BaseException):
        code = getattr(exc, "sqlite_errorcode", None)
        full = (
            (isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL)
            or "database or disk is full" in str(exc)
            or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
        )
        self.reason = (
            "disk full, work refused until space returns: free space under the agent's data folder"
            if full
            else f"cannot store its work ({exc}), work refused until it can"
        )
        super().__init__(self.reason)


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

    @staticmethod
    def _seen_row(instance_id: int, state: str) -> Write:
        return (
            "INSERT INTO seen(instance_id, state, at) VALUES (?, ?, ?)"
            " ON CONFLICT(instance_id) DO UPDATE SET state=excluded.state",
            (instance_id, state, time.time()),
        )

    async def _write(self, *writes: Write) -> None:
        """Store ``writes`` as one transaction, in one call to the database's thread
        (``runtime.db.transaction``): a task instance stores three times (received, its result,
        its acknowledgement), and each call costs more of the agent's CPU than its statements."""
        assert self.db is not None
        await transaction(self.db, writes)

    async def mark(self, instance_id: int, state: str) -> None:
        """Remember an instance as ``state``: in ``seen`` only once it is stored (a re-sent
        ``execute`` of an instance not stored must run it). :class:`NotStored` if the write
        fails (a full disk): then nothing changed, in memory or on disk."""
        if self.db is not None:
            try:
                await self._write(self._seen_row(instance_id, state))
            except (sqlite3.Error, OSError) as exc:  # rolled back already
                raise NotStored(exc) from exc
        self.seen[instance_id] = state

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
        writes: list[Write] = []
        if not report.step:
            writes.append(self._seen_row(report.instance_id, report.state))
            writes.append(("DELETE FROM jobs WHERE instance_id=?", (report.instance_id,)))
        elif job_snapshot is not None:
            writes.append(
                (
                    "UPDATE jobs SET snapshot=? WHERE instance_id=?",
                    (json.dumps(job_snapshot), report.instance_id),
                )
            )
        writes.append(
            (
                "INSERT OR REPLACE INTO outbox(instance_id, step, report) VALUES (?, ?, ?)",
                (report.instance_id, report.step, report_to_row(report)),
            )
        )
        await self._write(*writes)

    async def start_job(
        self, instance_id: int, execute: dict[str, Any], snapshot: dict[str, Any], deadline: float
    ) -> None:
        """Keep a client job (its ``execute`` and state) so a restarted agent resumes it."""
        self.jobs[instance_id] = {"execute": execute, "snapshot": snapshot, "deadline": deadline}
        self.seen[instance_id] = "running"
        if self.db is not None:
            await self._write(
                self._seen_row(instance_id, "running"),
                (
                    "INSERT OR REPLACE INTO jobs(instance_id, execute, snapshot, deadline)"
                    " VALUES (?, ?, ?, ?)",
                    (instance_id, json.dumps(execute), json.dumps(snapshot), deadline),
                ),
            )

    async def clear_jobs(self) -> None:
        """reset-task-agent: forget every client job's state (their results stay in the outbox)."""
        self.jobs.clear()
        if self.db is not None:
            await self._write(("DELETE FROM jobs", ()))

    async def delivered(self, keys: list[Key]) -> None:
        """The relay stored these results: they leave the outbox (in memory at once)."""
        for k in keys:
            self.outbox.pop(k, None)
        if self.db is not None and keys:
            await self._write(
                *(("DELETE FROM outbox WHERE instance_id=? AND step=?", k) for k in keys)
            )

    async def save_config(self, config: dict[str, Any]) -> None:
        self.config = config
        if self.db is not None:
            await self._write(
                (
                    "INSERT OR REPLACE INTO config(key, value) VALUES ('config', ?)",
                    (json.dumps(config),),
                )
            )
