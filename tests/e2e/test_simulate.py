"""The scale smoke test: 200 simulated agents in two processes behind one TS (correctness only)."""

from __future__ import annotations

import json

from tests.helpers import Fleet, until, wait_run

N = 200


async def test_two_hundred_simulated_agents_run_a_step_and_every_result_lands(fleet: Fleet):
    """`taskfleet simulate --agents 200 --processes 2 --fail-rate 0.1`: all enrol and connect
    through one TS; one noop step reaches every agent; every instance ends once, in exactly one
    terminal state, and the simulated failures come back as failures."""
    await fleet.server()
    await fleet.taskserver("ts-1")
    await fleet.simulate(N, "--fail-rate", "0.1", processes=2)
    async with fleet.admin() as c:

        async def all_online():
            rows = await c.call("computers.list")
            return sum(1 for r in rows if r["online"] and r["taskserver"] == "ts-1") == N

        await until(all_online, f"{N} simulated agents online behind ts-1", 120)
        await c.call("task.add", document={"name": "nothing", "type": "noop", "timeout_s": 120})
        run_id = (await c.call("run.start", task="nothing", all=True))["run_id"]
        final = await wait_run(c, run_id, 120)
        states = [i["status"] for i in final["instances"]]
        assert len(states) == N and len({i["computer"] for i in final["instances"]}) == N
        assert set(states) <= {"succeeded", "failed"}
        failed = [i for i in final["instances"] if i["status"] == "failed"]
        assert 0 < len(failed) < N / 2
        assert {i["reason"] for i in failed} == {"simulated failure"}
        assert final["status"] == "failed"
        runs = await c.call("runs.list")
    assert json.loads(json.dumps(runs))[0]["total"] == N
