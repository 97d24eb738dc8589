"""Which NS of a pair is active, and whether a standby waits, as an operator sees it: two real
``taskfleet server`` processes on one PostgreSQL database, with ``--lease-timeout-s`` (and its
configuration-file form) set.

- The standby's log says whom it waits for; the active one's ``stats`` and ``/metrics`` name
  the standby while it tries the lock, and say when it is gone.
- The lease follows ``--lease-timeout-s``: a paused active is fenced after it, and stands down
  (naming itself) when it resumes.
- A lease timeout under 3 s is a usage error (exit 2) from the flag and from the file.

Without PostgreSQL these are skipped with the reason (failed under TASKFLEET_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.test_metrics import scrape
from tests.e2e.test_standby import lease_holder, pid_of, serves
from tests.helpers import Fleet, Proc, until

LEASE = "5"
"""The pair's lease timeout: half the default, so a paused active is fenced sooner."""


def events(proc: Proc, name: str) -> list[dict[str, Any]]:
    """The JSON log entries ``name`` of ``proc`` (its stderr is not a terminal: JSON lines)."""
    found = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


async def standby_of(fleet: Fleet, database: str, config: Path) -> Proc:
    """A second NS sharing the active one's key and TLS files, its lease timeout from a
    configuration file (``[database] lease_timeout_s``)."""
    data = fleet.root / "ns-b"
    if not data.exists():
        data.mkdir()
        shutil.copy(fleet.root / "ns" / "server.key", data / "server.key")
        shutil.copytree(fleet.root / "ns" / "tls", data / "tls")
    proc = Proc(
        "ns-b",
        [
            "server",
            "--config",
            str(config),
            "--data",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--database",
            database,
        ],
        fleet.root / "ns-b.log",
    )
    fleet.procs.append(proc)
    return await proc.start()


async def test_the_active_one_shows_its_standby_and_the_lease_follows_its_timeout(
    postgres_url, fleet: Fleet, tmp_path
):
    fleet.database = postgres_url
    active = await fleet.server("ns", 0, "--lease-timeout-s", LEASE)
    config = tmp_path / "server-b.toml"
    config.write_text(f"[database]\nlease_timeout_s = {LEASE}\n")
    standby = await standby_of(fleet, postgres_url, config)

    waiting = events(standby, "standby")
    assert waiting, standby.log()
    assert f"pid {pid_of(active)}" in waiting[0]["active"], waiting
    assert waiting[0]["lease_timeout_s"] == float(LEASE)
    assert events(active, "lease_taken")[0]["lease_s"] == float(LEASE)

    async def standby_shown() -> dict[str, Any] | None:
        role = (await fleet.cli_json("stats"))["ns_role"]
        return role if role["standby_up"] and role["standby"] else None

    role = await until(standby_shown, "the active one's stats to name the standby", 30)
    assert role["active"] and role["pair"] and f"pid {pid_of(standby)}" in role["standby"], role
    code, out, err = await fleet.cli("stats")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("role:"))
    assert line.split(None, 1)[1].startswith("active (standby: ") and "seen" in line, out
    assert "(PostgreSQL: pg_database_size)" in out, out
    metrics = await scrape(active.url, active.fingerprint)
    assert metrics["taskfleet_ns_active"] == 1.0
    assert metrics["taskfleet_ns_standby_up"] == 1.0
    assert metrics['taskfleet_database_bytes{file="db"}'] > 0
    assert events(active, "standby_seen"), active.log()

    # The standby goes away: the active one notices within the lease, and says so.
    standby.kill(signal.SIGTERM)
    await standby.wait()

    async def standby_missed() -> bool:
        role = (await fleet.cli_json("stats"))["ns_role"]
        return not role["standby_up"] and bool(events(active, "standby_gone"))

    await until(standby_missed, "the active one to miss its standby", 30)
    assert (await scrape(active.url, active.fingerprint))["taskfleet_ns_standby_up"] == 0.0
    code, out, err = await fleet.cli("stats")
    assert "gone, no NS would take over" in out, out

    # Back again, then the active one paused past the lease: fenced, and it stands down.
    fleet.procs.remove(standby)
    standby = await standby_of(fleet, postgres_url, config)
    active.kill(signal.SIGSTOP)
    try:
        await until(lambda: serves(fleet, standby.url), "the standby taking over", 30)
        assert f"pid {pid_of(standby)}" in await lease_holder(postgres_url)
        took = events(standby, "taking_over")
        assert took and f"pid {pid_of(active)}" in took[0]["previous"], took
    finally:
        active.kill(signal.SIGCONT)

    async def stood_down() -> list[dict[str, Any]]:
        return events(active, "stood_down")

    down = await until(stood_down, "the resumed NS to stand down", 30)
    assert f"pid {pid_of(active)}" in down[0]["holder"], down


def test_a_lease_timeout_under_three_seconds_is_a_usage_error(tmp_path):
    """`--lease-timeout-s 2` and `[database] lease_timeout_s = 2` both end with exit 2 and a
    message naming the setting and its minimum, before anything starts."""
    flag = subprocess.run(
        [
            sys.executable,
            "-m",
            "admin",
            "server",
            "--data",
            str(tmp_path / "a"),
            "--lease-timeout-s",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert flag.returncode == 2, flag.stderr
    assert "--lease-timeout-s" in flag.stderr and "at least 3" in flag.stderr, flag.stderr
    config = tmp_path / "server.toml"
    config.write_text("[database]\nlease_timeout_s = 2\n")
    file = subprocess.run(
        [
            sys.executable,
            "-m",
            "admin",
            "server",
            "--config",
            str(config),
            "--data",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert file.returncode == 2, file.stderr
    assert "lease_timeout_s" in file.stderr and "at least 3" in file.stderr, file.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
