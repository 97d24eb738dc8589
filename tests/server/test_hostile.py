"""Hostile and broken peers: each is closed with its documented code; everyone else is served."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from admin.client import AdminClient
from agent.agent import Agent
from protocol import PROTOCOL_VERSION
from protocol.session import (
    CLOSE_BAD_FRAME,
    CLOSE_BAD_MESSAGE,
    CLOSE_NOT_ALLOWED,
    CLOSE_TOO_LARGE,
    CLOSE_UNAUTHORIZED,
    CLOSE_VERSION,
)
from server.core import NotificationServer
from tests.helpers import INSECURE, task_doc, wait_run

ADMIN = "not-a-real-admin-token"
GOOD_HELLO = b"<a hello with the real admin token>"


def hello(**over):
    msg = {
        "type": "hello",
        "id": "1",
        "version": PROTOCOL_VERSION,
        "role": "admin",
        "identity": "intruder",
        "credentials": {"token": ADMIN},
        "capabilities": [],
        "info": {},
    }
    msg.update(over)
    return msgpack.packb(msg)


async def close_of(url: str, *frames: bytes | str, max_size: int | None = 2**24) -> tuple[int, str]:
    """Send frames on a raw connection; return the close code and reason the server sent."""
    async with ws_connect(url, compression=None, max_size=max_size, proxy=None) as ws:
        try:
            for f in frames:
                await ws.send(f)
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "the server did not send a close frame"
            return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("unreachable")


CASES = [
    ("garbage bytes", [b"\xc1\xc1\xc1garbage"], CLOSE_BAD_FRAME),
    ("truncated msgpack", [hello()[:-5]], CLOSE_BAD_FRAME),
    ("text frame", ["hello"], CLOSE_BAD_FRAME),
    ("not a map", [msgpack.packb([1, 2, 3])], CLOSE_BAD_FRAME),
    ("unknown type", [msgpack.packb({"type": "launch_missiles", "id": "1"})], CLOSE_BAD_MESSAGE),
    (
        "missing field",
        [msgpack.packb({"type": "hello", "id": "1", "version": 1})],
        CLOSE_BAD_MESSAGE,
    ),
    ("wrong type", [hello(version="one")], CLOSE_BAD_MESSAGE),
    ("oversize frame", [b"\x00" * (2 << 20)], CLOSE_TOO_LARGE),
    ("bad admin token", [hello(credentials={"token": "wrong"})], CLOSE_UNAUTHORIZED),
    ("agent without a key", [hello(role="agent", credentials={})], CLOSE_UNAUTHORIZED),
    ("other version", [hello(version=PROTOCOL_VERSION + 1)], CLOSE_VERSION),
    (
        "first message not hello",
        [msgpack.packb({"type": "reports", "id": "1", "items": []})],
        CLOSE_NOT_ALLOWED,
    ),
    (
        "agent message from an admin",
        [GOOD_HELLO, msgpack.packb({"type": "reports", "id": "2", "items": []})],
        CLOSE_NOT_ALLOWED,
    ),
    ("garbage after a good hello", [GOOD_HELLO, b"\xff\xfe\xfd"], CLOSE_BAD_FRAME),
    (
        "key proof that is not a proof",
        [
            hello(role="agent", credentials={"public_key": b"k" * 32}),
            msgpack.packb({"type": "tickle", "id": "9"}),
        ],
        CLOSE_NOT_ALLOWED,
    ),
    (
        "key proof with a forged signature",
        [
            hello(role="agent", credentials={"public_key": b"k" * 32}),
            msgpack.packb({"type": "proof", "id": "9", "reply_to": "1", "signature": b"s" * 64}),
        ],
        CLOSE_UNAUTHORIZED,
    ),
]


def frames_for(ns, frames):
    """Put the server's real admin token into the hellos that must pass."""
    good = hello(credentials={"token": ns.first_admin_token})
    return [good if f is GOOD_HELLO else f for f in frames]


@pytest.mark.parametrize("label,frames,code", CASES, ids=[c[0] for c in CASES])
async def test_bad_peer_is_closed_with_its_code(ns, label, frames, code):
    """Each kind of bad input closes that connection with the documented close code."""
    got, reason = await close_of(ns.url, *frames_for(ns, frames))
    assert got == code, f"{label}: closed with {got} ({reason}), expected {code}"
    assert reason, "the close frame carries a reason"


async def test_version_mismatch_names_both_versions(ns):
    """A hello with another protocol version is refused with a message naming both."""
    async with ws_connect(ns.url, compression=None, proxy=None) as ws:
        await ws.send(hello(version=99))
        reply = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))
    assert reply["type"] == "error" and reply["code"] == "version_mismatch"
    assert f"version {PROTOCOL_VERSION}" in reply["message"] and "version 99" in reply["message"]


async def test_server_keeps_serving_a_real_agent_after_hostile_peers(ns, tmp_path):
    """After every kind of hostile frame, a well-behaved agent registers and runs a task."""
    for _, frames, _ in CASES:
        await close_of(ns.url, *frames_for(ns, frames))
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        enrol = (await c.call("tokens.create", uses=1))["token"]
    agent = Agent(
        server_url=ns.url,
        name="good",
        trust=INSECURE,
        enrol_token=enrol,
        data_dir=str(tmp_path / "good"),
    )
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", text=task_doc("t", "echo fine"), filename="t.toml")
            started = await c.call("run.start", task="t", computers=["good"])
            final = await wait_run(c, started["run_id"], 30)
        assert final["status"] == "succeeded"
        assert final["instances"][0]["output"].strip() == "fine"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_slow_handshake_is_dropped_at_the_deadline(tmp_path):
    """A client that connects and never says hello is closed with 4408 at the deadline."""
    server = NotificationServer(
        data_dir=str(tmp_path / "ns"), insecure=True, handshake_timeout_s=0.5
    )
    await server.start()
    try:
        code, reason = await close_of(server.url)
        assert code == 4408, reason
    finally:
        await server.stop()
