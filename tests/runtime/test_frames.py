"""Binary frames read and written without websockets' general machinery (runtime.frames).

A real listener (``runtime.link.listen``) and real sockets. The raw client speaks WebSocket by
hand so that it can send what no well-behaved client sends; chunk boundaries are set exactly by
handing the server connection's ``data_received`` the bytes as a transport would."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import struct
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from protocol import codec
from runtime.keepalive import WatchedConnection
from runtime.link import Link, listen
from runtime.tls import ClientTrust, ensure_certificates, server_context
from runtime.tlsio import Connect

LIMIT = codec.DEFAULT_LIMITS.max_frame_bytes
SIZES = [0, 1, 125, 126, 127, 1000, 65535, 65536, 200_000]


def frame(payload: bytes, opcode: int = 2, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client's frame (masked unless told not to)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def chop(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` in pieces from one byte to a few frames long."""
    pieces, at = [], 0
    while at < len(data):
        n = rng.choice([1, 2, 3, 7, 64, 1000, 70_000, 300_000])
        pieces.append(data[at : at + n])
        at += n
    return pieces


class Server:
    """A plain listener that keeps each connection and what it received."""

    def __init__(self) -> None:
        self.conns: asyncio.Queue[Any] = asyncio.Queue()
        self.got: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(self, ws: Any) -> None:
        ws.handshake_done()
        self.conns.put_nowait(ws)
        try:
            async for message in ws:
                self.got.put_nowait(message)
        except ConnectionClosed:
            pass
        self.got.put_nowait(("closed", ws.close_code))

    async def next(self) -> Any:
        return await asyncio.wait_for(self.got.get(), 10)


@pytest.fixture
async def server():
    s = Server()
    listener, port = await listen(s.handler, "127.0.0.1", 0)
    s.port = port
    yield s
    listener.close()
    await listener.wait_closed()


class Raw:
    """A WebSocket client by hand, over a plain socket."""

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head

    async def read_frame(self) -> tuple[int, bytes]:
        """The server's next frame (unmasked): (opcode, payload)."""
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 10)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), 10)

    def close(self) -> None:
        self.writer.close()


async def connected(server: Server) -> tuple[Raw, Any]:
    raw = Raw()
    await raw.open(server.port)
    ws = await asyncio.wait_for(server.conns.get(), 10)
    return raw, ws


def feed(ws: Any, pieces: list[bytes]) -> None:
    """Hand the server connection these bytes, one ``data_received`` per piece."""
    for piece in pieces:
        ws.data_received(piece)


async def test_binary_frames_in_any_chunks_arrive_whole_and_in_order(server):
    """Frames of every length encoding, cut anywhere (one byte at a time, mid-header, many
    frames at once), arrive whole and in order, read the fast way."""
    raw, ws = await connected(server)
    rng = random.Random(7)
    payloads = [os.urandom(n) for n in SIZES * 3]
    rng.shuffle(payloads)
    feed(ws, chop(b"".join(frame(p) for p in payloads), rng))
    assert [await server.next() for _ in payloads] == payloads
    assert ws._fast is not None and not ws._fast_off
    raw.close()


async def test_a_ping_between_frames_is_answered_and_the_fast_path_stays(server):
    """A ping cut across chunks between binary frames: websockets answers it with its pong,
    the frames around it arrive, and the connection stays on the fast path."""
    raw, ws = await connected(server)
    feed(ws, [frame(b"one")])  # the fast path starts at the first frame boundary
    assert await server.next() == b"one"
    data = frame(b"two") + frame(b"are you there", opcode=9) + frame(b"three")
    feed(ws, [data[:5], data[5:12], data[12:]])
    assert await server.next() == b"two"
    assert await server.next() == b"three"
    assert await raw.read_frame() == (10, b"are you there")
    assert ws._fast is not None and not ws._fast_off
    raw.close()


async def test_a_text_frame_hands_the_stream_to_websockets(server):
    """A text frame is not taskfleet's: from its first byte websockets takes the stream for
    good (the part already read included) and reads it, and what follows, as it always does."""
    raw, ws = await connected(server)
    text = frame("héllo".encode(), opcode=1)
    feed(ws, [frame(b"bin") + text[:3], text[3:] + frame(b"after")])
    assert [await server.next() for _ in range(3)] == [b"bin", "héllo", b"after"]
    assert ws._fast_off and ws._fast is None
    raw.close()


async def test_an_unmasked_client_frame_is_a_protocol_error(server):
    """A client frame without a mask: websockets fails the connection with 1002."""
    raw, ws = await connected(server)
    feed(ws, [frame(b"fine")])
    assert await server.next() == b"fine"
    feed(ws, [frame(b"bare", mask=False)])
    opcode, payload = await raw.read_frame()
    assert (opcode, payload[:2]) == (8, struct.pack("!H", 1002))
    raw.close()
    assert (await server.next())[0] == "closed"


async def test_a_frame_over_the_limit_closes_with_1009(server):
    """A header that announces more than the frame limit: 1009 from websockets, at once."""
    raw, ws = await connected(server)
    feed(ws, [frame(b"fine")])
    assert await server.next() == b"fine"
    too_big = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", LIMIT + 1) + os.urandom(4)
    feed(ws, [too_big])
    opcode, payload = await raw.read_frame()
    assert (opcode, payload[:2]) == (8, struct.pack("!H", 1009))
    raw.close()
    assert (await server.next())[0] == "closed"


async def test_a_client_reads_and_writes_frames_the_fast_way(tmp_path):
    """Over TLS on taskfleet's transport, both ways: every length encoding arrives whole at
    each end (the client masks what it sends), and the client reads the fast way."""
    cert, key, ca = ensure_certificates(str(tmp_path / "tls"), "frames-test")
    server = Server()
    listener, port = await listen(
        server.handler, "127.0.0.1", 0, ssl_context=server_context(cert, key)
    )
    try:
        client: ClientConnection = await Connect(
            f"wss://127.0.0.1:{port}",
            ssl=ClientTrust(ca_file=ca).context("wss://127.0.0.1"),
            proxy=None,
            ping_interval=None,
            max_size=LIMIT,
            create_connection=WatchedConnection,
        )
        ws = await asyncio.wait_for(server.conns.get(), 10)
        ours, theirs = Link(client), Link(ws)
        payloads = [os.urandom(n) for n in SIZES]
        for p in payloads:  # larger than the write limit: websockets' own send, which waits
            await ours.send_frame(p)
            assert await server.next() == p
        for p in payloads:
            await theirs.send_frame(p)
            assert await asyncio.wait_for(client.recv(), 10) == p
        assert client._fast is not None and not client._fast_off
        assert ws._fast is not None and not ws._fast_off
        await client.close()
    finally:
        listener.close()
        await listener.wait_closed()
