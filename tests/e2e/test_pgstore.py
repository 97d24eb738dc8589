"""The NS on PostgreSQL end to end: real ``taskfleet server --database postgresql://...``
processes with a TS and agents, running the same scenarios the SQLite suite runs (the tests
below call those tests with a fleet whose NS keeps its tables in a fresh PostgreSQL database).

The whole end-to-end suite runs on PostgreSQL with ``pytest --store=postgresql tests/e2e``.
"""

from __future__ import annotations

import os
import sys

import asyncpg
import pytest

from tests.e2e import test_fleet, test_jobs, test_lifecycle
from tests.helpers import Fleet


@pytest.fixture
def pg_fleet(fleet: Fleet, postgres_url: str) -> Fleet:
    """The ``fleet`` fixture, its NS on a fresh PostgreSQL database."""
    fleet.database = postgres_url
    return fleet


async def tables_in(url: str) -> dict[str, int]:
    """Rows per table of the NS's PostgreSQL database."""
    conn = await asyncpg.connect(url)
    try:
        names = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        ]
        return {n: int(await conn.fetchval(f'SELECT count(*) FROM "{n}"')) for n in names}
    finally:
        await conn.close()


async def test_a_task_run_behind_two_task_servers(pg_fleet: Fleet, tmp_path, postgres_url):
    """Six agents behind two TS run a task; every result is in PostgreSQL, and no SQLite file
    was made for the NS's tables."""
    await test_fleet.test_fleet_of_six_behind_two_task_servers(pg_fleet, tmp_path)
    counts = await tables_in(postgres_url)
    assert counts["instances"] >= 6 and counts["runs"] >= 1 and counts["computers"] >= 6
    assert not (tmp_path / "ns" / "server.db").exists()


async def test_a_server_job_holds_its_barrier(pg_fleet: Fleet, tmp_path):
    await test_jobs.test_server_job_barrier_holds_every_step(pg_fleet, tmp_path)


async def test_client_jobs_run_per_computer(pg_fleet: Fleet, tmp_path):
    await test_jobs.test_client_jobs_run_independently_and_fix_and_retry_per_computer(
        pg_fleet, tmp_path
    )


async def test_the_ns_killed_mid_job_carries_on_from_its_database(pg_fleet: Fleet, tmp_path):
    """SIGKILL the NS in a server job's step and start it again on the same PostgreSQL
    database: the job finishes, each step ran once per computer."""
    await test_jobs.test_ns_killed_during_a_barrier_step_carries_on(pg_fleet, tmp_path)


async def test_deleting_computers_keeps_their_history(pg_fleet: Fleet, tmp_path):
    await test_lifecycle.test_computers_delete_ends_its_work_closes_its_agent_keeps_history(
        pg_fleet, tmp_path
    )


async def test_groups_filters_and_the_readme_sequence(pg_fleet: Fleet, tmp_path):
    await test_lifecycle.test_groups_and_filters_by_verb_and_the_readme_sequence(pg_fleet, tmp_path)


async def run_server(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "admin",
        "server",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), (out + err).decode()


async def test_a_database_that_is_not_postgresql_or_holds_a_password_is_a_usage_error(tmp_path):
    """``--database`` takes a PostgreSQL URL, and never a password on the command line (nor in
    the configuration file): exit 2 naming what to do instead."""
    code, text = await run_server("--data", str(tmp_path / "ns"), "--database", "mysql://x/y")
    assert code == 2 and "takes a PostgreSQL URL" in text
    secret = "postgresql://tf:hunter2@127.0.0.1:1/tf"
    code, text = await run_server("--data", str(tmp_path / "ns"), "--database", secret)
    assert code == 2 and "PGPASSWORD" in text and "hunter2" not in text
    config = tmp_path / "server.toml"
    config.write_text(f'data = "{tmp_path / "ns"}"\n[database]\nurl = "{secret}"\n')
    code, text = await run_server("--config", str(config))
    assert code == 2 and "~/.pgpass" in text
    code, text = await run_server("--config", str(config), "--print-config")
    assert code == 0 and 'database = "postgresql://tf:***@127.0.0.1:1/tf"' in text, text
    assert "hunter2" not in text


async def test_a_database_that_cannot_be_reached_is_named_without_its_password(tmp_path):
    """The URL in ``TASKFLEET_DATABASE`` may hold the password; an NS that cannot reach it
    says so, naming the database with the password masked, and exits 4 (cannot start)."""
    secret = "postgresql://tf:hunter2@127.0.0.1:1/tf"
    code, text = await run_server(
        "--data",
        str(tmp_path / "ns"),
        "--listen",
        "127.0.0.1:0",
        env={"TASKFLEET_DATABASE": secret},
    )
    assert code == 4, text
    assert "tf:***@127.0.0.1:1/tf" in text and "hunter2" not in text
