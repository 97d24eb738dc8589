"""Issue 18, items 5 and 6: what an unauthenticated peer can cost a listener.

Idle TCP sockets from one address (no TLS) once kept every administrator out of the NS's main
port; frames of a million empty arrays before ``hello`` once cost the NS 0.19 s of CPU and
hundreds of MB each. Each test makes the attack against real listeners on loopback and checks
that it is refused and that everyone else is served meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import msgpack
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from protocol import PROTOCOL_VERSION
from protocol.messages import Request, Response
from protocol.session import CLOSE_BAD_FRAME, CLOSE_TOO_LARGE, Role
from runtime.link import Link, connect
from runtime.tls import ClientTrust
from server.core import NotificationServer
from tests.helpers import Fleet, until

IDLE = 200
OTHER = "127.0.0.2"
"""Another loopback address: the administrator (or agent) who is not the flooder."""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def idle_sockets(port: int, n: int) -> list[asyncio.StreamWriter]:
    """``n`` plain TCP connections from 127.0.0.1 that never send a byte."""
    writers = []
    for _ in range(n):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
    return writers


async def accepted(pid: int, before: int, n: int) -> None:
    """Wait until the process holds ``n`` more descriptors: it accepted the idle sockets."""

    async def check() -> bool:
        return open_fds(pid) >= before + n

    await until(check, f"process {pid} to accept {n} connections", 15, 0.02)


async def ask(link: Link, op: str, **args: Any) -> Any:
    """One admin request on a bare link (no reader task): send it, read up to its answer."""
    request = Request(id=link.next_id(), op=op, args=args)
    await link.send(request)
    while True:
        reply = await asyncio.wait_for(link.recv(), 10)
        if getattr(reply, "reply_to", "") == request.id:
            assert isinstance(reply, Response), reply
            return reply.data


async def test_idle_sockets_from_one_address_keep_no_admin_or_agent_out(fleet: Fleet):
    """200 idle TCP sockets from 127.0.0.1 (no TLS, not a byte) to the NS's main port and 200 to
    a TS's: an admin from 127.0.0.2 still gets ``whoami`` answered within a couple of seconds on
    the NS's main port (the flooding address holds more than its share of the handshake gate, so
    it gives a place up), and an agent's ``hello`` from 127.0.0.2 is answered by the TS as fast.
    """
    ns = await fleet.server()
    ts = await fleet.taskserver("ts-1")
    assert ns.proc is not None and ts.proc is not None
    held: list[asyncio.StreamWriter] = []
    try:
        for proc, port in (
            (ns, int(ns.url.rsplit(":", 1)[1])),
            (ts, int(ts.url.rsplit(":", 1)[1])),
        ):
            assert proc.proc is not None
            before = open_fds(proc.proc.pid)
            held += await idle_sockets(port, IDLE)
            await accepted(proc.proc.pid, before, IDLE)

        loop = asyncio.get_running_loop()
        started = loop.time()
        link, welcome = await connect(
            ns.url,
            role=Role.ADMIN,
            identity="admin",
            credentials={"token": fleet.admin_token},
            trust=fleet.trust(),
            source=OTHER,
        )
        try:
            who = await ask(link, "whoami")
            took = loop.time() - started
            stats = await ask(link, "stats")
        finally:
            await link.close()
        assert who["admin"] and took < 3, (took, stats)
        gate = stats["handshake_gate"]
        assert gate["preempted"] >= 1, gate  # the admin took a place from the flooder
        assert gate["admitted"] + gate["waiting"] + gate["refused"] >= IDLE, gate

        # The TS: an agent from elsewhere is answered at once (here: its ticket is refused).
        ctx = ClientTrust(fingerprint=ts.fingerprint).context(ts.url)
        started = loop.time()
        async with ws_connect(
            ts.url, ssl=ctx, local_addr=(OTHER, 0), compression=None, proxy=None, open_timeout=5
        ) as ws:
            await ws.send(msgpack.packb(hello("agent", "pc-elsewhere")))
            answer = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5))
        assert answer["type"] == "error" and answer["code"] == "bad_ticket", answer
        assert loop.time() - started < 3
    finally:
        for writer in held:
            writer.close()


def hello(role: str, identity: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "hello",
        "id": "1",
        "version": PROTOCOL_VERSION,
        "role": role,
        "identity": identity,
        "credentials": {"public_key": b"k" * 32},
        "capabilities": [],
        "info": {},
        **extra,
    }


async def test_idle_sockets_are_closed_within_the_handshake_deadline_and_over_the_cap_at_once(
    tmp_path,
):
    """An NS with TLS, a 2 s handshake deadline, 32 handshakes at once and 40 connections per
    address: of 200 idle sockets from one address, those past 40 + 16 are closed on arrival,
    before any TLS work; every other one is closed within the deadline (waiting counts), give
    or take a second; the gate ends empty, holding nothing for that address."""
    ns = NotificationServer(
        data_dir=str(tmp_path / "ns"),
        handshake_timeout_s=2.0,
        max_handshakes=32,
        max_connections_per_address=40,
    )
    await ns.start()
    loop = asyncio.get_running_loop()
    lived: list[float] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ns.port)
        opened = loop.time()
        try:
            data = await asyncio.wait_for(reader.read(), 10)
            assert data == b"", data  # closed without a byte of TLS
        except ConnectionResetError:
            pass
        lived.append(loop.time() - opened)
        writer.close()

    try:
        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(IDLE)))
        opening_s = time.monotonic() - started
        lived.sort()
        capped = ns.gate.stats()["capped"]
        assert capped >= IDLE - 56 - 20, (capped, ns.gate.stats())  # a few may close first
        assert lived[capped - 1] < 1.0, lived[:capped]  # refused on arrival
        assert lived[-1] < 2.0 + 1.5, (lived[-20:], opening_s)

        async def empty() -> bool:
            gate = ns.gate
            return not (gate.busy or gate.queue or gate.open or gate.holding or gate.over_share)

        await until(empty, "the gate to hold nothing more", 5, 0.02)
    finally:
        await ns.stop()


def million_arrays() -> bytes:
    """One msgpack map of about 1 MB: a hundred arrays of 10,000 empty arrays each."""
    inner = b"\xdc" + (10_000).to_bytes(2, "big") + b"\x90" * 10_000
    outer = b"\xdc" + (100).to_bytes(2, "big") + inner * 100
    head = msgpack.packb({"type": "hello", "id": "1"})
    return bytes([head[0] + 1]) + head[1:] + msgpack.packb("x") + outer


async def test_a_frame_of_a_million_arrays_before_hello_is_refused_at_its_header(fleet: Fleet):
    """Six peers each send a frame of a million empty arrays (just under 1 MiB) before
    ``hello`` to a real NS: each is closed with 1009 within a couple of seconds, having cost
    the NS no decoding (its resident memory grows by less than 32 MiB); a 16 KiB frame with an
    array of 5,000 items is closed with 4400 as msgpack reads its header; an admin is served
    meanwhile."""
    ns = await fleet.server()
    assert ns.proc is not None
    frame = million_arrays()
    assert 900_000 < len(frame) < 1 << 20
    ctx = fleet.trust().context(ns.url)
    before = rss_kib(ns.proc.pid)
    loop = asyncio.get_running_loop()

    async def attack(data: bytes) -> tuple[int | None, float]:
        started = loop.time()
        async with ws_connect(ns.url, ssl=ctx, compression=None, proxy=None, max_size=None) as ws:
            try:
                await ws.send(data)
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return (exc.rcvd.code if exc.rcvd else None), loop.time() - started
        raise AssertionError("unreachable")

    async def admin() -> float:
        started = loop.time()
        async with fleet.admin() as c:
            await c.call("whoami")
        return loop.time() - started

    *closed, served = await asyncio.gather(*(attack(frame) for _ in range(6)), admin())
    assert all(code == CLOSE_TOO_LARGE and took < 3 for code, took in closed), closed
    assert served < 3
    many = msgpack.packb({**hello("agent", "pc-1"), "info": {"a": list(range(5_000))}})
    assert len(many) < 16 << 10
    code, _ = await attack(many)
    assert code == CLOSE_BAD_FRAME
    grown_mib = (rss_kib(ns.proc.pid) - before) / 1024
    assert grown_mib < 32, grown_mib


async def test_after_hello_a_peer_gets_the_normal_limits_back(fleet: Fleet):
    """The small limits hold only until the peer is authenticated: an admin's request of
    100 KiB (larger than any ``hello`` may be) is answered, not refused."""
    await fleet.server()
    async with fleet.admin() as c:
        assert (await c.call("whoami", padding="x" * (100 << 10)))["admin"]
