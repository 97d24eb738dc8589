"""The base every part of :class:`server.store.Store` builds on: the connection, opening and
closing the database, and the three query helpers (``_all``, ``_one``, ``_insert``) every
table's methods use.
"""

from __future__ import annotations

import time
from typing import Any, Self

import aiosqlite

from runtime.db import open_db
from runtime.metrics import NOT_OBSERVED, Observer
from server.store.schema import _MIGRATIONS


class StoreBase:
    """The connection and the query helpers; the tables' methods live in the mixins."""

    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self.refused = 0
        """Reports refused by ``apply_reports`` (unknown instance, wrong computer or route, a
        step its job does not have)."""
        self.held_back: dict[str, str] = {}
        """Computers whose agent holds work back, with its reason (a ``pending`` report with a
        reason: its disk is full), gathered by ``apply_reports`` until the roll-up takes them."""
        self.held_back_at: dict[str, float] = {}
        """When each computer's last ``held_back`` was noted (they are coalesced)."""
        self.read_seconds: Observer = NOT_OBSERVED
        self.write_seconds: Observer = NOT_OBSERVED
        """Where ``_all`` and ``_insert`` time their queries (the NS's ``/metrics`` sets them)."""

    @classmethod
    async def open(cls, path: str) -> Self:
        return cls(await open_db(path, _MIGRATIONS))

    async def close(self) -> None:
        await self.db.close()

    async def _all(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        started = time.perf_counter()
        async with self.db.execute(sql, args) as cur:
            rows = await cur.fetchall()
            # The column names once: ``description`` builds a new tuple on every access.
            names = [d[0] for d in cur.description] if rows else []
        self.read_seconds.observe(time.perf_counter() - started)
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def _insert(self, sql: str, args: tuple[Any, ...]) -> int:
        """Insert one row in its own transaction; return its rowid."""
        started = time.perf_counter()
        cur = await self.db.execute(sql, args)
        rowid = int(cur.lastrowid or 0)
        await cur.close()
        await self.db.commit()
        self.write_seconds.observe(time.perf_counter() - started)
        return rowid

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = await self._all(sql, args)
        return rows[0] if rows else None
