"""The handshake gate (runtime.gate) on a real TLS listener: a burst waits its turn before TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest
from websockets.asyncio.client import connect as ws_connect

from runtime.gate import Gate
from runtime.link import listen
from runtime.tls import ClientTrust, ensure_certificates, server_context
from tests import helpers


@pytest.fixture
def tls(tmp_path):
    cert, key, ca = ensure_certificates(str(tmp_path / "tls"), "gate-test")
    return server_context(cert, key), ClientTrust(ca_file=ca).context("wss://127.0.0.1")


class Listener:
    """A gated TLS listener whose handler holds each connection's slot until told to let go."""

    def __init__(self, gate: Gate):
        self.gate = gate
        self.let_go: asyncio.Queue[None] = asyncio.Queue()
        self.served = 0
        self.in_handler = asyncio.Event()

    async def handler(self, ws) -> None:
        self.served += 1
        self.in_handler.set()
        await self.let_go.get()
        ws.handshake_done()
        await ws.send(b"welcome")
        with contextlib.suppress(Exception):
            await ws.wait_closed()


@contextlib.asynccontextmanager
async def gated(gate: Gate, server_ctx: ssl.SSLContext):
    """A gated TLS listener on loopback port 0: yields (listener, port); closed at the end."""
    lst = Listener(gate)
    server, port = await listen(lst.handler, "127.0.0.1", 0, ssl_context=server_ctx, gate=gate)
    try:
        yield lst, port
    finally:
        server.close()
        gate.close()
        await server.wait_closed()


async def open_client(port: int, ctx: ssl.SSLContext) -> bytes:
    async with ws_connect(
        f"wss://127.0.0.1:{port}", ssl=ctx, proxy=None, open_timeout=10, compression=None
    ) as ws:
        return await asyncio.wait_for(ws.recv(), 10)  # type: ignore[return-value]


async def until(predicate, what: str) -> None:
    async def check() -> bool:
        return bool(predicate())

    await helpers.until(check, what, 10, 0.01)


async def test_a_connection_beyond_the_limit_waits_before_tls_then_is_served(tls):
    server_ctx, client_ctx = tls
    gate = Gate(limit=1)
    async with gated(gate, server_ctx) as (lst, port):
        first = asyncio.create_task(open_client(port, client_ctx))
        await asyncio.wait_for(lst.in_handler.wait(), 10)
        second = asyncio.create_task(open_client(port, client_ctx))
        await until(lambda: len(gate.queue) == 1, "the second connection to wait")
        # It waits with no TLS done: its TLS handshake has not even begun, so no handler runs.
        assert gate.busy == 1 and lst.served == 1
        assert not second.done()

        lst.let_go.put_nowait(None)  # the first is welcomed: its slot goes to the second
        assert await asyncio.wait_for(first, 10) == b"welcome"
        await until(lambda: lst.served == 2, "the second connection to reach its handler")
        lst.let_go.put_nowait(None)
        assert await asyncio.wait_for(second, 10) == b"welcome"
        assert gate.stats()["admitted"] == 2 and gate.refused == 0
        assert gate.peak == 1


async def test_a_full_waiting_room_closes_new_connections_before_tls_and_serves_the_rest(tls):
    server_ctx, client_ctx = tls
    gate = Gate(limit=1, waiting=0)
    async with gated(gate, server_ctx) as (lst, port):
        first = asyncio.create_task(open_client(port, client_ctx))
        await asyncio.wait_for(lst.in_handler.wait(), 10)
        with pytest.raises((OSError, ssl.SSLError, EOFError)):
            await open_client(port, client_ctx)
        assert gate.refused == 1
        lst.let_go.put_nowait(None)
        assert await asyncio.wait_for(first, 10) == b"welcome"  # the admitted one is untouched
        assert lst.served == 1


async def test_a_full_waiting_room_stops_accepting_until_half_of_it_is_gone(tls):
    """With ``pause_at`` waiting, the listener accepts nothing more: a client connecting then waits
    in the kernel's listen queue, costing the process nothing, and is accepted once the room has
    emptied to half, then served."""
    server_ctx, client_ctx = tls
    gate = Gate(limit=1, pause_at=1)
    async with gated(gate, server_ctx) as (lst, port):
        first = asyncio.create_task(open_client(port, client_ctx))
        await asyncio.wait_for(lst.in_handler.wait(), 10)
        second = asyncio.create_task(open_client(port, client_ctx))
        await until(lambda: not gate.accepting, "the listener to stop accepting")
        assert len(gate.queue) == 1 and gate.pauses == 1
        arrived = sum(gate.open.values())
        # The kernel completes this TCP handshake from its listen queue; the gate never hears of
        # it while the listener is paused.
        third = asyncio.create_task(open_client(port, client_ctx))
        await asyncio.sleep(0.3)
        assert sum(gate.open.values()) == arrived and len(gate.queue) == 1
        assert not third.done()

        lst.let_go.put_nowait(None)  # the first is done: the second goes in, the room empties
        assert await asyncio.wait_for(first, 10) == b"welcome"
        await until(lambda: lst.served == 2, "the second connection to reach its handler")
        # The room emptied: the listener accepted again, took the third, and paused once more.
        await until(lambda: len(gate.queue) == 1, "the third connection accepted, waiting")
        assert gate.pauses == 2 and not gate.accepting
        lst.let_go.put_nowait(None)
        assert await asyncio.wait_for(second, 10) == b"welcome"
        await until(lambda: lst.served == 3, "the third connection to reach its handler")
        lst.let_go.put_nowait(None)
        assert await asyncio.wait_for(third, 10) == b"welcome"
        assert gate.refused == 0 and gate.accepting


async def test_a_connection_that_waited_too_long_is_closed_not_started(tls):
    server_ctx, client_ctx = tls
    gate = Gate(limit=1, wait_s=0.0)
    async with gated(gate, server_ctx) as (lst, port):
        first = asyncio.create_task(open_client(port, client_ctx))
        await asyncio.wait_for(lst.in_handler.wait(), 10)
        late = asyncio.create_task(open_client(port, client_ctx))
        await until(lambda: len(gate.queue) == 1, "the second connection to wait")
        # With wait_s=0, any wait is too long: as if its client had given up meanwhile.
        lst.let_go.put_nowait(None)
        assert await asyncio.wait_for(first, 10) == b"welcome"
        with pytest.raises((OSError, ssl.SSLError, EOFError)):
            await asyncio.wait_for(late, 10)
        assert gate.refused == 1 and lst.served == 1 and gate.busy == 0


async def test_a_client_that_leaves_during_tls_gives_its_slot_back(tls):
    server_ctx, client_ctx = tls
    gate = Gate(limit=1)
    async with gated(gate, server_ctx) as (lst, port):
        # A bare TCP connection that never speaks TLS, then leaves: it takes the slot, then frees it.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: gate.busy == 1, "the bare connection to be admitted")
        waiting = asyncio.create_task(open_client(port, client_ctx))
        await until(lambda: len(gate.queue) == 1, "the TLS client to wait")
        writer.close()
        await until(lambda: lst.served == 1, "the TLS client to be admitted after the leaver")
        lst.let_go.put_nowait(None)
        assert await asyncio.wait_for(waiting, 10) == b"welcome"


async def test_a_silent_peer_is_cut_after_hold_s_and_the_next_one_is_served(tls):
    server_ctx, client_ctx = tls
    gate = Gate(limit=1, hold_s=1.0)
    async with gated(gate, server_ctx) as (lst, port):
        lst.let_go.put_nowait(None)  # the TLS client, once in, finishes its handshake at once
        # A peer that connects and says nothing would hold the only place for the TLS timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: gate.busy == 1, "the silent peer to be admitted")
        waiting = asyncio.create_task(open_client(port, client_ctx))
        await until(lambda: len(gate.queue) == 1, "the TLS client to wait")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # cut by the gate
        assert await asyncio.wait_for(waiting, 10) == b"welcome"
        assert lst.served == 1
        assert gate.overstayed == 1
        writer.close()


def test_a_gate_lets_at_least_one_through():
    with pytest.raises(ValueError, match="at least one"):
        Gate(limit=0)
