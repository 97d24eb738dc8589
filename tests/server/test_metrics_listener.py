"""The NS's /metrics, /healthz and /readyz ride its listener's handshake gate: a plain HTTP
request waits its turn before TLS like any connection (it cannot get around the gate), and with
``--admin-port`` they are served there, not on the agents' port."""

from __future__ import annotations

import asyncio
import ssl

from server.core import NotificationServer
from tests.helpers import until


async def http_get(port: int, path: str) -> tuple[int, str]:
    """One GET over TLS to 127.0.0.1:``port`` (the NS's self-made certificate, not verified:
    this test is about the gate, the e2e tests pin it); returns (status, body)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: ns\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_an_http_request_waits_at_the_gate_like_any_connection(tmp_path):
    """One handshake at a time: while a silent peer holds the place, a GET /healthz waits in
    the waiting room (no TLS, no answer); once the peer is gone it is let in and answered."""
    ns = NotificationServer(data_dir=str(tmp_path / "ns"), max_handshakes=1)
    await ns.start()
    writer = None
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", ns.port)

        async def held() -> bool:
            return ns.gate.busy == 1

        await until(held, "the silent peer to hold the only place", 10, 0.01)
        asking = asyncio.create_task(http_get(ns.port, "/healthz"))

        async def waiting() -> bool:
            return ns.gate.stats()["waiting"] == 1

        await until(waiting, "the HTTP request to wait at the gate", 10, 0.01)
        assert not asking.done()
        writer.close()
        writer = None
        assert await asyncio.wait_for(asking, 10) == (200, "ok\n")

        async def released() -> bool:
            return ns.gate.busy == 0

        await until(released, "the answered request to give its place back", 10, 0.01)
    finally:
        if writer is not None:
            writer.close()
        await ns.stop()


async def test_with_an_admin_port_the_endpoints_are_there(tmp_path):
    """--admin-port: /metrics, /healthz and /readyz answer on the admin port; the agents' port
    treats such a request as a failed WebSocket upgrade (426)."""
    ns = NotificationServer(data_dir=str(tmp_path / "ns"), admin_port=0)
    await ns.start()
    try:
        assert ns.admin_port
        assert await http_get(ns.admin_port, "/healthz") == (200, "ok\n")
        assert await http_get(ns.admin_port, "/readyz") == (200, "ready\n")
        status, body = await http_get(ns.admin_port, "/metrics")
        assert status == 200 and 'taskfleet_handshakes_total{listener="admin"' in body
        assert 'taskfleet_listener_accept_pauses_total{listener="admin"} 0.0' in body
        assert (await http_get(ns.port, "/metrics"))[0] == 426
    finally:
        await ns.stop()
