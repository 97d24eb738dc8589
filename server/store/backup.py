"""A consistent copy of the NS database while the NS runs (``taskfleet backup FILE``).

SQLite's online backup API copies the database from a connection of its own, in one step: one
read transaction, so the copy is the database as it stood at one instant, and (in WAL mode)
the NS goes on writing meanwhile. It runs in a thread of its own (``asyncio.to_thread``), not in
the NS's database thread, so no request waits for it. How to restore: ``docs/operations.md``.

An NS on PostgreSQL (``--database``) refuses: PostgreSQL's own tools back it up (``pg_dump``,
or its continuous archiving for point-in-time recovery), and its replication keeps a copy.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from typing import Any

from server.store.dbapi import is_postgres_url

SQLITE_HEADER = b"SQLite format 3\x00"


class BackupError(Exception):
    """The backup was refused or failed; the message says what to do."""


def write_backup(db_path: str, dest: str, force: bool = False) -> dict[str, Any]:
    """Copy the database at ``db_path`` to ``dest`` (a new file, mode 0600); return its size.

    ``dest`` must be an absolute path in an existing folder. An existing file is replaced only
    with ``force`` and only if it is itself an SQLite database (an earlier backup): ``--force``
    never overwrites some other file. The copy is written beside ``dest`` first and renamed into
    place once complete and checked, so ``dest`` is never a half-written database.
    """
    if is_postgres_url(db_path):
        raise BackupError(
            "this NS keeps its tables in PostgreSQL: back them up with PostgreSQL's own tools"
            " (pg_dump -Fc DATABASE, or continuous archiving); docs/operations.md"
        )
    if not os.path.isabs(dest):
        raise BackupError(
            f"give the backup file as an absolute path on the server's machine, not {dest!r}"
        )
    dest = os.path.normpath(dest)
    live = os.path.realpath(db_path)
    if os.path.realpath(dest) in (live, live + "-wal", live + "-shm", live + "-journal"):
        raise BackupError(f"{dest} is the live database itself: choose another file")
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise BackupError(f"the folder {folder} does not exist on the server's machine")
    _may_replace(dest, force)
    tmp = os.path.join(folder, f".{os.path.basename(dest)}.{secrets.token_hex(4)}.partial")
    started = time.monotonic()
    try:
        # Created here, 0600 and exclusive, before SQLite opens it (SQLite keeps the mode).
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        src = sqlite3.connect(db_path)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
                (check,) = dst.execute("PRAGMA quick_check").fetchone()
                if check != "ok":
                    raise BackupError(f"the copy failed its integrity check ({check}); try again")
            finally:
                dst.close()
        finally:
            src.close()
        os.chmod(tmp, 0o600)
        _may_replace(dest, force)  # again: something may have appeared meanwhile
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        for extra in ("-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(tmp + extra)
    return {
        "path": dest,
        "bytes": os.path.getsize(dest),
        "seconds": round(time.monotonic() - started, 3),
    }


def _may_replace(dest: str, force: bool) -> None:
    if not os.path.lexists(dest):
        return
    if not force:
        raise BackupError(f"{dest} exists: choose a new file, or give --force to replace it")
    if os.path.islink(dest) or not os.path.isfile(dest):
        raise BackupError(f"{dest} is not a regular file: --force replaces only an earlier backup")
    try:
        with open(dest, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise BackupError(f"cannot read {dest} ({exc.strerror})") from None
    if header != SQLITE_HEADER:
        raise BackupError(
            f"{dest} is not an SQLite database: --force replaces only an earlier backup"
        )
