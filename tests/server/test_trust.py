"""Authorization and hostile peers with real keys: each rule refuses, counts and logs."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from admin.client import AdminClient
from agent.agent import Agent
from protocol import PROTOCOL_VERSION
from protocol.errors import RemoteError
from protocol.identity import proof_payload
from protocol.messages import Report, Reports, Request
from protocol.session import Role
from runtime.keys import public_bytes
from runtime.link import connect
from server.core import NotificationServer
from tests.helpers import INSECURE, task_doc, until, wait_run


async def enrol_token(ns, uses: int = 10, role: str = "agent") -> str:
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        return (await c.call("tokens.create", uses=uses, role=role))["token"]


async def rogue(ns, role: Role, name: str, **info):
    """A peer with a real, enrolled key that speaks the protocol by hand."""
    key = Ed25519PrivateKey.generate()
    return await connect(
        ns.url,
        role=role,
        identity=name,
        credentials={"enrol_token": await enrol_token(ns, role=str(role))},
        key=key,
        trust=INSECURE,
        info=info,
    )


async def closed_with(link) -> int:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10_000):  # answers sent before the close come first
            await asyncio.wait_for(link.recv(), 10)
    assert info.value.rcvd is not None
    return info.value.rcvd.code


async def test_a_proof_from_another_connection_is_refused(ns):
    """A signature made for one connection's challenge does not open another connection."""
    key = Ed25519PrivateKey.generate()
    pk = public_bytes(key)
    hello = {
        "type": "hello",
        "id": "1",
        "version": PROTOCOL_VERSION,
        "role": "agent",
        "identity": "x",
        "credentials": {"public_key": pk},
    }
    async with (
        ws_connect(ns.url, compression=None, proxy=None) as one,
        ws_connect(ns.url, compression=None, proxy=None) as two,
    ):
        await one.send(msgpack.packb(hello))
        first = msgpack.unpackb(await one.recv())
        stolen = key.sign(proof_payload(first["server"], first["nonce"], "agent", "x", pk))
        await two.send(msgpack.packb(hello))
        second = msgpack.unpackb(await two.recv())
        assert second["nonce"] != first["nonce"]
        await two.send(
            msgpack.packb(
                {"type": "proof", "id": "2", "reply_to": second["id"], "signature": stolen}
            )
        )
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(two.recv(), 10)
    assert info.value.rcvd.code == 4401 and "does not verify" in info.value.rcvd.reason


async def test_an_agent_may_report_only_its_own_work(ns, tmp_path):
    """A report from one agent for an instance given to another computer is refused, counted,
    and changes nothing; the real agent's result still lands."""
    enrol = await enrol_token(ns)
    good = Agent(
        server_url=ns.url,
        name="good",
        trust=INSECURE,
        enrol_token=enrol,
        data_dir=str(tmp_path / "g"),
    )
    task = asyncio.create_task(good.run())
    try:
        await asyncio.wait_for(good.connected.wait(), 15)
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", text=task_doc("slow", "sleep 1; echo real"), filename="s.toml")
            run_id = (await c.call("run.start", task="slow", computers=["good"]))["run_id"]
            (inst,) = (await c.call("run.show", run_id=run_id))["instances"]
            link, _ = await rogue(ns, Role.AGENT, "evil")
            forged = Report(instance_id=inst["id"], state="failed", output="forged", return_code=66)
            await link.send(Reports(id=link.next_id(), items=[forged]))

            async def counted():
                stats = await c.call("stats")
                return stats["builtin_relay_refused"].get("foreign_report", 0) >= 1

            await until(counted, "the forged report counted as refused")
            await link.close()

            async def ended():
                return (await c.call("run.show", run_id=run_id))["status"] != "running"

            await until(ended, "the run to end")
            (inst,) = (await c.call("run.show", run_id=run_id))["instances"]
        assert inst["status"] == "succeeded" and inst["output"].strip() == "real"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_task_server_may_report_only_for_its_computers(ns):
    """A TS reporting for an instance routed elsewhere is refused and counted; nothing changes."""
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("computers.add", name="printer")
        await c.call(
            "task.add",
            text=task_doc("on-ts", "echo x", type="run-script-on-taskserver", timeout_s=60),
            filename="t.toml",
        )
        run_id = (await c.call("run.start", task="on-ts", computers=["printer"]))["run_id"]
        link, _ = await rogue(ns, Role.TASKSERVER, "ts-evil", url="ws://127.0.0.1:1")
        view = await c.call("run.show", run_id=run_id)
        (inst,) = view["instances"]
        forged = Reports(
            id=link.next_id(),
            items=[Report(instance_id=inst["id"], state="failed", computer="printer")],
        )
        await link.send(forged)
        while not getattr(await asyncio.wait_for(link.recv(), 10), "reply_to", "") == forged.id:
            pass
        stats = await c.call("stats")
        assert stats["refused"].get("foreign_report", 0) >= 1
        await link.close()
        final = await wait_run(c, run_id)
        (after,) = final["instances"]
        assert after["status"] == "succeeded" and after["output"].strip() == "x"


async def test_an_agent_may_not_send_admin_messages(ns):
    """After its welcome, an agent that sends an admin request is closed with 4403."""
    link, _ = await rogue(ns, Role.AGENT, "nosy")
    await link.send(Request(id=link.next_id(), op="tasks.list"))
    assert await closed_with(link) == 4403
    await link.close()


async def test_a_flooding_admin_is_closed_with_4429(ns):
    """More requests than the per-connection rate allows closes that connection with 4429."""
    link, _ = await connect(
        ns.url,
        role=Role.ADMIN,
        identity="flood",
        credentials={"token": ns.first_admin_token},
        trust=INSECURE,
    )
    for _ in range(int(ns.admin_rate_per_s * 4) + 20):
        try:
            await link.send(Request(id=link.next_id(), op="whoami"))
        except ConnectionClosed:
            break
    assert await closed_with(link) == 4429
    await link.close()


async def test_connections_per_address_and_pending_keys_are_capped(tmp_path):
    """Past the cap of connections from one address a new one is closed with 4431; past the cap
    of pending keys a new key is refused with 4432 and no record is kept."""
    ns = NotificationServer(
        data_dir=str(tmp_path / "ns"),
        insecure=True,
        max_connections_per_address=2,
        max_pending_keys=1,
    )
    await ns.start()
    try:
        hold = [await ws_connect(ns.url, compression=None, proxy=None) for _ in range(2)]
        third = await ws_connect(ns.url, compression=None, proxy=None)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(third.recv(), 10)
            await asyncio.wait_for(third.recv(), 10)
        assert info.value.rcvd.code == 4431
        for ws in [*hold, third]:
            await ws.close()
        codes = []
        for name in ("p-1", "p-2"):
            with pytest.raises(RemoteError) as refused:
                await connect(
                    ns.url,
                    role=Role.AGENT,
                    identity=name,
                    credentials={},
                    key=Ed25519PrivateKey.generate(),
                    trust=INSECURE,
                )
            codes.append(refused.value.code)
        assert codes == ["pending", "too_many_pending"]
        assert [k["name"] for k in await ns.db.keys()] == ["p-1"]
    finally:
        await ns.stop()
