"""The NS dispatches a route's work a chunk at a time: every instance once, none left behind."""

from __future__ import annotations

import asyncio

from admin.client import AdminClient
from server import dispatch, routes
from tests.helpers import INSECURE, quick_agent, task_doc, wait_run


async def test_a_run_larger_than_a_chunk_is_read_and_sent_in_chunks_each_instance_once(
    ns, monkeypatch
):
    """With chunks of 3, a run on 7 agents is read from the database and sent in three chunks
    (3, 3, 1), each sent before the next is read; every agent runs its instance once, and the
    relay is handed 7 instances, not more."""
    monkeypatch.setattr(dispatch, "DISPATCH_CHUNK", 3)
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        enrol = (await c.call("tokens.create", uses=7))["token"]
    agents = [quick_agent(ns.url, f"pc-{i}", enrol) for i in range(7)]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        for a in agents:
            await asyncio.wait_for(a.connected.wait(), 15)
        relay = ns.relay
        assert relay is not None
        before = relay.stats["dispatched"]
        # Spies: the store's own read and the relay's own dispatch still do the work.
        log: list[tuple[str, int]] = []
        read, take = ns.db.undispatched, relay.dispatch

        async def reading(*args):
            rows = await read(*args)
            log.append(("read", len(rows)))
            return rows

        async def taking(message):
            log.append(("sent", len(message.targets)))
            await take(message)

        monkeypatch.setattr(ns.db, "undispatched", reading)
        monkeypatch.setattr(relay, "dispatch", taking)
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", text=task_doc("t", "echo hi"), filename="t.toml")
            names = [a.name for a in agents]
            run_id = (await c.call("run.start", task="t", computers=names))["run_id"]
            run = await wait_run(c, run_id, 30)
            assert run["status"] == "succeeded", run
            view = await c.call("run.show", run_id=run_id)
        assert sorted(i["computer"] for i in view["instances"]) == sorted(names)
        assert {i["status"] for i in view["instances"]} == {"succeeded"}
        # Each chunk leaves before the next is read (it used to read all seven first).
        assert log == [("read", 3), ("sent", 3), ("read", 3), ("sent", 3), ("read", 1), ("sent", 1)]
        assert relay.stats["dispatched"] - before == 7
        assert await ns.db.undispatched(routes.BUILTIN) == []
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
