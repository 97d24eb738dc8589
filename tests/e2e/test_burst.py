"""A registration burst through servers that take only a few handshakes at a time."""

from __future__ import annotations

from tests.helpers import Fleet, until

N = 300


async def test_a_burst_of_agents_waits_its_turn_at_the_gate_and_all_get_through(fleet: Fleet):
    """NS and TS each work on at most 4 handshakes at once (`--max-handshakes 4`); 300 simulated
    agents start in the same instant. The rest wait before TLS instead of timing out, so every
    agent ends up online, the NS never had more than 4 handshakes going, and the agents are
    spread evenly over the two TS (the NS keeps its count of computers per TS as it assigns)."""
    await fleet.server("ns", 0, "--max-handshakes", "4")
    await fleet.taskserver("ts-1", 0, "--max-handshakes", "4")
    await fleet.taskserver("ts-2", 0, "--max-handshakes", "4")
    async with fleet.admin() as c:

        async def both_connected() -> bool:
            ts = await c.call("taskservers.list")
            return sum(1 for t in ts if t["online"]) == 2

        async def all_online() -> bool:
            rows = await c.call("computers.list")
            return sum(1 for r in rows if r["online"]) == N

        await until(both_connected, "both TS connected to the NS", 30)
        await fleet.simulate(N)
        await until(all_online, f"{N} agents online", 180)
        gate = (await c.call("stats"))["handshake_gate"]
        per_ts = {t["name"]: t["computers"] for t in await c.call("taskservers.list")}
    assert gate["peak"] == 4, gate
    assert gate["admitted"] >= N, gate
    assert gate["handshakes"] == 0, gate
    assert per_ts == {"ts-1": N // 2, "ts-2": N // 2}
