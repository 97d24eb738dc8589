"""Retention: old rows of ended runs (instances, steps), audit, server log and messages go in
small batches; a running run's rows stay however old; a dry run counts exactly what a purge
then deletes. The rows are written into the NS's real database file."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from admin.client import AdminClient
from server.retention import DAY_S, Purger, parse_keep
from tests.helpers import INSECURE, wait_run

pytestmark = pytest.mark.sqlite_only  # rows written through the SQLite connection itself

NOW = time.time()


@pytest.fixture
async def ns(ns):
    """The NS, once its own retention pass at start has ended (it would purge the old rows these
    tests write while they count them)."""
    assert ns.purger is not None
    await asyncio.wait_for(ns.purger.first_pass.wait(), 30)
    return ns


async def add_run(ns, *, status: str, ended_days_ago: float | None, instances: int, nested: int):
    """A run with ``instances`` top-level instances, ``nested`` step instances under the first,
    its step rows, and its end time ``ended_days_ago`` (None: still running, created a year ago)."""
    db = ns.db.db.conn
    created = NOW - 400 * DAY_S
    ended = None if ended_days_ago is None else NOW - ended_days_ago * DAY_S
    cur = await db.execute(
        "INSERT INTO runs(task_name, kind, definition, status, created_at, deadline, ended_at)"
        " VALUES ('t', 'client', ?, ?, ?, ?, ?)",
        (json.dumps({"name": "t"}), status, created, created + 60, ended),
    )
    run_id = cur.lastrowid
    await db.executemany(
        "INSERT INTO steps(run_id, step, task, deadline, started_at) VALUES (?, ?, '{}', 0, 0)",
        [(run_id, ""), (run_id, "second")],
    )
    await db.executemany(
        "INSERT INTO instances(run_id, computer, status, updated_at) VALUES (?, ?, 'succeeded', 0)",
        [(run_id, f"pc-{n}") for n in range(instances)],
    )
    (first,) = await db.execute_fetchall("SELECT min(id) FROM instances WHERE run_id=?", (run_id,))
    await db.executemany(
        "INSERT INTO instances(run_id, computer, status, updated_at, parent_id, step)"
        " VALUES (?, 'pc-0', 'succeeded', 0, ?, ?)",
        [(run_id, first[0], f"s{n}") for n in range(nested)],
    )
    await db.commit()
    return run_id


async def add_journal(ns, days_ago: list[float]) -> None:
    db = ns.db.db.conn
    for d in days_ago:
        at = NOW - d * DAY_S
        await db.execute(
            "INSERT INTO audit(at, who, action, detail, outcome) VALUES (?, 'a', 'x', '', 'ok')",
            (at,),
        )
        await db.execute(
            "INSERT INTO server_log(at, level, message) VALUES (?, 'info', 'm')", (at,)
        )
        await db.execute(
            "INSERT INTO messages(at, severity, text, source) VALUES (?, 'info', 't', 's')", (at,)
        )
    await db.commit()


async def count(ns, sql: str, *args) -> int:
    (row,) = await ns.db.db.conn.execute_fetchall(sql, args)
    return int(row[0])


async def test_old_ended_runs_go_with_their_rows_and_a_running_run_stays(ns):
    old = await add_run(ns, status="succeeded", ended_days_ago=100, instances=30, nested=12)
    recent = await add_run(ns, status="failed", ended_days_ago=10, instances=5, nested=2)
    running = await add_run(ns, status="running", ended_days_ago=None, instances=8, nested=3)
    await add_journal(ns, [400, 100, 40, 5])
    purger = Purger(ns, {"audit": 365 * DAY_S}, batch=7, pause_s=0)
    counted = await purger.count(NOW)
    done = await purger.purge(NOW)
    for key in ("runs", "instances", "steps", "audit", "log", "messages"):
        assert done[key] == counted[key], key
    assert (done["runs"], done["instances"], done["steps"]) == (1, 42, 2)
    assert (done["audit"], done["log"], done["messages"]) == (1, 3, 3)
    assert await count(ns, "SELECT count(*) FROM runs WHERE id=?", old) == 0
    assert await count(ns, "SELECT count(*) FROM instances WHERE run_id=?", old) == 0
    assert await count(ns, "SELECT count(*) FROM steps WHERE run_id=?", old) == 0
    for kept, rows in ((recent, 7), (running, 11)):
        assert await count(ns, "SELECT count(*) FROM instances WHERE run_id=?", kept) == rows
        assert await count(ns, "SELECT count(*) FROM steps WHERE run_id=?", kept) == 2
    assert await count(ns, "SELECT count(*) FROM server_log") == 1
    again = await purger.count(NOW)
    assert not any(again[k] for k in ("runs", "instances", "steps", "audit", "log", "messages"))


async def test_each_statement_deletes_at_most_one_batch(ns):
    old = await add_run(ns, status="succeeded", ended_days_ago=100, instances=23, nested=9)
    await add_run(ns, status="succeeded", ended_days_ago=1, instances=1, nested=0)
    batches = []
    while done := await ns.db.purge_runs_batch(NOW - 90 * DAY_S, 5):
        batches.append(done)
    sizes = [b["instances"] for b in batches if "instances" in b]
    assert sizes == [5, 4, 5, 5, 5, 5, 3]  # nested first (9), then top-level (23)
    assert batches[-1] == {"steps": 2, "runs": 1}
    assert await count(ns, "SELECT count(*) FROM runs WHERE id=?", old) == 0


async def test_forever_keeps_a_kind(ns):
    await add_run(ns, status="succeeded", ended_days_ago=1000, instances=3, nested=0)
    await add_journal(ns, [1000])
    purger = Purger(ns, {"runs": None, "log": parse_keep("forever")}, pause_s=0)
    done = await purger.purge(NOW)
    assert done["cutoffs"]["runs"] is None and done["cutoffs"]["log"] is None
    assert (done["runs"], done["instances"], done["log"]) == (0, 0, 0)
    assert (done["audit"], done["messages"]) == (1, 1)


def test_keep_times_read_as_documented():
    assert parse_keep("90d") == 90 * DAY_S
    assert parse_keep("12h") == 12 * 3600
    assert parse_keep("0") is None and parse_keep("forever") is None
    with pytest.raises(ValueError, match="not a keep time"):
        parse_keep("ninety days")


async def test_purge_op_counts_then_deletes_a_real_run(ns):
    """Through the admin operation: a real run, ended, its end time moved back 100 days; the
    dry run counts it and shows the cut-offs, the purge deletes what was counted."""
    doc = {"name": "note", "type": "write-server-log", "params": {"message": "hi"}}
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("task.add", document=doc)
        run = await wait_run(c, (await c.call("run.start", task="note"))["run_id"])
        await wait_run(c, (await c.call("run.start", task="note"))["run_id"])  # the newest stays
        await ns.db.db.conn.execute(
            "UPDATE runs SET ended_at=? WHERE id=?", (NOW - 100 * DAY_S, run["id"])
        )
        await ns.db.db.conn.commit()
        dry = await c.call("purge", dry_run=True)
        assert dry["dry_run"] and (dry["runs"], dry["instances"]) == (1, 1)
        assert dry["cutoffs"]["runs"].endswith("Z") and dry["cutoffs"]["audit"].endswith("Z")
        done = await c.call("purge")
        assert (done["runs"], done["instances"], done["steps"]) == (
            dry["runs"],
            dry["instances"],
            dry["steps"],
        )
        assert await ns.db.run(run["id"]) is None


async def test_the_newest_run_is_kept_so_ids_are_never_given_again(ns):
    """Every run ended long ago: all go but the newest, and the newest instance's run; a run
    started after the purge gets a higher id than any before (SQLite reuses ``max(id) + 1``)."""
    first = await add_run(ns, status="succeeded", ended_days_ago=200, instances=2, nested=0)
    last = await add_run(ns, status="succeeded", ended_days_ago=200, instances=2, nested=0)
    top_instance = await count(ns, "SELECT max(id) FROM instances")
    done = await Purger(ns, {}, pause_s=0).purge(NOW)
    assert done["runs"] == 1
    assert await count(ns, "SELECT count(*) FROM runs WHERE id=?", first) == 0
    assert await count(ns, "SELECT count(*) FROM runs WHERE id=?", last) == 1
    again = await add_run(ns, status="succeeded", ended_days_ago=1, instances=1, nested=0)
    assert again > last
    assert await count(ns, "SELECT max(id) FROM instances") > top_instance
    # Now that a newer run holds the top ids, the old `last` may go like any other.
    assert (await Purger(ns, {}, pause_s=0).count(NOW))["runs"] == 1
