"""The base every part of :class:`server.store.Store` builds on: the database (SQLite or
PostgreSQL, ``server.store.dbapi``), opening and closing it, and the three query helpers
(``_all``, ``_one``, ``_insert``) every table's methods use.
"""

from __future__ import annotations

import time
from typing import Any, Self

from runtime.metrics import NOT_OBSERVED, Observer
from server.store.dbapi import Database, SQLiteDatabase, is_postgres_url
from server.store.pgdb import PostgresDatabase
from server.store.schema import _MIGRATIONS


async def open_database(target: str, migrations: list[str]) -> Database:
    """The one place the NS's database is opened: a ``postgresql://`` URL, or an SQLite file's
    path; its migrations applied (PostgreSQL's translated by ``server.store.pgdb.translate``)."""
    if is_postgres_url(target):
        return await PostgresDatabase.open(target, migrations)
    return await SQLiteDatabase.open(target, migrations)


class StoreBase:
    """The database and the query helpers; the tables' methods live in the mixins."""

    def __init__(self, db: Database):
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
    async def open(cls, target: str) -> Self:
        """Open the store: ``target`` is an SQLite file's path or a ``postgresql://`` URL (the
        one place either is opened; ``close`` is the one place it is closed)."""
        return cls(await open_database(target, _MIGRATIONS))

    async def close(self) -> None:
        await self.db.close()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.db.dialect

    async def _all(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        started = time.perf_counter()
        rows = await self.db.fetch_dicts(sql, args)
        self.read_seconds.observe(time.perf_counter() - started)
        return rows

    async def _insert(self, sql: str, args: tuple[Any, ...]) -> int:
        """Insert one row in its own transaction; return its id."""
        started = time.perf_counter()
        rowid = await self.db.insert(sql, args)
        self.write_seconds.observe(time.perf_counter() - started)
        return rowid

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = await self._all(sql, args)
        return rows[0] if rows else None

    async def _journal(self, kind: str, name: str, doc: dict[str, Any] | None) -> None:
        """A replicated item is about to change (``doc``: as it will be; None: deleted): the
        hierarchy's journal (``server.store.hierarchy``, which overrides this) records it in
        the same transaction. Called by every save and delete of a task, job, policy, filter
        or group, before it writes."""
