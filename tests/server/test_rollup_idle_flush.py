"""Issue 22, target 3: a relay's roll-up sends a batch once its inbox goes idle, not after a fixed
wait; reports arriving together still go up together.

An in-process NS, a real task server on loopback and in-process agents (``quick_agent``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from admin.client import AdminClient
from server.core import NotificationServer
from taskserver.service import TaskServer
from tests.helpers import INSECURE, quick_agent, until, wait_run

NOOP = 'name = "nop"\ntype = "noop"\n'
THREE_STEPS = (
    'name = "nop3"\ntype = "server-job"\n'
    + "".join(f'[[steps]]\nid = "s{i}"\ntask = "nop"\n' for i in (1, 2, 3))
    + '[[steps]]\nid = "log"\ntask = "note"\n'
)
NOTE = 'name = "note"\ntype = "write-server-log"\n[params]\nmessage = "done %RUNID%"\n'


def admin(ns: NotificationServer) -> AdminClient:
    return AdminClient(ns.url, ns.first_admin_token or "", INSECURE)


async def fleet(ns: NotificationServer, tmp_path: Path, agents: int, flush_ms: int):
    """A TS with ``flush_ms`` and ``agents`` agents behind it, all online; the tasks saved."""
    async with admin(ns) as c:
        ts_token = (await c.call("tokens.create", uses=1, role="taskserver"))["token"]
        agent_token = (await c.call("tokens.create", uses=agents, role="agent"))["token"]
        for text in (NOOP, NOTE):
            await c.call("task.add", text=text, filename="t.toml")
        await c.call("job.add", text=THREE_STEPS, filename="t.toml")
    ts = TaskServer(
        server_url=ns.url,
        data_dir=str(tmp_path / "ts-1"),
        name="ts-1",
        trust=INSECURE,
        enrol_token=ts_token,
        insecure=True,
        flush_ms=flush_ms,
    )
    await ts.start()
    await until(lambda: _ts_online(ns), "ts-1 online")
    tasks = []
    for i in range(agents):
        agent = quick_agent(ns.url, f"pc-{i:03d}", agent_token)
        tasks.append(asyncio.create_task(agent.run()))

    async def all_online() -> bool:
        rows = await ns.db.computers([f"pc-{i:03d}" for i in range(agents)])
        return sum(1 for r in rows if r["online"] and r["taskserver"] == "ts-1") == agents

    await until(all_online, f"{agents} agents online at ts-1", 60)
    return ts, tasks


async def _ts_online(ns: NotificationServer) -> bool:
    async with admin(ns) as c:
        return any(r["name"] == "ts-1" and r["online"] for r in await c.call("taskservers.list"))


async def stop(ts: TaskServer, tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t
    await ts.stop()


def batches(ns: NotificationServer) -> tuple[float, float]:
    """(roll-up batches the NS applied, reports in them) so far."""
    found = {s.name: s.value for m in ns.metrics.rollup_batch.collect() for s in m.samples}
    return found["taskfleet_rollup_batch_size_count"], found["taskfleet_rollup_batch_size_sum"]


async def test_a_steps_last_results_do_not_wait_out_the_flush_interval(ns, tmp_path):
    """With a flush interval of ten minutes, a three-step server job on three agents still ends
    at once: each step's results leave the TS as soon as no more are coming, so the barriers
    (and the steps after them) never wait for the interval."""
    ts, tasks = await fleet(ns, tmp_path, 3, flush_ms=600_000)
    try:
        async with admin(ns) as c:
            run = await c.call("run.start", task="nop3", all=True)
            ended = await wait_run(c, run["run_id"], 60)
            assert ended["status"] == "succeeded"
            rows = (await c.call("run.show", run_id=run["run_id"]))["instances"]
            steps = [r for r in rows if r["step"] in ("s1", "s2", "s3")]
            assert len(steps) == 9 and {r["status"] for r in steps} == {"succeeded"}
        relay = ts.relay
        assert relay is not None
        # Its per-run counts went with the work they counted.
        assert not relay.held and not relay._held_per_run and not relay._inbox_results
    finally:
        await stop(ts, tasks)


async def test_results_arriving_together_still_go_up_in_few_batches(ns, tmp_path):
    """Two hundred agents answering one step: the TS gathers what arrives while it is busy, so
    the NS applies them in a handful of batches, never one per result."""
    ts, tasks = await fleet(ns, tmp_path, 200, flush_ms=10)
    try:
        async with admin(ns) as c:
            count0, sum0 = batches(ns)
            run = await c.call("run.start", task="nop", all=True)
            assert (await wait_run(c, run["run_id"], 60))["status"] == "succeeded"
        count, total = batches(ns)
        assert total - sum0 == 200, "every result applied once"
        assert count - count0 <= 200 / 5, f"{count - count0:g} batches for 200 results"
    finally:
        await stop(ts, tasks)
