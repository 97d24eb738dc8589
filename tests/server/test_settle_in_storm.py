"""The NS settles its heap (a full garbage collection, ``runtime.heap.settle``) only when it is
idle, and a connect storm is not idle: with 30,000 agents arriving, settling every 15 s took a
third of the NS's time (docs/performance.md, "100,000 agents and the cost curve")."""

from __future__ import annotations

import asyncio

from runtime.tls import ClientTrust
from taskserver.service import TaskServer
from tests.helpers import until


async def test_a_handshake_under_way_keeps_the_ns_from_counting_as_idle(ns):
    assert ns._idle()
    # A peer that connects and says nothing holds a place at the gate in its handshake.
    _, writer = await asyncio.open_connection("127.0.0.1", ns.port)
    try:

        async def held() -> bool:
            return ns.gate.busy > 0

        await until(held, "the silent connection holding a handshake place", 10)
        assert not ns._idle()
    finally:
        writer.close()

    async def idle_again() -> bool:
        return ns._idle()

    await until(idle_again, "the NS idle again once the connection closed", 10)


async def test_a_handshake_under_way_keeps_a_ts_from_counting_as_idle(ns, tmp_path):
    """The same for a task server: its agents' reconnect storm is not a moment to settle."""
    ts = TaskServer(
        server_url=ns.url,
        data_dir=str(tmp_path / "ts-1"),
        name="ts-1",
        trust=ClientTrust(insecure=True),
        insecure=True,
    )
    await ts.start()
    try:
        assert ts._idle()
        _, writer = await asyncio.open_connection("127.0.0.1", ts.port)
        try:

            async def held() -> bool:
                return ts.gate.busy > 0

            await until(held, "the silent connection holding a handshake place at the TS", 10)
            assert not ts._idle()
        finally:
            writer.close()

        async def idle_again() -> bool:
            return ts._idle()

        await until(idle_again, "the TS idle again once the connection closed", 10)
    finally:
        await ts.stop()
