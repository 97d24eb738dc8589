"""One agent that stops reading must not hold the relay's other agents (finding 7)."""

from __future__ import annotations

import asyncio
import socket

from admin.client import AdminClient
from taskserver import relay as relay_module
from tests.helpers import INSECURE, quick_agent, task_doc, until

BIG_SCRIPT = "echo big\n" + "# padding\n" * 3_000  # about 30 KB per execute


async def test_a_stalled_agent_gets_a_backlog_and_is_cut_while_the_others_are_served(
    ns, tmp_path, monkeypatch
):
    """Agent `a-stuck` (first in name order, so its execute goes first) stops reading its socket
    on a slow link. Runs on both still reach `z-good` at once, each run in turn; the relay keeps
    `a-stuck`'s executes in its own backlog, cuts it when it has read nothing for SEND_STALL_S,
    and once `a-stuck` reads again it comes back and finishes its work too. (Before, the
    dispatch waited on `a-stuck`'s full buffer and `z-good` got nothing until a ping timeout.)"""
    monkeypatch.setattr(relay_module, "SEND_STALL_S", 2.0, raising=False)
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        enrol = (await c.call("tokens.create", uses=2))["token"]
    agents = {name: quick_agent(ns.url, name, enrol) for name in ("a-stuck", "z-good")}
    tasks = []
    try:
        for agent in agents.values():  # one after the other
            tasks.append(asyncio.create_task(agent.run()))
            await asyncio.wait_for(agent.connected.wait(), 15)
        relay = ns.relay
        assert relay is not None
        # A slow link: small socket buffers on both ends, and `a-stuck` stops reading.
        server_side = relay.agents["a-stuck"].link.ws.transport.get_extra_info("socket")
        server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stuck_transport = agents["a-stuck"].link.ws.transport
        stuck_transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
        )
        stuck_transport.pause_reading()

        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", text=task_doc("big", BIG_SCRIPT), filename="big.toml")
            runs = []
            for n in range(4):
                run_id = (await c.call("run.start", task="big", computers=["a-stuck", "z-good"]))[
                    "run_id"
                ]
                runs.append(run_id)

                async def good_done(run_id: int = run_id) -> bool:
                    view = await c.call("run.show", run_id=run_id)
                    return any(
                        i["computer"] == "z-good" and i["status"] == "succeeded"
                        for i in view["instances"]
                    )

                await until(good_done, f"`z-good` to finish run {n + 1} despite `a-stuck`", 10)
            # `a-stuck`'s executes did not fit its connection: they waited in its backlog.
            await until(
                _async(lambda: relay.refused["stalled_agent"] >= 1),
                "the relay to cut the stalled agent",
                15,
            )
            stuck_transport.resume_reading()  # it reads again, sees the cut, comes back

            async def all_done() -> bool:
                views = [await c.call("run.show", run_id=r) for r in runs]
                return all(v["status"] == "succeeded" for v in views)

            await until(all_done, "every run to finish on both agents", 30)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _async(predicate):
    async def check() -> bool:
        return bool(predicate())

    return check
