"""Which of two NS on one PostgreSQL database is the active one: a lease fenced by a session.

Two ``taskfleet server --database postgresql://...`` processes share one database; one acts
(serves, sequences runs, writes), the other waits as a standby. The active one is the holder of
a session-level advisory lock (:data:`ACTIVE_LOCK`), taken on the very connection through which
every one of its writes goes (``PostgresDatabase.writer``). That is the fence: the moment its
session is gone, its lock is gone and not one more write of it can land, whatever the process
still believes.

- **The lease.** The active NS renews the row of ``taskfleet_lease`` every :data:`RENEW_S`
  seconds through that same connection (``renewed_at = now()``, the database's clock, so no two
  machines' clocks are compared).
- **A standby** tries the lock every :data:`POLL_S`. When the active process died (kill -9, a
  crash, a clean stop), PostgreSQL ends its session at once and the standby gets the lock on its
  next try. When the active process lives but does not renew (paused, starved, cut off from the
  database) for :data:`LEASE_S`, the standby ends its session itself (``pg_terminate_backend``),
  which fences it, and takes the lock once that session is gone.
- **The active one stops acting** when its session ends (the connection's termination
  listener) or a renewal fails or finds another holder. Every write transaction checks first
  (``PostgresDatabase.write_guard``, :meth:`Lease.check`): once its last good renewal is older
  than ``LEASE_S - MARGIN_S`` by its own clock (a standby could fence it soon), the write renews
  through the same session before it goes on, so a process resumed after a pause finds out at
  its first write, and a lone NS too busy to renew on time just renews late. It then goes back
  to being a standby (``server.core``; ``admin.roles`` starts a fresh NS in the same process).

- **The times** are the defaults below for a lease of 10 s; ``--lease-timeout-s`` sets another
  (:func:`timings`: the others in the same proportions), for sites with a slow database link.
- **Seeing the pair.** A standby answers nothing (its ports do not accept), so it marks the lease
  row when it tries the lock (``standby``, ``standby_at``: at most once per renewal period), and
  the active one reads the mark with its renewals (:meth:`Lease.standby_view`): its ``stats``
  and metrics then say whether a standby is there to take over.

With SQLite (no ``--database``) there is no lease and the NS is always active.

On a takeover, the built-in task service's held work (kept in the old active's own data
folder, not in the database) is dispatched again to the new one's (:func:`redispatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from runtime.db import DatabaseUnusable
from server.store.dbapi import Database
from server.store.pgdb import MIGRATION_LOCK, PostgresDatabase, safe_url
from server.store.runs import _TERMINAL_SQL

ACTIVE_LOCK = (0x7466, 0x4E53)
"""The advisory lock (two-int form: "tf", "NS") whose holder is the active NS."""
LEASE_S = 10.0
"""How long an active NS that does not renew keeps its place before a standby fences it."""
RENEW_S = 2.0
"""How often the active NS renews."""
MARGIN_S = 3.0
"""From this long before a standby could fence it (by its own clock, counted from when its last
good renewal was sent), the active NS renews before each write."""
POLL_S = 0.5
"""How often a standby tries the lock: a dead active is replaced within about this."""
MIN_LEASE_S = 3.0
"""The shortest lease a site may set (``--lease-timeout-s``): below it a busy active NS, or a
database's hiccup, would be fenced for nothing."""


def timings(lease_s: float) -> dict[str, float]:
    """The lease's times for a site's ``--lease-timeout-s``, in the default's proportions:
    renew every fifth of it, renew before writing from 30 % before its end, and try the lock
    every twentieth of it (at most every :data:`POLL_S`: a dead active is replaced as fast)."""
    if not lease_s >= MIN_LEASE_S or math.isinf(lease_s):  # ``not >=``: NaN too
        raise ValueError(
            f"the lease timeout must be a number of seconds, at least {MIN_LEASE_S:g}"
            f" (got {lease_s:g}): shorter, a busy active NS would be fenced for nothing"
        )
    return {
        "lease_s": lease_s,
        "renew_s": lease_s / 5,
        "margin_s": lease_s * MARGIN_S / LEASE_S,
        "poll_s": min(POLL_S, lease_s / 20),
    }


SCHEMA = (
    "CREATE TABLE IF NOT EXISTS taskfleet_lease (id INT PRIMARY KEY CHECK (id = 1),"
    " holder TEXT NOT NULL, pid INT NOT NULL, renewed_at TIMESTAMPTZ NOT NULL,"
    " identity TEXT NOT NULL, standby TEXT, standby_at TIMESTAMPTZ)"
)
STANDBY_COLUMNS = (
    "ALTER TABLE taskfleet_lease ADD COLUMN IF NOT EXISTS standby TEXT,"
    " ADD COLUMN IF NOT EXISTS standby_at TIMESTAMPTZ"
)
"""The standby's own mark (who waits, when it last tried), for a table made before it had one."""
HAS_STANDBY_COLUMNS = (
    "SELECT count(*) FROM information_schema.columns WHERE table_name = 'taskfleet_lease'"
    " AND table_schema = current_schema() AND column_name = 'standby_at'"
)
RECORD_STANDBY = "UPDATE taskfleet_lease SET standby = $1, standby_at = now() WHERE id = 1"
READ_STANDBY = (
    "SELECT standby, extract(epoch FROM now() - standby_at)::float8 FROM taskfleet_lease"
    " WHERE id = 1"
)
RENEW = "UPDATE taskfleet_lease SET renewed_at = now() WHERE id = 1 AND pid = pg_backend_pid()"
HOLDER_PID = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = $2"
    " AND objsubid = 2 AND granted"
)


UNREACHABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
"""What a lost or refused database connection raises."""


class Fenced(Exception):
    """This NS is no longer the active one: its writes are refused (another may be active)."""


def holder_name(name: str) -> str:
    """Who holds the lease, as the other NS's log shows it."""
    return f"{name} on {socket.gethostname()} pid {os.getpid()}"


class Lease:
    """The active NS's lease over one PostgreSQL database; see the module.

    ``identity`` is what both NS of a pair must share (name, signing key, TLS certificate): a
    standby whose identity differs from the active one's refuses to run, since agents' tickets
    and pinned fingerprints would not survive a takeover by it.
    """

    def __init__(
        self,
        url: str,
        holder: str,
        identity: str,
        *,
        log: Any,
        lease_s: float = LEASE_S,
        renew_s: float = RENEW_S,
        margin_s: float = MARGIN_S,
        poll_s: float = POLL_S,
    ):
        self.url = url
        self.description = safe_url(url)
        self.db: PostgresDatabase | None = None
        """The store's database, once opened (``install``): renewals then take its write lock."""
        self.holder = holder
        self.identity = identity
        self.log = log
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.margin_s = margin_s
        self.poll_s = poll_s
        self.conn: Any = None
        """The session that holds (or tries for) the lock; the writer once active."""
        self.active = False
        self.lost_reason: str | None = None
        self._valid_until = 0.0
        self._on_lost: Callable[[str], None] | None = None
        self._seen: tuple[int, float] | None = None
        """A holder with no lease row of its own yet, and when this standby first saw it."""
        self._alone = asyncio.Lock()
        """The session's turn before ``install`` (a renewal, or the hand-over itself)."""
        self.active_holder: str | None = None
        """As a standby: who holds the lease, as its row names it (None: not seen yet)."""
        self._recorded = -float("inf")
        """As a standby: when it last marked itself in the lease row (monotonic)."""
        self._standby: tuple[str, float, float] | None = None
        """As the active one: the standby its row names, how long ago (by the database's clock)
        it last tried the lock, and when that was read (monotonic); None: none ever seen."""
        self._standby_fresh = False
        self._watching: asyncio.Task[None] | None = None
        """The read of the standby's mark in flight (``_watch_standby``)."""

    # -- becoming active -------------------------------------------------------------------

    async def _session(self) -> Any:
        if self.conn is None or self.conn.is_closed():
            try:
                self.conn = await asyncpg.connect(self.url)
                async with self.conn.transaction():
                    await self.conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                    await self.conn.execute(SCHEMA)
                    if not await self.conn.fetchval(HAS_STANDBY_COLUMNS):
                        await self.conn.execute(STANDBY_COLUMNS)
            except UNREACHABLE as exc:
                await self._drop()
                raise DatabaseUnusable(
                    f"cannot connect to the database {self.description}: {exc}; check that"
                    " PostgreSQL runs there, the database exists and this user may use it"
                ) from None
        return self.conn

    async def _drop(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            self.conn.terminate()
        self.conn = None

    async def try_acquire(self) -> bool:
        """One try: True if this NS is now the active one (the lock taken and the lease row
        written through the session that holds it)."""
        conn = await self._session()
        sent = time.monotonic()
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *ACTIVE_LOCK):
            await self._check_holder(conn)
            return False
        await conn.execute(
            "INSERT INTO taskfleet_lease(id, holder, pid, renewed_at, identity)"
            " VALUES (1, $1, pg_backend_pid(), now(), $2) ON CONFLICT (id) DO UPDATE SET"
            " holder = excluded.holder, pid = excluded.pid, renewed_at = excluded.renewed_at,"
            " identity = excluded.identity, standby = NULL, standby_at = NULL",
            self.holder,
            self.identity,
        )
        self._valid_until = sent + self.lease_s - self.margin_s
        self.active = True
        conn.add_termination_listener(self._terminated)
        self.log.info("lease_taken", holder=self.holder, lease_s=self.lease_s)
        return True

    async def install(self, db: PostgresDatabase) -> None:
        """The store is open (migrated, only now that this NS is active): from here on every
        write goes through the session that holds the lock, and is checked first."""
        async with self._alone:
            db.writer = self.conn
            db.write_guard = self.check
            self.db = db

    async def acquire(self) -> None:
        """Wait until this NS is the active one (fencing a holder that stopped renewing). The
        database being away for a while is waited out: a standby stays one."""
        told = False
        while True:
            try:
                if await self.try_acquire():
                    return
                told = False
            except DatabaseUnusable as exc:
                if self.conn is not None:  # reached, and refused: identity differs
                    raise
                if not told:
                    self.log.warning("standby_database_unreachable", error=str(exc))
                    told = True
            except UNREACHABLE as exc:
                await self._drop()
                if not told:
                    self.log.warning("standby_database_unreachable", error=str(exc))
                    told = True
            await asyncio.sleep(self.poll_s)

    async def _check_holder(self, conn: Any) -> None:
        """As a standby: refuse a pair that does not share its identity, and fence a holder
        whose lease ran out."""
        pid = await conn.fetchval(HOLDER_PID, *ACTIVE_LOCK)
        if pid is None:
            return  # let go meanwhile: the next try takes it
        row = await conn.fetchrow(
            "SELECT holder, pid, identity, extract(epoch FROM now() - renewed_at)::float8 AS age"
            " FROM taskfleet_lease WHERE id = 1"
        )
        if row is not None and row["pid"] == pid:
            if row["identity"] != self.identity:
                raise DatabaseUnusable(
                    f"the active NS on {self.description} ({row['holder']}) has another"
                    f" name, key or TLS certificate ({row['identity']}; this one: {self.identity});"
                    " a standby must share them: give it the same --name and copy DATA/server.key"
                    " and DATA/tls/ from the active one (docs/operations.md, 'Two NS on"
                    " PostgreSQL')"
                )
            holder, age = str(row["holder"]), float(row["age"])
            self.active_holder = holder
            await self._mark_standby(conn)
        else:  # it took the lock and has not written its row yet: count from now
            if self._seen is None or self._seen[0] != pid:
                self._seen = (pid, time.monotonic())
            holder, age = f"session {pid}", time.monotonic() - self._seen[1]
        if age > self.lease_s:
            self.log.warning(
                "fencing_stale_active", holder=holder, pid=pid, renewed_s_ago=round(age, 1)
            )
            await conn.execute("SELECT pg_terminate_backend($1)", pid)

    async def _mark_standby(self, conn: Any) -> None:
        """Say in the lease row that this NS waits (at most once per renewal period), so the
        active one can show its operator whether a standby is there (``standby_view``)."""
        now = time.monotonic()
        if now - self._recorded >= self.renew_s:
            self._recorded = now
            try:
                await conn.execute(RECORD_STANDBY, self.holder)
            except asyncpg.PostgresError as exc:  # a full disk...: the waiting goes on
                self.log.debug("standby_unmarked", error=str(exc))

    # -- staying active ----------------------------------------------------------------------

    def standby_view(self) -> dict[str, Any]:
        """As the active one: the standby the lease row names (None: none ever tried), how many
        seconds ago it last tried the lock, and whether that is within the lease time (a standby
        that would take over now if this NS died)."""
        if self._standby is None:
            return {"standby": None, "standby_seen_s": None, "standby_up": False}
        name, age, read_at = self._standby
        seen = round(age + time.monotonic() - read_at, 1)
        return {"standby": name, "standby_seen_s": seen, "standby_up": seen <= self.lease_s}

    async def _watch_standby(self) -> None:
        """As the active one, after a renewal: read who waits, and log when a standby appears
        (``standby_seen``) or stops trying (``standby_gone``)."""
        if self.db is None:
            return
        try:
            rows = await self.db.fetch(READ_STANDBY)
        except Exception as exc:  # a read that fails says nothing about the lease
            self.log.debug("standby_unread", error=str(exc) or type(exc).__name__)
            return
        if not rows or rows[0][0] is None:
            self._standby = None
        else:
            self._standby = (str(rows[0][0]), float(rows[0][1]), time.monotonic())
        view = self.standby_view()
        if view["standby_up"] and not self._standby_fresh:
            self.log.info("standby_seen", standby=view["standby"])
        elif self._standby_fresh and not view["standby_up"]:
            self.log.warning(
                "standby_gone", standby=view["standby"], seen_s_ago=view["standby_seen_s"]
            )
        self._standby_fresh = bool(view["standby_up"])

    async def keep(self, lost: Callable[[str], None]) -> None:
        """Renew until the lease is lost (then ``lost(reason)``, once) or this is cancelled."""
        self._on_lost = lost
        if self.lost_reason is not None:
            lost(self.lost_reason)
            return
        while self.lost_reason is None:
            await asyncio.sleep(self.renew_s)
            sent = time.monotonic()
            try:
                renewed = await self._renew()
            except asyncio.CancelledError:
                raise
            except Fenced:
                return  # lost already (``check`` said why)
            except Exception as exc:
                error = str(exc) or type(exc).__name__
                if self.conn is None or self.conn.is_closed():
                    self._lose(f"renewing the lease failed, its session is gone: {error}")
                    return
                # The database answered (a full disk...): still this session's lock. Writes
                # renew before they go on once it is late (``check``); try again next round.
                self.log.warning("lease_renewal_failed", error=error)
                continue
            if renewed != 1:
                self._lose("another NS holds the lease")
                return
            self._valid_until = sent + self.lease_s - self.margin_s
            if self._watching is None or self._watching.done():
                # Beside the renewals, never in their way: a read waiting for a busy pool must
                # not make a healthy active one late.
                self._watching = asyncio.create_task(self._watch_standby())

    async def _renew(self) -> int:
        """One renewal through the lock's session: under the store's write lock once installed
        (a statement of its own between another transaction's would commit with it)."""
        if self.db is None:
            async with self._alone:
                if self.db is None:
                    status = await self.conn.execute(RENEW)
                    return 1 if status.endswith(" 1") else 0
        assert self.db is not None
        async with self.db.transaction():
            return await self.db.execute(RENEW)

    async def check(self, conn: Any) -> None:
        """Before every write (the writer's turn held): raise :class:`Fenced` unless this NS is
        surely still the active one. Past its own deadline (renewals late: a paused process, or
        one too busy to renew in time) it renews first, through the same session: if that works,
        the lock is still this session's and nobody else can be active (a lone NS under load
        never stands down for being late); if the session was ended, it stands down."""
        if self.lost_reason is None and time.monotonic() > self._valid_until:
            sent = time.monotonic()
            try:
                status = await conn.execute(RENEW)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if conn.is_closed():
                    self._lose(f"late, and its session is gone: {str(exc) or type(exc).__name__}")
                # Else the database answered (a full disk...): the session, and so the lock, is
                # still this one's; the write meets the same trouble and reports it as usual.
            else:
                if status.endswith(" 1"):
                    self._valid_until = sent + self.lease_s - self.margin_s
                else:
                    self._lose("late, and another NS holds the lease")
        if self.lost_reason is not None:
            raise Fenced(f"this NS stood down ({self.lost_reason}); another NS may be active")

    def _terminated(self, conn: Any) -> None:
        if self.active:
            self._lose(
                "its database session ended (fenced by a standby, or the database went away)"
            )

    def _lose(self, reason: str) -> None:
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self.active = False
        self.log.error("lease_lost", reason=reason, holder=self.holder)
        if self._on_lost is not None:
            self._on_lost(reason)

    async def close(self) -> None:
        """Let go (a clean stop): the session ends, and with it the lock, so a standby takes
        over on its next try instead of waiting out the lease."""
        self.active = False
        if self._watching is not None:
            self._watching.cancel()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), 5)
            if not self.conn.is_closed():
                self.conn.terminate()
        self.conn = None


async def redispatch(db: Database, route: str) -> int:
    """Mark ``route``'s unfinished instances to be dispatched again; return how many.

    For the built-in task service after a takeover: what it held lives in the old active's data
    folder, so the new active's service must be given it again. Nothing runs twice: a relay
    drops an instance it already holds, and an agent answers a repeat with the result it kept.
    Step rows of client jobs (``parent_id``) are never dispatched themselves."""
    return await db.execute(
        "UPDATE instances SET dispatched=0 WHERE route=? AND dispatched=1"
        f" AND parent_id IS NULL AND status NOT IN {_TERMINAL_SQL}",
        (route,),
    )
