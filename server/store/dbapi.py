"""The database beneath :class:`server.store.Store`: one small interface, two implementations.

The store's SQL is written once, in the subset SQLite and PostgreSQL both accept (``?``
placeholders, ``ON CONFLICT`` upserts, ``count(*) FILTER``, row values); the few real
differences are asked of the database itself: a list parameter (:meth:`Database.in_list`),
many rows at once (:meth:`Database.bulk`), NULL-safe equality (:attr:`Database.same`), an
insertion order (:attr:`Database.rowid`).

Transactions are explicit: a store operation that writes runs in ``async with
db.transaction():`` and commits at its end (rolled back if it raises). An asyncio lock makes
one transaction run at a time, so two coroutines never interleave statements inside one
transaction (with the single shared SQLite connection, one coroutine's commit used to commit
what another had half written, and a rollback after a failed write undid another's work).
Statements outside a transaction each commit on their own. A coroutine inside a transaction
that calls another store operation joins the same transaction (a context variable says whose
transaction the running task is in).

This module holds the interface, the errors every caller may catch (:class:`StorageFull`) and
the SQLite implementation; the PostgreSQL one is ``server.store.pgdb``; both are opened in
one place, ``server.store.base.open_database``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import aiosqlite

from runtime.db import open_db

Args = Sequence[Any]


class StorageFull(Exception):
    """The database refused a write for lack of space: SQLite's SQLITE_FULL (a full disk under
    the data folder), PostgreSQL's ``disk_full`` (53100), or ENOSPC. Nothing was stored; the
    same operation may be tried again once there is room."""


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the database has no room left."""
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL:
            return True
        return "database or disk is full" in str(exc)
    return getattr(exc, "sqlstate", None) == "53100"


class Database:
    """What the store needs of a database; see the module's docstring for the rules."""

    dialect = ""
    """``sqlite`` or ``postgresql``."""
    rowid = "rowid"
    """A column that orders a table's rows as they were inserted, for tables without an id."""
    description = ""
    """What it is, for logs and messages (a file's path, or a URL without its password)."""
    same = "IS"
    """The comparison that takes NULL as a value: ``a {same} b`` is true when both are NULL
    (PostgreSQL's ``IS NOT DISTINCT FROM``; SQLite's ``IS``, also before 3.39)."""
    differs = "IS NOT"
    """The negation of :attr:`same`."""

    async def fetch(self, sql: str, args: Args = ()) -> list[tuple[Any, ...]]:
        """Rows as plain tuples (the hot paths read ten thousand)."""
        raise NotImplementedError

    async def fetch_dicts(self, sql: str, args: Args = ()) -> list[dict[str, Any]]:
        """Rows as dicts by column name."""
        raise NotImplementedError

    async def execute(self, sql: str, args: Args = ()) -> int:
        """Run one statement; return how many rows it changed."""
        raise NotImplementedError

    async def executemany(self, sql: str, rows: Iterable[Args]) -> None:
        """Run one statement once per row of arguments (in one transaction, sent at once)."""
        raise NotImplementedError

    async def insert(self, sql: str, args: Args) -> int:
        """Run an INSERT of one row into a table with an ``id``; return that row's id."""
        raise NotImplementedError

    async def bulk(self, sql: str, pg_sql: str, types: Sequence[str], rows: Sequence[Args]) -> None:
        """Many rows in as few statements as the database does best: SQLite runs ``sql`` once
        per row (``executemany``: its statements cost microseconds); PostgreSQL runs ``pg_sql``
        once, whose ``{rows}`` stands for the rows as ``unnest`` of one array per column, typed
        ``types`` (a round trip and a plan for the whole batch, not per row). An UPDATE through
        ``pg_sql`` must not name one row twice (PostgreSQL would apply only one of them)."""
        await self.executemany(sql, rows)

    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        """One transaction: committed at the end of the block, rolled back if it raises.
        Inside another one (of the same task), it joins it."""
        raise NotImplementedError

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction this task is in has committed (the
        outermost one: a joined transaction commits with it), or at once outside a transaction;
        never if it rolls back. The same callback asked twice in one transaction runs once.
        For telling others about a change only when every reader can see it; it must not
        raise, and it runs after the transaction's turn is given up."""
        if not self._in_transaction():
            callback()
        elif callback not in self._after_commit:
            self._after_commit.append(callback)

    _after_commit: list[Callable[[], None]]
    """The callbacks of the transaction in progress (there is one at a time)."""

    def _in_transaction(self) -> bool:
        """Whether the running task is inside this database's transaction."""
        raise NotImplementedError

    def _take_after_commit(self) -> list[Callable[[], None]]:
        """The transaction's callbacks, now that it has ended (run them if it committed)."""
        taken, self._after_commit = self._after_commit, []
        return taken

    async def rollback(self) -> None:
        """Kept for callers that cleaned up after a failed write: transactions now roll
        themselves back, so there is nothing left to undo (and nobody else's work to undo)."""

    async def close(self) -> None:
        raise NotImplementedError

    # -- the dialect's differences --------------------------------------------------------

    def in_list(self, column: str, kind: str = "bigint") -> str:
        """SQL for "``column`` is one of the values of one list parameter" (``kind``
        ``bigint`` or ``text``; ``NOT`` before it negates it); the argument is
        :meth:`list_arg` of the values. One statement for any number of values."""
        raise NotImplementedError

    def list_arg(self, values: Iterable[Any]) -> Any:
        """The argument for :meth:`in_list`."""
        raise NotImplementedError


_IN_SQLITE_TX: contextvars.ContextVar[tuple[SQLiteDatabase, object] | None] = (
    contextvars.ContextVar("taskfleet_sqlite_tx", default=None)
)
"""The database whose transaction the running task holds, with that task: a task started
inside a transaction inherits the variable (``create_task`` copies the context) but is not in
the transaction; without the task in it, it would write past the lock, and nobody would commit
its writes but whoever committed next."""


_COMMITTED_READS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "taskfleet_committed_reads", default=False
)


@contextlib.contextmanager
def committed_reads() -> Iterator[None]:
    """Within the block, a read outside a transaction may be answered from what was last
    committed, without waiting for a write transaction in progress (SQLite: the reader
    connection; PostgreSQL's pool always does). For an administrator's listings, which must not
    queue behind a burst of registrations or a roll-up; not for the NS's own decisions, which
    may follow in-memory state that a transaction in progress is about to commit."""
    token = _COMMITTED_READS.set(True)
    try:
        yield
    finally:
        _COMMITTED_READS.reset(token)


def holder() -> object:
    """Who holds a transaction: the running asyncio task (the variable alone is inherited)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class SQLiteDatabase(Database):
    """Two aiosqlite connections to one file (WAL): the writer, as ``runtime.db.open_db`` opens
    it, and a reader for reads outside a transaction in ``committed_reads`` (admin listings).

    Every write, and every read inside a transaction, takes the writer's lock unless its task
    is inside the transaction that holds it: nobody sees another coroutine's uncommitted rows.
    A read outside a transaction in ``committed_reads`` goes to the reader (``query_only``)
    without the lock: in WAL mode it sees what was committed when it began and never waits for
    a writer, so an administrator's listing is not queued behind a burst of registrations or a
    roll-up (each connection has its own thread). Other reads wait their turn on the writer:
    the NS decides on them together with in-memory state (a TS's route appears while its row's
    transaction is still open). Statements are run so that their cursor is closed in the
    database's thread (``runtime.db.run_many`` tells why).
    """

    dialect = "sqlite"
    rowid = "rowid"

    def __init__(
        self, conn: aiosqlite.Connection, path: str = "", reader: aiosqlite.Connection | None = None
    ):
        self.conn = conn
        self.reader = reader
        """The connection for reads outside a transaction (None: they use the writer)."""
        self.description = path
        self._lock = asyncio.Lock()
        self._after_commit = []

    @classmethod
    async def open(cls, path: str, migrations: list[str]) -> SQLiteDatabase:
        conn = await open_db(path, migrations)
        try:
            reader = await aiosqlite.connect(path)
            try:
                await reader.execute_fetchall("PRAGMA query_only=1")
                await reader.execute_fetchall("PRAGMA busy_timeout=5000")
            except BaseException:
                await reader.close()
                raise
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path, reader)

    def _for_read(self) -> aiosqlite.Connection | None:
        """The reader, for a read outside a transaction in ``committed_reads``; None: read on
        the writer (after any transaction in progress)."""
        if self._inside() or not _COMMITTED_READS.get():
            return None
        return self.reader

    def _inside(self) -> bool:
        held = _IN_SQLITE_TX.get()
        return held is not None and held[0] is self and held[1] is holder()

    def _in_transaction(self) -> bool:
        return self._inside()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The connection for one statement outside a transaction (its turn at the lock)."""
        if self._inside():
            yield
            return
        async with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._inside():
            yield
            return
        async with self._lock:
            token = _IN_SQLITE_TX.set((self, holder()))
            try:
                yield
                await self.conn.commit()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self.conn.rollback()
                if isinstance(exc, sqlite3.Error) and storage_full(exc):
                    raise StorageFull(f"{self.description}: {exc}") from exc
                raise
            finally:
                _IN_SQLITE_TX.reset(token)
                committed = self._take_after_commit()
        for callback in committed:  # reached only when it committed
            callback()

    async def fetch(self, sql: str, args: Args = ()) -> list[tuple[Any, ...]]:
        reader = self._for_read()
        if reader is not None:
            return await reader.execute_fetchall(sql, args)  # type: ignore[return-value]
        async with self._turn():
            rows = await self.conn.execute_fetchall(sql, args)
        return rows  # type: ignore[return-value]  # sqlite3 rows are tuples

    async def fetch_dicts(self, sql: str, args: Args = ()) -> list[dict[str, Any]]:
        reader = self._for_read()
        if reader is not None:
            async with reader.execute(sql, args) as cur:
                return _dicts(await cur.fetchall(), cur)
        async with self._turn(), self.conn.execute(sql, args) as cur:
            return _dicts(await cur.fetchall(), cur)

    async def execute(self, sql: str, args: Args = ()) -> int:
        async with self.transaction(), self.conn.execute(sql, args) as cur:
            return max(0, cur.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Args]) -> None:
        async with self.transaction(), self.conn.executemany(sql, rows):
            pass

    async def insert(self, sql: str, args: Args) -> int:
        async with self.transaction(), self.conn.execute(sql, args) as cur:
            return int(cur.lastrowid or 0)

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.close()
        await self.conn.close()

    def in_list(self, column: str, kind: str = "bigint") -> str:
        return f"{column} IN (SELECT value FROM json_each(?))"

    def list_arg(self, values: Iterable[Any]) -> Any:
        return json.dumps(list(values))


def _dicts(rows: Iterable[Any], cur: Any) -> list[dict[str, Any]]:
    """Rows as dicts by column name (the names read once: ``description`` builds a new tuple
    on every access)."""
    rows = list(rows)
    names = [d[0] for d in cur.description] if rows else []
    return [dict(zip(names, r, strict=True)) for r in rows]


def is_postgres_url(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than an SQLite file."""
    return target.startswith(("postgresql://", "postgres://"))
