"""A relay acknowledges an agent's result only once the NS has stored it: until then the agent
keeps it, so a relay that dies with results on their way loses none."""

from __future__ import annotations

import asyncio

from admin.client import AdminClient
from protocol.states import is_terminal
from tests.helpers import INSECURE, quick_agent, task_doc, until, wait_run


async def test_an_agent_keeps_its_result_until_the_ns_has_stored_it(ns):
    """With the relay cut off from the NS (as a TS whose link dropped), the agent's result
    reaches the relay and waits there, and nothing is queued to acknowledge it: the agent still
    holds it. Once the NS is back and has stored it, the agent is acknowledged and lets go."""
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        enrol = (await c.call("tokens.create", uses=1))["token"]
        await c.call("task.add", text=task_doc("t", "echo hi"), filename="t.toml")
    agent = quick_agent(ns.url, "pc-1", enrol)
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        relay = ns.relay
        assert relay is not None and relay._upstream is not None
        upstream = relay._upstream
        relay.set_upstream(None)
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            run_id = (await c.call("run.start", task="t", computers=["pc-1"]))["run_id"]

            async def queued() -> bool:
                return any(out.held and is_terminal(out.report.state) for out in relay._unsent)

            await until(queued, "the result queued at the relay for the NS", 15)
            assert agent.store is not None
            (key,) = [k for k in agent.store.outbox]
            assert key[1] == ""
            # The old rule acknowledged a result once the relay had written it to its own
            # outbox: the ack would already be queued here.
            assert not relay._acks_due and not any(conn.acks for conn in relay.agents.values())
            assert (await c.call("run.show", run_id=run_id))["status"] == "running"

            relay.set_upstream(upstream)
            assert (await wait_run(c, run_id, 30))["status"] == "succeeded"

        # Acknowledged once the NS stored it (after the relay's ack delay).
        async def let_go() -> bool:
            return agent.store is not None and not agent.store.outbox

        await until(let_go, "the agent's outbox to empty", 15)
        assert not relay._upward
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
