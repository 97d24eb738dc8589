"""``runtime.tlsio``: TLS with OpenSSL on the socket, as an asyncio transport; and the listener's
one keepalive loop (``runtime.keepalive``). Real OpenSSL on real sockets throughout."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect as stock_connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.protocol import State

from runtime.gate import Gate
from runtime.keepalive import Keepalive, WatchedConnection, watchdog
from runtime.link import listen
from runtime.tls import ClientTrust, ensure_certificates, server_context
from runtime.tlsio import Connect, TLSTransport, handshake
from tests.helpers import until


class Recorder(asyncio.Protocol):
    """Keeps what its transport tells it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.got: asyncio.Queue[int] = asyncio.Queue()
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.paused = 0
        self.resumed = 0

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.put_nowait(len(self.data))

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    async def until(self, size: int) -> None:
        while len(self.data) < size:
            await asyncio.wait_for(self.got.get(), 10)


@pytest.fixture
def contexts(tmp_path):
    cert, key, ca = ensure_certificates(str(tmp_path / "tls"), "tlsio-test")
    return server_context(cert, key), ClientTrust(ca_file=ca).context("wss://127.0.0.1")


@contextlib.asynccontextmanager
async def pair(contexts):
    """Two handshaken TLSTransports on the two ends of a real TCP connection on loopback."""
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)
    plain = socket.socket()
    plain.setblocking(False)
    await loop.sock_connect(plain, lsock.getsockname())
    accepted, _ = await loop.sock_accept(lsock)
    lsock.close()
    accepted.setblocking(False)
    a = server_ctx.wrap_socket(accepted, server_side=True, do_handshake_on_connect=False)
    b = client_ctx.wrap_socket(plain, server_hostname="127.0.0.1", do_handshake_on_connect=False)
    await asyncio.wait_for(asyncio.gather(handshake(a), handshake(b)), 10)
    pa, pb = Recorder(), Recorder()
    ta, tb = TLSTransport(loop, a, pa), TLSTransport(loop, b, pb)
    ta.begin()
    tb.begin()
    try:
        yield (ta, pa), (tb, pb)
    finally:
        ta.abort()
        tb.abort()
        await asyncio.sleep(0)


async def test_bytes_arrive_whole_and_in_order_both_ways(contexts):
    async with pair(contexts) as ((ta, pa), (tb, pb)):
        ta.write(b"hello ")
        ta.writelines([b"over ", b"tls"])
        await pb.until(len(b"hello over tls"))
        assert bytes(pb.data) == b"hello over tls"
        big = os.urandom(3 * 1024 * 1024)  # one write of many TLS records
        tb.write(big)
        await pa.until(len(big))
        assert hashlib.sha256(pa.data).digest() == hashlib.sha256(big).digest()
        assert tb.get_write_buffer_size() == 0
        assert ta.get_extra_info("peername") == tb.get_extra_info("sockname")
        assert tb.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert ta.get_extra_info("cipher") is not None


async def test_a_reader_that_stops_pauses_the_writer_then_everything_arrives(contexts):
    """Flow control: with the peer not reading, queued bytes pass the high-water mark and the
    protocol is paused; once the peer reads again the queue drains below the low mark, the
    protocol resumes, and every byte arrives in order."""
    async with pair(contexts) as ((ta, pa), (tb, pb)):
        ta.set_write_buffer_limits(high=256 * 1024)
        assert ta.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
        tb.pause_reading()
        assert not tb.is_reading()
        sent = bytearray()
        chunk = 0
        while pa.paused == 0:
            data = bytes([chunk % 256]) * 32 * 1024
            ta.write(data)
            sent += data
            chunk += 1
            assert chunk < 2000, "the writer was never paused"
        assert ta.get_write_buffer_size() > 256 * 1024
        tb.resume_reading()
        await pb.until(len(sent))
        assert pb.data == sent
        assert pa.resumed == 1
        assert ta.get_write_buffer_size() == 0


async def test_close_sends_close_notify_and_the_peer_sees_an_end(contexts):
    async with pair(contexts) as ((ta, pa), (tb, pb)):
        ta.write(b"last words")
        ta.close()
        assert ta.is_closing()
        assert await asyncio.wait_for(pa.lost, 10) is None
        assert await asyncio.wait_for(pb.lost, 10) is None
        assert bytes(pb.data) == b"last words"
        assert pb.eof, "close_notify reached the peer as an end of stream"
        ta.write(b"after close")  # ignored, like asyncio's transports after close


async def test_bytes_that_are_not_tls_end_that_connection_with_an_error(contexts):
    """A peer writing garbage under the TLS layer: that connection ends with an SSL error."""
    async with pair(contexts) as ((ta, pa), (tb, pb)):
        os.write(tb.get_extra_info("socket").fileno(), b"\x17\x03\x03\x00\x10" + b"\x00" * 16)
        exc = await asyncio.wait_for(pa.lost, 10)
        assert isinstance(exc, ssl.SSLError)
        assert ta.is_closing()


async def test_a_protocol_that_fails_on_data_ends_only_its_connection(contexts):
    """An exception in ``data_received`` is reported to the loop's exception handler and ends
    that connection (as asyncio's own transports do), not the loop's callback."""
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with pair(contexts) as ((ta, pa), (tb, pb)):

            def broken(data: bytes) -> None:
                raise ValueError("a bug")

            pa.data_received = broken  # type: ignore[method-assign]
            tb.write(b"anything")
            exc = await asyncio.wait_for(pa.lost, 10)
            assert isinstance(exc, ValueError) and ta.is_closing()
            assert reported and reported[0]["exception"] is exc
            assert await asyncio.wait_for(pb.lost, 10) is None  # the peer sees an end
    finally:
        loop.set_exception_handler(None)


async def test_websockets_over_tlstransport_on_both_ends(contexts):
    """The listener (``runtime.link.listen``) and the client (``runtime.tlsio.Connect``) both run
    over TLSTransport; a stock websockets client (asyncio's TLS) still talks to the listener."""
    server_ctx, client_ctx = contexts
    seen: list[object] = []

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        ws.handshake_done()
        seen.append(ws.transport)
        async for message in ws:
            await ws.send(message)

    gate = Gate()
    server, port = await listen(handler, "127.0.0.1", 0, ssl_context=server_ctx, gate=gate)
    try:
        async with Connect(
            f"wss://127.0.0.1:{port}", ssl=client_ctx, proxy=None, compression=None
        ) as ws:
            assert isinstance(ws.transport, TLSTransport)
            await ws.send(b"x" * 200_000)
            assert await asyncio.wait_for(ws.recv(), 10) == b"x" * 200_000
        async with stock_connect(
            f"wss://127.0.0.1:{port}", ssl=client_ctx, proxy=None, compression=None
        ) as ws:
            assert not isinstance(ws.transport, TLSTransport)
            await ws.send(b"stock")
            assert await asyncio.wait_for(ws.recv(), 10) == b"stock"
        assert len(seen) == 2 and all(isinstance(t, TLSTransport) for t in seen)
    finally:
        server.close()
        gate.close()
        await server.wait_closed()


async def test_keepalive_fails_a_silent_peer_and_keeps_the_others(contexts):
    """One loop pings every connection: a client that stops reading (no pongs) is closed with
    1011 after the timeout; a client that answers stays open, its latency measured."""
    server_ctx, client_ctx = contexts
    closed: dict[str, int | None] = {}  # the code each server-side connection closed with
    silent_closed = asyncio.Event()
    opened: asyncio.Queue[str] = asyncio.Queue()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        ws.handshake_done()
        name = (await ws.recv()).decode()
        await opened.put(name)
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()
        sent = ws.protocol.close_sent  # the close frame this side sent, if any
        closed[name] = sent.code if sent is not None else None
        if name == "silent":
            silent_closed.set()

    gate = Gate()
    gate.keepalive = Keepalive(interval_s=0.4, timeout_s=0.4)
    server, port = await listen(handler, "127.0.0.1", 0, ssl_context=server_ctx, gate=gate)
    url = f"wss://127.0.0.1:{port}"
    try:
        async with (
            Connect(url, ssl=client_ctx, proxy=None, ping_interval=None) as alive,
            Connect(url, ssl=client_ctx, proxy=None, ping_interval=None) as silent,
        ):
            await alive.send(b"alive")
            await silent.send(b"silent")
            assert {await opened.get(), await opened.get()} == {"alive", "silent"}
            assert gate.keepalive.count == 2
            silent.transport.pause_reading()  # it no longer reads, so never answers a ping
            await asyncio.wait_for(silent_closed.wait(), 10)
            assert closed["silent"] == 1011
            assert gate.keepalive.failed == 1
            assert "alive" not in closed
            await asyncio.wait_for(alive.ping(), 5)
            server_side = [ws for bucket in gate.keepalive.buckets for ws in bucket]
            assert len(server_side) == 1 and server_side[0].latency > 0
            silent.transport.abort()  # it would wait out its close timeout, reading nothing
    finally:
        server.close()
        gate.close()
        await server.wait_closed()
    assert gate.keepalive.count == 0


@contextlib.asynccontextmanager
async def speaking_and_mute(
    handler: Any, ping_every_s: float, ctx: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, int]]:
    """Two listeners: one pings every ``ping_every_s``, the other never (within a test)."""
    speaking, mute = Gate(), Gate()
    speaking.keepalive = Keepalive(interval_s=ping_every_s, timeout_s=0.5)
    mute.keepalive = Keepalive(interval_s=3600, timeout_s=3600)
    servers = [
        await listen(handler, "127.0.0.1", 0, ssl_context=ctx, gate=g) for g in (speaking, mute)
    ]
    try:
        yield servers[0][1], servers[1][1]
    finally:
        for server, _ in servers:
            server.close()
            await server.wait_closed()
        speaking.close()
        mute.close()


def watched(url: str, ctx: ssl.SSLContext | None = None) -> Connect:
    """A client as ``link.connect`` opens one: no pings, a watchdog for the server's silence."""
    return Connect(
        url, ssl=ctx, proxy=None, ping_interval=None, create_connection=WatchedConnection
    )


async def test_a_client_sends_no_pings_and_fails_a_server_gone_silent(contexts):
    """A client of our listeners (``link.connect``'s ``WatchedConnection``) pings nothing: it
    hears the listener's pings, stays open while they come, and fails with 1011 a connection
    on which it has heard nothing for its watchdog's silence."""
    server_ctx, client_ctx = contexts
    pings_seen: list[int] = []

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        ws.handshake_done()
        # Anything the client pings would reach this side as a PING frame; count them.
        original = ws.process_event

        def process_event(event) -> None:  # type: ignore[no-untyped-def]
            if getattr(event, "opcode", None) is Opcode.PING:
                pings_seen.append(1)
            original(event)

        ws.process_event = process_event
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    dog = watchdog()  # this test's event loop's watchdog, before any connection starts it
    dog.silence_s, dog.check_every_s = 0.8, 0.2
    async with speaking_and_mute(handler, 0.2, server_ctx) as (live_port, mute_port):
        async with (
            watched(f"wss://127.0.0.1:{live_port}", client_ctx) as live,
            watched(f"wss://127.0.0.1:{mute_port}", client_ctx) as silent,
        ):
            assert dog.count == 2
            opened = time.monotonic()
            await asyncio.wait_for(silent.wait_closed(), 10)
            assert silent.protocol.close_sent is not None
            assert silent.protocol.close_sent.code == 1011
            assert silent.protocol.close_sent.reason == "keepalive: the server went silent"
            assert time.monotonic() - opened >= dog.silence_s
            # The live one hears pings for three silences' time and stays open.
            await until(
                lambda: _true(live.heard - opened > 3 * dog.silence_s), "pings for 2.4 s", 10
            )
            assert live.protocol.state is State.OPEN
            assert dog.failed == 1 and dog.count == 1
            assert live.latency == 0  # it never pinged, so it never measured a pong
    assert pings_seen == []
    assert dog.count == 0


async def _true(value: bool) -> bool:
    return value


class BusyServer:
    """A pinging listener (every 0.2 s, a pong 0.2 s late is overdue) whose handler reads one
    message, then nothing until ``release`` is set, then ``MESSAGES - 1`` more: a server too busy
    to read its client, as an NS behind on a TS's reports or an admin script's requests."""

    MESSAGES = 201

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.got: list[bytes] = []
        self.closed: list[int | None] = []
        self.gate = Gate()
        self.gate.keepalive = Keepalive(interval_s=0.2, timeout_s=0.2)

    async def handler(self, ws: Any) -> None:
        ws.handshake_done()
        self.got.append(await ws.recv())
        await self.release.wait()  # busy: reads nothing more for now
        with contextlib.suppress(ConnectionClosed):
            while len(self.got) < self.MESSAGES:
                self.got.append(await ws.recv())
            await ws.wait_closed()
        sent = ws.protocol.close_sent
        self.closed.append(sent.code if sent is not None else None)

    async def all_read(self) -> bool:
        return len(self.got) == self.MESSAGES


@contextlib.asynccontextmanager
async def busy_server(server_ctx: ssl.SSLContext) -> AsyncIterator[tuple[BusyServer, int]]:
    busy = BusyServer()
    server, port = await listen(
        busy.handler, "127.0.0.1", 0, ssl_context=server_ctx, gate=busy.gate
    )
    try:
        yield busy, port
    finally:
        busy.release.set()
        server.close()
        busy.gate.close()
        await server.wait_closed()


async def test_a_spared_peer_still_hears_the_server_and_its_watchdog_keeps_it(contexts):
    """While the server spares a client it stopped reading (its pong unread behind its messages),
    it goes on pinging: the client, which fails a server silent for its watchdog's silence, keeps
    the connection through several silences, and all its messages are read afterwards."""
    server_ctx, client_ctx = contexts
    dog = watchdog()
    dog.silence_s, dog.check_every_s = 0.8, 0.1
    async with (
        busy_server(server_ctx) as (busy, port),
        watched(f"wss://127.0.0.1:{port}", client_ctx) as client,
    ):
        for i in range(busy.MESSAGES):
            await client.send(b"request %d" % i)

        async def spared_for_three_silences() -> bool:
            return busy.gate.keepalive.spared >= 12 or dog.failed > 0

        await until(spared_for_three_silences, "the busy client spared for 2.4 s", 20)
        assert dog.failed == 0, "the client took the busy server for a silent one"
        assert client.protocol.state is State.OPEN
        busy.release.set()
        await until(busy.all_read, "the server reading every message", 20)
        assert busy.gate.keepalive.failed == 0 and dog.failed == 0


async def test_the_watchdog_checks_a_large_fleet_bucket_by_bucket():
    """With many connections the watchdog visits one bucket per tick: every client of a mute
    server is failed within the silence plus one round of buckets, a client of a pinging one
    is kept."""
    dog = watchdog()
    dog.silence_s, dog.check_every_s = 0.6, 0.4

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        ws.handshake_done()
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    async with (
        speaking_and_mute(handler, 0.1) as (live_port, mute_port),
        contextlib.AsyncExitStack() as stack,
    ):
        live = await stack.enter_async_context(watched(f"ws://127.0.0.1:{live_port}"))
        silent = [
            await stack.enter_async_context(watched(f"ws://127.0.0.1:{mute_port}"))
            for _ in range(30)
        ]
        assert dog.count == 31  # above the bucket count: the bucketed path
        await asyncio.wait_for(asyncio.gather(*(ws.wait_closed() for ws in silent)), 10)
        assert all(ws.protocol.close_sent.code == 1011 for ws in silent)
        assert dog.failed == 30
        assert live.protocol.state is State.OPEN


async def test_keepalive_spares_a_peer_whose_messages_wait_unread(contexts):
    """A client that sends faster than the server consumes (an admin script pipelining
    requests) makes the server stop reading it, so its pongs wait unread behind its messages:
    the keepalive must not fail it for that. Once the server reads again, all is there."""
    server_ctx, client_ctx = contexts
    async with (
        busy_server(server_ctx) as (busy, port),
        Connect(
            f"wss://127.0.0.1:{port}", ssl=client_ctx, proxy=None, ping_interval=None
        ) as client,
    ):
        for i in range(busy.MESSAGES):
            await client.send(b"request %d" % i)

        async def overdue_twice() -> bool:  # failed, or forgiven twice
            return busy.gate.keepalive.failed > 0 or busy.gate.keepalive.spared >= 2

        await until(overdue_twice, "two pongs overdue behind the unread messages", 20)
        assert busy.gate.keepalive.failed == 0, "the busy connection was failed"
        busy.release.set()
        await until(busy.all_read, "the server reading every message", 20)
        await asyncio.wait_for(client.ping(), 5)  # still open both ways
        assert busy.closed == [] and busy.gate.keepalive.failed == 0
