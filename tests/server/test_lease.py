"""The active NS's lease (``server.store.lease``) on a real PostgreSQL: the session that holds
the lock is the fence, a standby ends a holder that stopped renewing, a clean stop hands over at
once, and a holder past its own deadline renews before it writes (or finds it was fenced)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from server.store import Store
from server.store.lease import Fenced, Lease
from server.store.pgdb import PostgresDatabase


def lease(url: str, who: str, **timing: float) -> Lease:
    return Lease(url, who, "ns:key tls=-", log=_Log(), **timing)


class _Log:
    """The structlog-like calls the lease makes, kept for the test to read."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str):
        def record(event: str, **fields: object) -> None:
            self.events.append(event)

        return record


async def active_store(url: str, held: Lease) -> PostgresDatabase:
    store = await Store.open(url)
    assert isinstance(store.db, PostgresDatabase)
    await held.install(store.db)
    return store.db


async def probe_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM probe"))
    finally:
        await conn.close()


@pytest.fixture
async def probe(postgres_url: str) -> str:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE probe (x BIGINT)")
    finally:
        await conn.close()
    return postgres_url


async def test_a_holder_that_stops_renewing_is_fenced_by_its_session(probe: str):
    """A never renews (a paused process); its own clock would still let it write (a lease of
    1000 s), so only the session fence stands between it and the database. B, with a 1 s
    lease, ends A's session and takes over: A's next write fails, and nothing of it lands."""
    a = lease(probe, "a", lease_s=1000, margin_s=0)
    assert await a.try_acquire()
    db_a = await active_store(probe, a)
    await db_a.execute("INSERT INTO probe VALUES (1)")
    b = lease(probe, "b", lease_s=1, poll_s=0.1)
    assert not await b.try_acquire()
    await asyncio.wait_for(b.acquire(), 15)
    assert "fencing_stale_active" in b.log.events  # type: ignore[attr-defined]
    with pytest.raises((Fenced, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await db_a.execute("INSERT INTO probe VALUES (2)")
    assert await probe_rows(probe) == 1
    assert a.lost_reason is not None, "A did not notice its session ended"
    with pytest.raises(Fenced):  # and it stays refused, never falling back to the pool
        await db_a.execute("INSERT INTO probe VALUES (3)")
    await b.close()
    await a.close()
    await db_a.close()


async def test_a_clean_stop_hands_over_at_once(probe: str):
    a = lease(probe, "a")
    assert await a.try_acquire()
    b = lease(probe, "b", poll_s=0.1)
    assert not await b.try_acquire()
    waiting = asyncio.create_task(b.acquire())
    await a.close()
    await asyncio.wait_for(waiting, 5)  # far less than the 10 s lease
    assert b.active and "fencing_stale_active" not in b.log.events  # type: ignore[attr-defined]
    await b.close()


async def test_a_late_holder_renews_before_it_writes(probe: str):
    """Past its own deadline with no renewal (a lone NS too busy to renew on time), the holder
    renews through its session before the write, and the write goes on: nobody else could be
    active while that session holds the lock."""
    a = lease(probe, "a", lease_s=0.6, margin_s=0.3)
    assert await a.try_acquire()
    db_a = await active_store(probe, a)
    await asyncio.sleep(0.5)
    await db_a.execute("INSERT INTO probe VALUES (1)")
    assert a.lost_reason is None and await probe_rows(probe) == 1
    await a.close()
    await db_a.close()


async def test_a_late_holder_whose_session_was_ended_stands_down_at_its_write(probe: str):
    """Paused past its lease and fenced meanwhile: its first write tries to renew, finds its
    session gone, and is refused; it says it lost the lease; nothing lands."""
    a = lease(probe, "a", lease_s=1, margin_s=0.5)
    assert await a.try_acquire()
    db_a = await active_store(probe, a)
    lost: list[str] = []
    a._on_lost = lost.append
    a.conn.remove_termination_listener(a._terminated)  # as if paused: it notices nothing
    b = lease(probe, "b", lease_s=1, poll_s=0.1)
    await asyncio.wait_for(b.acquire(), 15)
    with pytest.raises(Fenced):
        await db_a.execute("INSERT INTO probe VALUES (1)")
    assert lost and "session is gone" in lost[0]
    assert await probe_rows(probe) == 0
    await b.close()
    await a.close()
    await db_a.close()


async def test_renewals_keep_the_lease(probe: str):
    a = lease(probe, "a", lease_s=0.9, margin_s=0.3, renew_s=0.1)
    assert await a.try_acquire()
    lost: list[str] = []
    keeping = asyncio.create_task(a.keep(lost.append))  # before the store, as the NS does
    db_a = await active_store(probe, a)
    await asyncio.sleep(1.5)  # longer than the lease: only renewals keep it
    await db_a.execute("INSERT INTO probe VALUES (1)")
    assert not lost and await probe_rows(probe) == 1
    keeping.cancel()
    await a.close()
    await db_a.close()
