"""``Link.send_now``: a frame that fits goes out at once; otherwise nothing is written."""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.client import connect as ws_connect

from runtime.link import Link, listen
from runtime.tls import ClientTrust, ensure_certificates, server_context


async def test_send_now_writes_what_fits_and_refuses_the_rest(tmp_path):
    """Over real TLS on loopback: an open connection takes a frame at once and the peer reads
    it; a frame bigger than the write limit, a peer that stopped reading (the buffer full) and
    a closed connection each get False, with nothing written, so the caller waits or gives up."""
    cert, key, ca = ensure_certificates(str(tmp_path / "tls"), "link-test")
    links: asyncio.Queue[Link] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        ws.handshake_done()
        await links.put(Link(ws))
        await done.wait()

    server, port = await listen(handler, "127.0.0.1", 0, ssl_context=server_context(cert, key))
    ctx = ClientTrust(ca_file=ca).context("wss://127.0.0.1")
    try:
        async with ws_connect(
            f"wss://127.0.0.1:{port}", ssl=ctx, proxy=None, compression=None, max_size=None
        ) as client:
            link = await asyncio.wait_for(links.get(), 10)
            transport = link.ws.transport
            transport.set_write_buffer_limits(high=64 * 1024)  # before the link first reads it
            assert link.send_now(b"one")
            assert await asyncio.wait_for(client.recv(), 10) == b"one"

            assert not link.send_now(b"x" * 128 * 1024)  # can never fit under the limit
            assert transport.get_write_buffer_size() == 0

            # The client stops reading: frames pile up in the server's buffer until one no
            # longer fits; from then on, nothing more is written.
            client.transport.pause_reading()
            written = 0
            frame = b"y" * 16 * 1024
            while link.send_now(frame):
                written += 1
                assert written < 10_000, "the write limit was never reached"
            assert written > 0, "not even one frame fitted"
            size = transport.get_write_buffer_size()
            assert not link.send_now(b"z" * 16 * 1024)
            assert transport.get_write_buffer_size() == size
            client.transport.resume_reading()
            for _ in range(written):  # every frame written arrives, in order and whole
                assert await asyncio.wait_for(client.recv(), 10) == frame

            await link.close()
            assert not link.send_now(b"after close")
    finally:
        done.set()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def test_deliver_hands_over_queued_then_live_messages_and_stops_at_bad_frames(tmp_path):
    """``Link.deliver`` on a listener's connection: messages read before it was called come
    first, in order, then each new one as it is read; the connection's end resolves it with
    None; a text frame, a fragmented message, or a ProtocolError from the handler resolve it
    with that error, and nothing more is handed over."""
    from protocol import codec
    from protocol.errors import FrameError, ProtocolError
    from protocol.messages import Ack

    cert, key, ca = ensure_certificates(str(tmp_path / "tls"), "link-test")
    ctx = ClientTrust(ca_file=ca).context("wss://127.0.0.1")
    go = asyncio.Event()
    results: asyncio.Queue[tuple[list[str], object]] = asyncio.Queue()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        ws.handshake_done()
        seen: list[str] = []
        await go.wait()  # the client's first messages wait in websockets' queue meanwhile

        def take(message) -> None:  # type: ignore[no-untyped-def]
            seen.append(message.id)
            if message.id == "bad":
                raise ProtocolError("refused by the handler")

        outcome = await Link(ws).deliver(take)
        await results.put((seen, outcome))

    def frame(mid: str) -> bytes:
        return codec.encode(Ack(id=mid, reply_to="x"))

    server, port = await listen(handler, "127.0.0.1", 0, ssl_context=server_context(cert, key))
    url = f"wss://127.0.0.1:{port}"
    try:
        # Queued, then live, then the client closes: all handed over in order, then None.
        async with ws_connect(url, ssl=ctx, proxy=None, compression=None) as client:
            for mid in ("1", "2", "3"):
                await client.send(frame(mid))
            pong = await client.ping()
            await asyncio.wait_for(pong, 10)  # the server has read them once the pong is back
            go.set()
            await client.send(frame("4"))
            await client.send(frame("5"))
        seen, outcome = await asyncio.wait_for(results.get(), 10)
        assert seen == ["1", "2", "3", "4", "5"] and outcome is None

        # The handler refuses one: it is the last handed over, and the refusal is the result.
        async with ws_connect(url, ssl=ctx, proxy=None, compression=None) as client:
            for mid in ("1", "bad", "3"):
                await client.send(frame(mid))
            seen, outcome = await asyncio.wait_for(results.get(), 10)
        assert seen == ["1", "bad"]
        assert isinstance(outcome, ProtocolError) and outcome.message == "refused by the handler"

        # A text frame, and a fragmented message: refused as bad frames.
        for bad in ("text", [frame("6")[:5], frame("6")[5:]]):
            async with ws_connect(url, ssl=ctx, proxy=None, compression=None) as client:
                await client.send(frame("1"))
                await client.send(bad)  # type: ignore[arg-type]
                seen, outcome = await asyncio.wait_for(results.get(), 10)
            assert seen == ["1"]
            assert isinstance(outcome, FrameError) and outcome.close_code == 4400
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
