"""Faults at a few hundred agents: a TS and the NS killed mid-run, then restarted.

Invariants checked from the NS database once the run ends: every instance is in exactly one
terminal state, one per computer (nothing lost, nothing doubled), the run is not left open,
and the SQLite file passes ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import signal
import sqlite3

import pytest

from tests.helpers import Fleet, free_port, until, wait_run

pytestmark = pytest.mark.sqlite_only  # checks its invariants in DATA/server.db itself

N = 500


async def simulated(
    fleet: Fleet, n: int, delay_ms: int, prefix: str = "sim", online_total: int | None = None
) -> None:
    """Start ``n`` simulated agents whose tasks take ``delay_ms``; wait until ``online_total``
    (default ``n``) computers are online."""
    await fleet.simulate(
        n, "--task-delay-ms", str(delay_ms), "--prefix", prefix, processes=2, name=f"sim-{prefix}"
    )
    async with fleet.admin() as c:
        total = n if online_total is None else online_total

        async def online():
            return sum(1 for r in await c.call("computers.list") if r["online"]) == total

        await until(online, f"{total} simulated agents online", 180)


def check_invariants(db_path, run_id: int, n: int) -> None:
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute(
            "SELECT computer, status FROM instances WHERE run_id=? AND parent_id IS NULL AND step=''",
            (run_id,),
        ).fetchall()
        assert len(rows) == n and len({r[0] for r in rows}) == n, "an instance was lost or doubled"
        assert {r[1] for r in rows} <= {"succeeded", "failed", "timed_out", "stopped"}
        status = db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()[0]
        assert status != "running"
    finally:
        db.close()


async def test_task_server_killed_during_a_client_job_of_500_agents(fleet: Fleet):
    """SIGKILL the TS while 500 agents run a two-step client job, start it again: the run ends
    with every computer's job succeeded, once."""
    await fleet.server()
    ts = await fleet.taskserver("ts-1", port=free_port())
    await simulated(fleet, N, delay_ms=1500)
    async with fleet.admin() as c:
        await c.call("task.add", document={"name": "step", "type": "noop", "timeout_s": 120})
        await c.call(
            "job.add",
            document={
                "name": "two-steps",
                "type": "client-job",
                "steps": [{"id": "a", "task": "step"}, {"id": "b", "task": "step"}],
            },
        )
        run_id = (await c.call("run.start", task="two-steps", all=True))["run_id"]

        async def under_way():
            view = await c.call("run.show", run_id=run_id)
            return (
                sum(
                    1
                    for i in view["instances"]
                    if i["parent_id"] is None and i["status"] == "running"
                )
                > N // 2
            )

        await until(under_way, "the job running on most agents", 60)
        ts.kill(signal.SIGKILL)
        await ts.wait()
        port = int(ts.url.rsplit(":", 1)[1])
        await fleet.taskserver("ts-1", port=port)
        final = await wait_run(c, run_id, 180)
    assert final["status"] == "succeeded", {i["status"] for i in final["instances"]}
    check_invariants(fleet.root / "ns" / "server.db", run_id, N)


async def test_ns_killed_during_roll_up_of_a_500_agent_server_job(fleet: Fleet):
    """SIGKILL the NS while results of a 500-agent server-job step roll up, start it again: the
    job finishes and the database passes its integrity check. Half the agents take 0.5 s and
    half 5 s, so the kill lands between the first results and the barrier's release (with one
    delay for all, every result could land in one batch and the kill hit the next step)."""
    port = free_port()
    await fleet.server(port=port)
    await fleet.taskserver("ts-1")
    await simulated(fleet, N // 2, delay_ms=500, prefix="fast")
    await simulated(fleet, N - N // 2, delay_ms=5000, prefix="slow", online_total=N)
    async with fleet.admin() as c:
        await c.call(
            "task.add",
            document={"name": "log", "type": "write-server-log", "params": {"message": "go"}},
        )
        await c.call("task.add", document={"name": "work", "type": "noop", "timeout_s": 120})
        await c.call(
            "job.add",
            document={
                "name": "barrier",
                "type": "server-job",
                "steps": [{"task": "log"}, {"task": "work"}, {"id": "done", "task": "log"}],
            },
        )
        run_id = (await c.call("run.start", task="barrier", all=True))["run_id"]

        async def rolling_up():
            view = await c.call("run.show", run_id=run_id)
            done = sum(
                1 for i in view["instances"] if i["step"] == "work" and i["status"] == "succeeded"
            )
            assert done < N, "every result was in before the kill: the test missed its window"
            return done > 0

        await until(rolling_up, "results rolling up", 60)
    fleet.ns.kill(signal.SIGKILL)
    await fleet.ns.wait()
    await fleet.server(port=port)
    async with fleet.admin() as c:
        final = await wait_run(c, run_id, 180)
    assert final["status"] == "succeeded", sorted(
        {(i["step"], i["status"], i["reason"]) for i in final["instances"]}
    )[:5]
    db = sqlite3.connect(fleet.root / "ns" / "server.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        work = db.execute(
            "SELECT computer, status FROM instances WHERE run_id=? AND step='work'", (run_id,)
        ).fetchall()
        assert (
            len(work) == N
            and len({w[0] for w in work}) == N
            and {w[1] for w in work} == {"succeeded"}
        )
        assert (
            db.execute(
                "SELECT count(*) FROM instances WHERE run_id=? AND step='done'", (run_id,)
            ).fetchone()[0]
            == 1
        )
    finally:
        db.close()
