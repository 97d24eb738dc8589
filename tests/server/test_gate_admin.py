"""An administrator during a registration burst: turned away by a full gate, the admin client
waits its turn instead of failing."""

from __future__ import annotations

import asyncio

import pytest

from admin.client import AdminClient
from runtime.tls import ClientTrust
from server.core import NotificationServer
from tests.helpers import INSECURE, until


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_an_admin_turned_away_by_a_full_gate_gets_in_once_a_place_frees(tmp_path, tls):
    """The NS takes one handshake at a time and no one waiting; a silent peer holds that place
    until the gate cuts it (hold 1 s). The admin's first tries are closed before TLS; it tries
    again, gets in, and its request is answered."""
    ns = NotificationServer(data_dir=str(tmp_path / "ns"), insecure=not tls, max_handshakes=1)
    await ns.start()
    ns.gate.waiting = 0
    ns.gate.hold_s = 1.0
    writer = None
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", ns.port)

        async def held() -> bool:
            return ns.gate.busy == 1

        await until(held, "the silent peer to hold the only place", 10, 0.01)
        trust = ClientTrust(fingerprint=ns.tls_fingerprint) if tls else INSECURE
        async with AdminClient(ns.url, ns.first_admin_token, trust) as c:
            who = await c.call("whoami")
        assert who["admin"] and c.role == "admin"
        assert ns.gate.refused >= 1, ns.gate.stats()  # it was turned away at least once
        assert ns.gate.overstayed == 1
    finally:
        if writer is not None:
            writer.close()
        await ns.stop()


async def test_an_admin_does_not_wait_for_a_server_that_is_not_there(tmp_path):
    """Nothing listening: the admin client fails at once (no retries for a refused connect)."""
    from tests.helpers import free_port

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionRefusedError):
        async with AdminClient(f"ws://127.0.0.1:{free_port()}", "tfa_x", INSECURE):
            pass
    assert loop.time() - started < 5


async def test_the_admin_port_lets_an_admin_in_while_the_agents_gate_is_full(tmp_path):
    """``admin_port``: the main listener takes one handshake at a time and no one waiting, and a
    silent peer holds that place; an administrator on the admin listener is served at once (its
    gate is its own), the main listener still turns a newcomer away, and an agent's hello on
    the admin listener is refused with 4403."""
    import msgpack
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    from protocol import PROTOCOL_VERSION
    from protocol.session import CLOSE_NOT_ALLOWED

    ns = NotificationServer(
        data_dir=str(tmp_path / "ns"), insecure=True, max_handshakes=1, admin_port=0
    )
    await ns.start()
    ns.gate.waiting = 0
    writer = None
    try:
        assert ns.admin_url and ns.admin_port and ns.admin_port != ns.port
        _, writer = await asyncio.open_connection("127.0.0.1", ns.port)

        async def held() -> bool:
            return ns.gate.busy == 1

        await until(held, "the silent peer to hold the main listener's only place", 10, 0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with AdminClient(ns.admin_url, ns.first_admin_token, INSECURE) as c:
            who = await c.call("whoami")
            stats = await c.call("stats")
        assert who["admin"] and loop.time() - started < 5  # no waiting for the agents' gate
        assert ns.gate.busy == 1 and ns.gate.admitted == 1  # the silent peer still holds it
        assert stats["admin_gate"]["admitted"] >= 1

        # A newcomer at the main listener is turned away before TLS: the gate is full.
        reader, w2 = await asyncio.open_connection("127.0.0.1", ns.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        w2.close()
        assert ns.gate.refused >= 1

        hello = {
            "type": "hello",
            "id": "1",
            "version": PROTOCOL_VERSION,
            "role": "agent",
            "identity": "pc-1",
            "credentials": {"public_key": b"k" * 32},
            "capabilities": [],
            "info": {},
        }
        async with ws_connect(ns.admin_url, compression=None, proxy=None) as ws:
            await ws.send(msgpack.packb(hello))
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # an ``error`` message first, then the close
                    await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_NOT_ALLOWED
    finally:
        if writer is not None:
            writer.close()
        await ns.stop()
