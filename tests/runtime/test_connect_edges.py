"""``runtime.link.connect`` at the edges of a connection's start: a server that closes right
after the TLS handshake, and connecting to an IP address written out (no resolver involved).
Real OpenSSL on real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from pathlib import Path

import pytest

from protocol.session import Role
from runtime import tlsio
from runtime.link import connect, refused_for_good
from runtime.tls import ClientTrust, ensure_certificates, file_fingerprint, server_context

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def test_a_server_that_closes_right_after_the_handshake_is_a_lost_connection(
    tmp_path: Path,
):
    """A server that completes TLS, accepts the WebSocket upgrade and closes at once (a server
    going down, a gate giving up) used to surface as an AttributeError out of the pin check
    (``getpeercert`` on a socket already closed), which the agent logged as a bug. It is an
    ordinary lost connection (an OSError), which no one takes as a reason to stop retrying."""
    cert, key, _ = ensure_certificates(str(tmp_path), "closer")
    served = 0

    async def upgrade_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        nonlocal served
        served += 1
        request = await reader.readuntil(b"\r\n\r\n")
        line = next(x for x in request.split(b"\r\n") if x.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(line.split(b":", 1)[1].strip() + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + b"\x88\x02\x03\xe8"  # close 1000
        )
        writer.close()

    server = await asyncio.start_server(
        upgrade_then_close, "127.0.0.1", 0, ssl=server_context(cert, key)
    )
    port = server.sockets[0].getsockname()[1]
    trust = ClientTrust(fingerprint=file_fingerprint(cert))
    try:
        for _ in range(3):
            with pytest.raises(OSError) as lost:
                await connect(
                    f"wss://127.0.0.1:{port}",
                    role=Role.AGENT,
                    identity="pc-1",
                    credentials={},
                    trust=trust,
                )
            assert "closed the connection right after the TLS handshake" in str(lost.value)
            assert not refused_for_good(lost.value)
        assert served == 3
    finally:
        server.close()
        await server.wait_closed()


async def test_an_ip_address_is_connected_to_without_the_resolver(monkeypatch):
    """An IP address (``127.0.0.1``) needs no ``getaddrinfo`` (the event loop's goes through its
    thread pool, a cost per connect); a name still does."""
    asked: list[str] = []
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def counting(host, *args, **kwargs):
        asked.append(host)
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counting)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        sock = await tlsio.open_socket("127.0.0.1", port)
        assert sock.getpeername() == ("127.0.0.1", port)
        sock.close()
        assert asked == []
        sock = await tlsio.open_socket("localhost", port)
        sock.close()
        assert asked == ["localhost"]
    finally:
        listener.close()
