"""Issue 23's remaining points, on a real PostgreSQL (and SQLite where both apply):

- the database's size in ``stats`` and ``/metrics`` (``pg_database_size`` on PostgreSQL, the
  files on SQLite);
- the active NS sees its standby: the standby marks the lease row, the active one reads it,
  shows it and logs when it comes and goes;
- the lease's times follow ``--lease-timeout-s`` (at least 3 s);
- a full disk under PostgreSQL's files is ``StorageFull``, as SQLite's is: a tablespace on a
  small tmpfs, filled for real.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from admin.client import AdminClient
from server.core import NotificationServer
from server.store import Store
from server.store.dbapi import StorageFull
from server.store.lease import LEASE_S, MARGIN_S, POLL_S, RENEW_S, Lease, timings
from server.store.pgdb import PostgresDatabase
from tests import helpers
from tests.helpers import INSECURE, until
from tests.pgcluster import Cluster, NoPostgres


class _Log:
    """The structlog-like calls the lease makes, kept (with their fields) for the test."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def __getattr__(self, level: str):
        def record(event: str, **fields: Any) -> None:
            self.events.append((event, fields))

        return record


async def metrics_text(port: int) -> str:
    """``/metrics`` of an in-process NS (plain ws://, so plain HTTP) from loopback."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: ns\r\nConnection: close\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    assert head.split()[1] == "200", head
    return body


def samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


async def pg_size(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


# -- 1. the database's size ---------------------------------------------------------------------


async def test_stats_and_metrics_give_the_database_size_on_either_store(store_target, tmp_path):
    """`stats` and `/metrics` report the database's real size: SQLite's file (and its WAL), or
    on PostgreSQL what the server counts for the database (there is no WAL of its own)."""
    database = store_target if store_target.startswith("postgresql") else None
    ns = NotificationServer(data_dir=str(tmp_path / "ns"), insecure=True, database=database)
    await ns.start()
    try:
        async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
            stats = await c.call("stats")
        found = samples(await metrics_text(ns.port))
    finally:
        await ns.stop()
    size = stats["database_bytes"]
    if database is None:
        assert set(size) == {"db", "wal"}
        assert size["db"] > 0 and os.path.exists(ns.db_path)  # its files, read as they stood
        assert found['taskfleet_database_bytes{file="wal"}'] == size["wal"] > 0  # not yet merged
    else:
        assert set(size) == {"db"}, size  # the cluster's WAL is not this database's
        now = await pg_size(database)
        assert size["db"] > 1 << 20, size  # an empty PostgreSQL database is several MiB
        assert abs(size["db"] - now) < 1 << 20, (size, now)
        assert 'taskfleet_database_bytes{file="wal"}' not in found
    assert found['taskfleet_database_bytes{file="db"}'] > 0
    assert found["taskfleet_ns_active"] == 1.0
    assert stats["ns_role"]["active"] is True
    assert stats["ns_role"]["pair"] is (database is not None)


# -- 2. the standby, as the active one sees it ----------------------------------------------------


async def test_the_active_one_sees_its_standby_come_and_go(postgres_url):
    """A standby trying the lock marks itself in the lease row; the active one reads it with its
    renewals, shows it (``standby_view``) and logs ``standby_seen``; once the standby stops
    trying for longer than the lease, ``standby_gone``, and the view says so."""
    log_a = _Log()
    a = Lease(postgres_url, "ns on a pid 1", "ns:key tls=-", log=log_a, **timings(5))
    assert await a.try_acquire()
    store = await Store.open(postgres_url)
    assert isinstance(store.db, PostgresDatabase)
    await a.install(store.db)
    keeping = asyncio.create_task(a.keep(lambda reason: None))
    b = Lease(postgres_url, "ns on b pid 2", "ns:key tls=-", log=_Log(), **timings(5))
    waiting = asyncio.create_task(b.acquire())
    try:
        assert a.standby_view() == {"standby": None, "standby_seen_s": None, "standby_up": False}

        async def seen() -> bool:
            view = a.standby_view()
            return view["standby"] == "ns on b pid 2" and view["standby_up"]

        await until(seen, "the active one to see the standby", 15)
        assert b.active_holder == "ns on a pid 1"  # and the standby knows whom it waits for
        assert "standby_seen" in log_a.names()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await b.close()

        async def gone() -> list[dict[str, Any]]:
            return [f for e, f in log_a.events if e == "standby_gone"]

        logged = await until(gone, "the active one to miss the standby", 20)
        assert logged[0]["standby"] == "ns on b pid 2", log_a.events
        assert not a.standby_view()["standby_up"]
        assert a.standby_view()["standby"] == "ns on b pid 2"  # still named: it was there
    finally:
        waiting.cancel()
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
        await b.close()
        await a.close()
        await store.close()


async def test_a_lease_table_from_before_the_standby_mark_gets_its_columns(postgres_url):
    """A database whose lease table an earlier build made (no standby columns) is given them
    when an NS connects, and the standby's mark then works."""
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            "CREATE TABLE taskfleet_lease (id INT PRIMARY KEY CHECK (id = 1), holder TEXT NOT"
            " NULL, pid INT NOT NULL, renewed_at TIMESTAMPTZ NOT NULL, identity TEXT NOT NULL)"
        )
    finally:
        await conn.close()
    a = Lease(postgres_url, "a", "ns:key tls=-", log=_Log())
    b = Lease(postgres_url, "b", "ns:key tls=-", log=_Log())
    try:
        assert await a.try_acquire()
        assert not await b.try_acquire()
        conn = await asyncpg.connect(postgres_url)
        try:
            row = await conn.fetchrow("SELECT holder, standby FROM taskfleet_lease")
        finally:
            await conn.close()
        assert (row["holder"], row["standby"]) == ("a", "b")
    finally:
        await b.close()
        await a.close()


# -- 3. the lease's times -----------------------------------------------------------------------


def test_lease_timings_keep_the_defaults_and_their_proportions():
    """10 s gives the times the lease always had; a slow site's 60 s renews every 12 s, fences
    after 60 s and still tries the lock every half second."""
    assert timings(LEASE_S) == {
        "lease_s": LEASE_S,
        "renew_s": RENEW_S,
        "margin_s": MARGIN_S,
        "poll_s": POLL_S,
    }
    slow = timings(60)
    assert (slow["renew_s"], slow["margin_s"], slow["poll_s"]) == (12, 18, 0.5)
    short = timings(3)
    assert math.isclose(short["poll_s"], 0.15) and math.isclose(short["renew_s"], 0.6)


@pytest.mark.parametrize("bad", [2.9, 0, -5, math.nan, math.inf])
def test_a_lease_timeout_under_three_seconds_is_refused(bad: float):
    with pytest.raises(ValueError, match="at least 3"):
        timings(bad)


# -- 4. a full disk under PostgreSQL --------------------------------------------------------------


@pytest.fixture
def small_tablespace(postgres_cluster: Cluster | NoPostgres, postgres_url: str) -> Iterator[Path]:
    """The test database's new tables go to a tablespace on an 8 MiB tmpfs (owned by the
    cluster's user), which the test can fill for real; yields the mount."""
    if not isinstance(postgres_cluster, Cluster) or postgres_cluster.folder is None:
        pytest.skip("a tablespace needs the tests' own PostgreSQL cluster on this machine")
    folder = Path(postgres_cluster.folder)
    mount = folder / "small"
    mount.mkdir()
    owner = os.stat(folder)
    done = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size=8m,mode=0700,uid={owner.st_uid},gid={owner.st_gid}",
            "tmpfs",
            str(mount),
        ],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    name = urllib.parse.urlsplit(postgres_url).path.lstrip("/")
    space = f"{name}_small"
    try:
        _superuser(
            postgres_cluster.url,
            f"CREATE TABLESPACE {space} LOCATION '{mount}'",
            f"ALTER DATABASE {name} SET default_tablespace = {space}",
        )
        yield mount
    finally:
        _superuser(
            postgres_cluster.url,
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
            f"DROP TABLESPACE IF EXISTS {space}",
        )
        subprocess.run(["umount", "-l", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


def _superuser(url: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a test's loop may be running
        pool.submit(asyncio.run, run()).result()


@contextlib.asynccontextmanager
async def full(mount: Path) -> AsyncIterator[None]:
    """The tmpfs filled to its last byte for the block; freed after it."""
    filler = mount / "filler"
    await asyncio.to_thread(helpers.fill, filler)
    try:
        yield
    finally:
        filler.unlink()


async def test_a_full_disk_under_postgresql_is_storage_full(small_tablespace: Path, postgres_url):
    """PostgreSQL refusing a write for space (``disk_full``, SQLSTATE 53100: it cannot extend
    a table's file on the full tablespace) reaches the store as ``StorageFull``, which the NS's
    roll-up waits out (``server.rollup``); nothing of the refused transaction is stored, and the
    same write goes through once there is room."""
    store = await Store.open(postgres_url)
    try:
        db = store.db
        assert isinstance(db, PostgresDatabase)
        located = await db.fetch(
            "SELECT spcname FROM pg_class JOIN pg_tablespace t ON t.oid = reltablespace"
            " WHERE relname = 'runs'"
        )
        assert located and located[0][0].endswith("_small"), located  # the tables are there
        rows = [(f"log line {n} " + "x" * 2000,) for n in range(2000)]  # about 4 MB
        async with full(small_tablespace):
            with pytest.raises(StorageFull) as raised:
                async with db.transaction():
                    await db.executemany(
                        "INSERT INTO server_log(at, level, message) VALUES (0, 'info', ?)", rows
                    )
            assert getattr(raised.value.__cause__, "sqlstate", None) == "53100", raised.value
            assert (await db.fetch("SELECT count(*) FROM server_log"))[0][0] == 0
        async with db.transaction():
            await db.executemany(
                "INSERT INTO server_log(at, level, message) VALUES (0, 'info', ?)", rows
            )
        assert (await db.fetch("SELECT count(*) FROM server_log"))[0][0] == len(rows)
    finally:
        await store.close()
