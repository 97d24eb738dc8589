"""SQLite as every role opens it, and the rows that carry results between roles.

``open_db`` opens a file in WAL mode (created 0600 in a folder created 0700), checks it
(``PRAGMA quick_check``) and applies forward migrations; a file that is damaged or cannot be
used raises ``DatabaseUnusable``, which names the file and what to do; ``run_many`` is the
``executemany`` that is safe beside aiosqlite's statement cache, ``transaction`` several
writes and their commit in one call to the database's thread; ``report_to_row`` and
``report_from_row`` are an outbox row (the agent's and the task server's); ``SEEN_KEEP_S`` is how
long agents and relays remember the instances they took, to drop repeats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import aiosqlite
import msgpack

from protocol.messages import Report

_T = TypeVar("_T")
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


Write = tuple[str, Sequence[Any]]
"""One statement of a ``transaction``: SQL and its parameters."""


async def transaction(db: aiosqlite.Connection, writes: Iterable[Write]) -> None:
    """Run ``writes`` and commit them, all in one call to the database's thread; on an error
    nothing of them is kept (rolled back there) and the error is raised here.

    One hand-off to that thread (and one back) instead of one per statement and one for the
    commit: on an agent each hand-off costs more CPU than the statement it carries (two thread
    switches and a wake-up of the event loop), and a task instance stores three times. Every
    cursor lives and dies in that thread (``run_many`` tells why that matters).
    """
    batch = list(writes)

    def apply(conn: sqlite3.Connection) -> None:
        try:
            for sql, params in batch:
                conn.execute(sql, params).close()
            conn.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            raise

    await in_db_thread(db, apply)


async def in_db_thread(db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """``work(connection)`` in the database's own thread, as one queued call (the way aiosqlite
    runs each of its own methods; it has no public name for running a function there)."""
    queue: Callable[[Callable[[], _T]], Awaitable[_T]] = db._execute
    return await queue(lambda: work(db._conn))


class DatabaseUnusable(RuntimeError):
    """A database file a role cannot start on; the message names the file and what to do."""


RESTORE_HINT = (
    "move it (with its -wal and -shm files) aside and restore the latest backup in its place"
    " (`taskfleet backup`; docs/operations.md), or start without it to begin empty (what it held"
    " is then lost)"
)


def make_private_dir(path: str) -> str | None:
    """Create ``path`` (and missing parents) with mode 0700. A folder that already exists is left
    as it is (it may be shared on purpose): if others can reach it, the answer is a warning."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # mode= is cut by the umask and not given to parents
        return None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        return (
            f"the data folder {path} is open to other users (mode {mode:04o}): it holds keys and"
            f" tokens; make it private with `chmod 700 {path}`"
        )
    return None


def _private_file(path: str) -> None:
    """Create the database file 0600 before SQLite opens it (its -wal and -shm files get the
    main file's mode), or take group and other access from one an earlier build made wider."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for name in (path, path + "-wal", path + "-shm"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & 0o077:
                os.chmod(name, mode & 0o700)
        except FileNotFoundError:
            continue


async def open_db(path: str, migrations: list[str]) -> aiosqlite.Connection:
    """Open (creating) a SQLite file in WAL mode, check it, and apply forward migrations.

    Raises ``DatabaseUnusable`` (with the connection closed, so no thread holds the process
    open) when the file is not a database, fails ``PRAGMA quick_check``, is newer than this
    build, or cannot be opened or written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        make_private_dir(folder)
    try:
        _private_file(path)
    except OSError as exc:
        raise DatabaseUnusable(f"cannot create {path}: {exc.strerror or exc}") from exc
    db = await aiosqlite.connect(path)
    try:
        await _prepare(db, path, migrations)
    except BaseException as exc:
        await db.close()
        if isinstance(exc, DatabaseUnusable | sqlite3.OperationalError):
            if isinstance(exc, sqlite3.OperationalError):
                raise DatabaseUnusable(
                    f"cannot use the database {path}: {exc}; check its permissions and the"
                    " free disk space, and that no other taskfleet uses this data folder"
                ) from exc
            raise
        if isinstance(exc, sqlite3.DatabaseError):
            raise DatabaseUnusable(
                f"the database {path} is damaged ({exc}); {RESTORE_HINT}"
            ) from exc
        raise
    return db


async def _prepare(db: aiosqlite.Connection, path: str, migrations: list[str]) -> None:
    await db.execute_fetchall("PRAGMA journal_mode=WAL")
    await db.execute_fetchall("PRAGMA synchronous=NORMAL")
    await db.execute_fetchall("PRAGMA foreign_keys=ON")
    await db.execute_fetchall("PRAGMA busy_timeout=5000")
    problems = [str(r[0]) for r in await db.execute_fetchall("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise DatabaseUnusable(
            f"the database {path} is damaged (quick_check: {'; '.join(problems)}); {RESTORE_HINT}"
        )
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    if current > len(migrations):
        raise DatabaseUnusable(
            f"{path} has schema version {current}, newer than this taskfleet ({len(migrations)}); "
            "upgrade taskfleet"
        )
    for version in range(current, len(migrations)):
        async with db.executescript(
            "BEGIN;\n" + migrations[version] + f"\nPRAGMA user_version={version + 1};\nCOMMIT;"
        ):
            pass


SEEN_KEEP_S = 14 * 24 * 3600
"""How long agents and relays remember an instance they took, so a re-sent one is a repeat."""
