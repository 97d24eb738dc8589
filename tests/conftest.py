"""Shared fixtures: real processes and real servers on loopback port 0, real SQLite files."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Iterator
from typing import Any

import asyncpg
import pytest

from server.core import NotificationServer
from tests import pgcluster
from tests.helpers import Fleet


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only: a test about SQLite itself (its file, its SQL); under --store=postgresql"
        " its NS stays on SQLite",
    )


def _database(request: pytest.FixtureRequest) -> str | None:
    """The PostgreSQL URL an NS of this test keeps its tables at (None: SQLite)."""
    if request.config.getoption("--store") != "postgresql":
        return None
    if request.node.get_closest_marker("sqlite_only") is not None:
        return None
    return str(request.getfixturevalue("postgres_url"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="where every NS the tests start (in process or as a `taskfleet server`) keeps its"
        " tables: SQLite in its data folder (default), or a fresh PostgreSQL database per test",
    )


@pytest.fixture
async def fleet(request, tmp_path):
    """A place to start real ``taskfleet`` processes; everything is killed at the end. Its NS
    keeps its tables where ``--store`` says."""
    f = Fleet(tmp_path)
    f.database = _database(request)
    try:
        yield f
    finally:
        await f.close()


def _blocking(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to its end on an event loop of its own (fixtures here may be set up while
    a test's loop runs)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


_CLUSTER = pytest.StashKey[pgcluster.Cluster | pgcluster.NoPostgres]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the session's PostgreSQL before the first test, if any test needs it: once a test
    has run a script, this process is a child subreaper (``runtime.runner``) and a postmaster
    started then would become its child, which the runner's sweep of daemonised scripts
    kills."""
    wanted = config.getoption("--store") == "postgresql" or any(
        {"postgres_url", "store_target"} & set(getattr(item, "fixturenames", ())) for item in items
    )
    if wanted and _CLUSTER not in config.stash:
        try:
            config.stash[_CLUSTER] = pgcluster.start()
        except pgcluster.NoPostgres as exc:
            config.stash[_CLUSTER] = exc


def pytest_unconfigure(config: pytest.Config) -> None:
    cluster = config.stash.get(_CLUSTER, None)
    if isinstance(cluster, pgcluster.Cluster):
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_cluster(pytestconfig) -> pgcluster.Cluster | pgcluster.NoPostgres:
    """The session's PostgreSQL (``tests/pgcluster.py``), or why there is none."""
    if _CLUSTER not in pytestconfig.stash:
        try:
            pytestconfig.stash[_CLUSTER] = pgcluster.start()
        except pgcluster.NoPostgres as exc:
            pytestconfig.stash[_CLUSTER] = exc
    return pytestconfig.stash[_CLUSTER]


@pytest.fixture
def postgres_url(postgres_cluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (dropped afterwards); skipped with the
    reason when there is no PostgreSQL, failed instead under ``TASKFLEET_REQUIRE_POSTGRES=1``."""
    if isinstance(postgres_cluster, pgcluster.NoPostgres):
        if pgcluster.required():
            pytest.fail(f"{pgcluster.REQUIRE_ENV} is set: {postgres_cluster}")
        pytest.skip(str(postgres_cluster))
    name = pgcluster.fresh_name()
    _blocking(_admin(postgres_cluster.url, f"CREATE DATABASE {name}"))
    try:
        yield postgres_cluster.database_url(name)
    finally:
        _blocking(_admin(postgres_cluster.url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request, tmp_path) -> str:
    """Where a test's NS store lives, once per store: an SQLite file, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "server.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def ns(request, tmp_path):
    """An in-process NS on loopback port 0, plain ws:// (``insecure``), with its first admin
    token; its tables where ``--store`` says."""
    database = _database(request)
    server = NotificationServer(data_dir=str(tmp_path / "ns"), insecure=True, database=database)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
