"""All SQL of a relay (a Task Server, or the NS's built-in task service).

Three tables: ``held`` (work whose result the NS has not stored yet), ``seen`` (instance
ids ever taken, so a re-sent dispatch is not run twice) and ``outbox`` (results the relay
made itself, not yet acknowledged by the NS; an agent's result is kept by the agent until
then). Every write is one transaction per batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite
import msgpack

from protocol.messages import Report
from runtime.db import open_db, report_from_row, report_to_row, run_many

_MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE held (
        instance_id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        computer TEXT NOT NULL,
        task TEXT NOT NULL,
        tokens TEXT NOT NULL,
        deadline REAL NOT NULL,
        started INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX held_computer ON held(computer);
    CREATE TABLE seen (instance_id INTEGER PRIMARY KEY, at REAL NOT NULL);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id INTEGER NOT NULL,
        report TEXT NOT NULL
    );
    """,
    # 2: work the relay runs itself (task-server tasks, client jobs of devices)
    """
    ALTER TABLE held ADD COLUMN local INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: no statement looks held work up by computer (the relay keeps that index in memory),
    # and every instance a TS takes and finishes inserted and deleted an entry of this one.
    """
    DROP INDEX held_computer;
    """,
    # 4: the NS's authentication of each held instance, re-sent with every execute of it
    """
    ALTER TABLE held ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
    """,
]


def _pack(tokens: dict[str, str]) -> bytes:
    """An instance's tokens as stored: msgpack, at about a third of ``json.dumps``' cost for a
    handful of strings, paid for every instance a TS holds."""
    return bytes(msgpack.packb(tokens))


def _unpack(data: bytes | str) -> dict[str, str]:
    """Tokens as stored (JSON text in rows written by earlier builds)."""
    tokens: dict[str, str] = json.loads(data) if isinstance(data, str) else msgpack.unpackb(data)
    return tokens


@dataclass
class Held:
    """Work a relay holds for one computer until it is done."""

    instance_id: int
    run_id: int
    computer: str
    task: dict[str, Any]
    tokens: dict[str, str]
    deadline: float
    started: bool = False
    local: bool = False
    mac: bytes = b""
    """The NS's authentication of this instance for its agent (``Target.mac``)."""


class RelayStore:
    """The narrow interface a relay needs from its database."""

    def __init__(self, db: aiosqlite.Connection):
        self.db = db

    @classmethod
    async def open(cls, path: str) -> RelayStore:
        return cls(await open_db(path, _MIGRATIONS))

    async def close(self) -> None:
        await self.db.close()

    async def hold(self, items: list[Held]) -> list[Held]:
        """Keep new work durably; return only the items never seen before."""
        if not items:
            return []
        ids = [h.instance_id for h in items]
        seen: set[int] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT instance_id FROM seen WHERE instance_id IN ({marks})", chunk
            ) as cur:
                seen.update(int(r[0]) for r in await cur.fetchall())
        fresh = [h for h in items if h.instance_id not in seen]
        now = time.time()
        # A dispatch shares one task among all its targets: encode it once.
        tasks: dict[int, str] = {}

        def task_json(task: dict[str, Any]) -> str:
            text = tasks.get(id(task))
            if text is None:
                text = tasks[id(task)] = json.dumps(task)
            return text

        await run_many(
            self.db,
            "INSERT OR IGNORE INTO seen(instance_id, at) VALUES (?, ?)",
            [(h.instance_id, now) for h in fresh],
        )
        await run_many(
            self.db,
            "INSERT OR IGNORE INTO held(instance_id, run_id, computer, task, tokens, deadline,"
            " local, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    h.instance_id,
                    h.run_id,
                    h.computer,
                    task_json(h.task),
                    _pack(h.tokens),
                    h.deadline,
                    int(h.local),
                    h.mac,
                )
                for h in fresh
            ],
        )
        await self.db.commit()
        return fresh

    async def forget_seen(self, older_than: float) -> int:
        """Forget instances taken before ``older_than`` (UNIX time) and no longer held, as agents
        forget theirs (``runtime.db.SEEN_KEEP_S``); return how many.

        The NS numbers instances in the order it creates them, so the stale rows are the lowest
        ids: the first row taken since ``older_than``, found walking up the key, bounds them, and
        only they are read (no index on the time). A dispatch re-sent after that long would run
        again: by then its run has long passed its time limit, and the agent forgot it too.
        """
        async with self.db.execute(
            "SELECT instance_id FROM seen WHERE at >= ? ORDER BY instance_id LIMIT 1", (older_than,)
        ) as cur:
            row = await cur.fetchone()
        keep_held = "instance_id NOT IN (SELECT instance_id FROM held)"
        if row is not None:  # a range of the key: only the stale rows are read
            sql = f"DELETE FROM seen WHERE instance_id < ? AND at < ? AND {keep_held}"
            args: tuple[float, ...] = (int(row[0]), older_than)
        else:  # every row is stale (a relay idle for that long)
            sql = f"DELETE FROM seen WHERE at < ? AND {keep_held}"
            args = (older_than,)
        cur = await self.db.execute(sql, args)
        count = cur.rowcount
        await cur.close()
        await self.db.commit()
        return int(count)

    async def mark_started(self, instance_id: int) -> None:
        await self.db.execute_fetchall(
            "UPDATE held SET started=1 WHERE instance_id=?", (instance_id,)
        )
        await self.db.commit()

    async def _unhold(self, instance_ids: list[int]) -> None:
        """Delete held work (in the caller's transaction)."""
        await run_many(
            self.db, "DELETE FROM held WHERE instance_id=?", [(i,) for i in instance_ids]
        )

    async def drop(self, instance_ids: list[int]) -> None:
        await self._unhold(instance_ids)
        await self.db.commit()

    async def finish(self, reports: list[Report]) -> list[int]:
        """Store results this relay made itself (nothing else keeps them) in the outbox and
        forget their held work; return outbox seqs."""
        if not reports:
            return []
        await run_many(
            self.db,
            "INSERT INTO outbox(instance_id, report) VALUES (?, ?)",
            [(r.instance_id, report_to_row(r)) for r in reports],
        )
        # One writer per file: the rows just inserted hold consecutive sequence numbers.
        async with self.db.execute("SELECT last_insert_rowid()") as cur:
            row = await cur.fetchone()
        last = int(row[0]) if row else 0
        seqs = list(range(last - len(reports) + 1, last + 1))
        await self._unhold([r.instance_id for r in reports])
        await self.db.commit()
        return seqs

    async def delivered(self, seqs: list[int], instance_ids: list[int] | None = None) -> None:
        """The NS stored a batch: forget its outbox rows (``seqs``) and the held work of the
        agents' results it carried (``instance_ids``), in one transaction."""
        if not seqs and not instance_ids:
            return
        if seqs:
            await run_many(self.db, "DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
        if instance_ids:
            await self._unhold(instance_ids)
        await self.db.commit()

    async def load(self) -> tuple[list[Held], list[tuple[int, Report]]]:
        """Everything held and every undelivered result, for a restart."""
        held: list[Held] = []
        async with self.db.execute(
            "SELECT instance_id, run_id, computer, task, tokens, deadline, started, local, mac"
            " FROM held"
        ) as cur:
            async for row in cur:
                held.append(
                    Held(
                        row[0],
                        row[1],
                        row[2],
                        json.loads(row[3]),
                        _unpack(row[4]),
                        row[5],
                        bool(row[6]),
                        bool(row[7]),
                        bytes(row[8] or b""),
                    )
                )
        out: list[tuple[int, Report]] = []
        async with self.db.execute("SELECT seq, report FROM outbox ORDER BY seq") as cur:
            async for row in cur:
                out.append((int(row[0]), report_from_row(row[1])))
        return held, out
