"""Issue 22, target 2: a known agent reconnects straight to its TS with the ticket it holds,
skipping the NS; the NS still gets every agent served where it says, and still reaches it with
what only a registration carries.

An in-process NS and real task servers on loopback, real agents (``quick_agent``). Where a test
needs the TS cut off from the NS while its agents still reach both (a partition), the TS reaches
the NS through a small TCP relay on loopback that the test cuts and mends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from admin.client import AdminClient
from agent.agent import Agent, RefusedForGood
from protocol.errors import RemoteError
from protocol.messages import Welcome
from protocol.session import Role
from runtime.link import Link, connect
from server.core import NotificationServer
from taskserver.service import TaskServer
from tests.helpers import INSECURE, quick_agent, task_doc, until, wait_run


class Cuttable:
    """A TCP relay on loopback port 0 to ``port``: ``cut`` drops every connection through it and
    refuses new ones (a partition), ``mend`` lets them through again."""

    def __init__(self, port: int):
        self.target = port
        self.port = 0
        self.open = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def cut(self) -> None:
        self.open = False
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    def mend(self) -> None:
        self.open = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def admin(ns: NotificationServer) -> AdminClient:
    return AdminClient(ns.url, ns.first_admin_token or "", INSECURE)


async def token(ns: NotificationServer, role: str) -> str:
    async with admin(ns) as c:
        return str((await c.call("tokens.create", uses=10, role=role))["token"])


def task_server(tmp_path: Path, name: str, ns_url: str, enrol: str) -> TaskServer:
    return TaskServer(
        server_url=ns_url,
        data_dir=str(tmp_path / name),
        name=name,
        trust=INSECURE,
        enrol_token=enrol,
        insecure=True,
    )


async def computer(ns: NotificationServer, name: str) -> dict:
    rows = await ns.db.computers([name])
    return rows[0] if rows else {}


async def served_at(ns: NotificationServer, name: str, taskserver: str | None) -> bool:
    """The NS lists ``name`` online on ``taskserver`` (None: the built-in service)."""
    row = await computer(ns, name)
    return bool(row.get("online")) and row.get("taskserver") == taskserver


async def test_a_known_agent_goes_straight_back_to_its_ts_and_renews_its_ticket_through_the_ns(
    ns, tmp_path
):
    """A known agent whose connection to its TS was cut comes back to that TS without opening a
    connection to the NS (the NS's listener admits nobody meanwhile) and the NS lists it online
    there from the TS's presence; once its ticket is past half its life it registers with the
    NS instead, and gets a fresh one."""
    ts = task_server(tmp_path, "ts-1", ns.url, await token(ns, "taskserver"))
    await ts.start()
    # Linked before the agent registers: an agent the NS sees first goes to the built-in
    # service, and stays there (no rebalancing).
    await asyncio.wait_for(ts.connected.wait(), 15)
    agent = quick_agent(ns.url, "pc-1", await token(ns, "agent"))
    task = asyncio.create_task(agent.run())
    try:
        assert ts.relay is not None
        relay = ts.relay

        async def at_ts() -> bool:
            return "pc-1" in relay.agents and await served_at(ns, "pc-1", "ts-1")

        await until(at_ts, "pc-1 served by ts-1")
        assert agent.store is not None
        ticket = agent.store.config["ticket"]
        admitted = ns.gate.admitted

        first = relay.agents["pc-1"].link
        await first.close()  # the TS's end of the link is cut

        async def back(old) -> bool:
            conn = relay.agents.get("pc-1")
            return conn is not None and conn.link is not old and await at_ts()

        await until(lambda: back(first), "pc-1 back at ts-1")
        assert ns.gate.admitted == admitted, "the agent opened a connection to the NS"
        assert agent.store.config["ticket"] == ticket

        # Twelve hours later (its renewal time, as it stored it, passed): through the NS.
        agent.store.config["ticket_renew_at"] = time.time() - 1
        second = relay.agents["pc-1"].link
        await second.close()
        await until(lambda: back(second), "pc-1 back at ts-1 after registering")
        assert ns.gate.admitted > admitted, "the agent did not register with the NS"
        assert agent.store.config["ticket_renew_at"] > time.time() + 3600
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ts.stop()


@pytest.mark.parametrize(("moved_to", "served_by"), [("ts-b", "ts-b"), (None, "ts-a")])
async def test_an_agent_the_ns_moved_meanwhile_ends_up_served_where_the_ns_says(
    tmp_path, moved_to, served_by
):
    """Attack (seen under load): the NS moves an agent (to another TS, or to its built-in
    service: its TS was away past the grace) in a registration whose welcome never reached the
    agent, which then comes straight back to its old TS with the ticket it holds. The old TS
    reports it online there; the NS refuses that presence (the computer is not that TS's), so
    the agent would sit at a TS the NS sends no work to. What must hold: the NS tickles it
    through that TS, it registers, and ends up served where the NS says (ts-b, which it was
    moved to; or, moved to the built-in service, ts-a again: the only TS connected when it
    registers), and a run reaches it."""
    ns = NotificationServer(data_dir=str(tmp_path / "ns"), insecure=True, ts_grace_s=0.5)
    await ns.start()
    link_a = Cuttable(ns.port)
    await link_a.start()
    ts_token = await token(ns, "taskserver")
    ts_a = task_server(tmp_path, "ts-a", f"ws://127.0.0.1:{link_a.port}", ts_token)
    ts_b = task_server(tmp_path, "ts-b", ns.url, ts_token)
    await ts_a.start()
    # Linked before the agent registers: an agent the NS sees first goes to the built-in
    # service, and stays there (no rebalancing).
    await asyncio.wait_for(ts_a.connected.wait(), 15)
    agent = quick_agent(ns.url, "pc-1", await token(ns, "agent"))
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: served_at(ns, "pc-1", "ts-a"), "pc-1 served by ts-a")
        if moved_to == "ts-b":
            await ts_b.start()
            await asyncio.wait_for(ts_b.connected.wait(), 15)
        link_a.cut()  # ts-a is cut off from the NS; pc-1 stays connected to it

        async def ts_a_gone() -> bool:
            return "ts-a" not in ns.routes

        await until(ts_a_gone, "the NS seeing ts-a go")

        async def moved() -> bool:
            """The registration whose welcome was lost: pc-1's own key and name, a connection
            of its own. Within ts-a's grace (0.5 s) the NS keeps pc-1 there; then it moves it."""
            link, welcome = await _register_as(agent, ns.url)
            await link.close()
            ts = welcome.config["taskserver"]
            return (ts["name"] if ts else None) == moved_to

        await until(moved, f"the NS moving pc-1 to {moved_to}", 10, every_s=0.2)
        assert (await computer(ns, "pc-1"))["taskserver"] == moved_to

        link_a.mend()  # ts-a reaches the NS again and reports pc-1 online: not its computer
        relay = (ts_b if served_by == "ts-b" else ts_a).relay
        assert relay is not None

        async def served() -> bool:
            return "pc-1" in relay.agents and await served_at(ns, "pc-1", served_by)

        await until(served, f"pc-1 served by {served_by}", 30)
        async with admin(ns) as c:
            await c.call("task.add", text=task_doc("hello", "echo hi"))
            run = await c.call("run.start", task="hello", computers=["pc-1"])
            assert (await wait_run(c, run["run_id"], 30))["status"] == "succeeded"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ts_a.stop()
        await ts_b.stop()
        await link_a.stop()
        await ns.stop()


async def _register_as(agent: Agent, url: str) -> tuple[Link, Welcome]:
    """Register with the NS as ``agent`` (its name and key), as the agent itself does."""
    return await connect(
        url, role=Role.AGENT, identity=agent.name, credentials={}, key=agent.key, trust=INSECURE
    )


async def test_an_agent_a_policy_change_missed_gets_it_when_its_ts_reports_it_back(tmp_path):
    """An agent that was offline for the NS when a policy for it was added (here: its TS was cut
    off from the NS) and comes back without registering (its TS reports it online) still gets
    the policy: the NS tickles it through its TS, and it registers."""
    ns = NotificationServer(data_dir=str(tmp_path / "ns"), insecure=True)
    await ns.start()
    link_a = Cuttable(ns.port)
    await link_a.start()
    ts_a = task_server(
        tmp_path, "ts-a", f"ws://127.0.0.1:{link_a.port}", await token(ns, "taskserver")
    )
    await ts_a.start()
    # Linked before the agent registers: an agent the NS sees first goes to the built-in
    # service, and stays there (no rebalancing).
    await asyncio.wait_for(ts_a.connected.wait(), 15)
    agent = quick_agent(ns.url, "pc-1", await token(ns, "agent"))
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: served_at(ns, "pc-1", "ts-a"), "pc-1 served by ts-a")
        link_a.cut()

        async def offline() -> bool:
            return not (await computer(ns, "pc-1"))["online"]

        await until(offline, "the NS listing pc-1 offline")
        async with admin(ns) as c:
            await c.call("task.add", text=task_doc("hello", "echo hi"))
            told = await c.call(
                "policy.add",
                text='name = "keep"\ntask = "hello"\n[schedule]\nevery_s = 3600\n'
                '[targets]\ncomputers = ["pc-1"]\n',
            )
        assert "keep" not in agent.policies, told

        link_a.mend()

        async def has_policy() -> bool:
            return "keep" in agent.policies

        await until(has_policy, "pc-1 holding the policy", 30)
        await until(lambda: served_at(ns, "pc-1", "ts-a"), "pc-1 online at ts-a again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ts_a.stop()
        await link_a.stop()
        await ns.stop()


async def test_a_restarted_ts_refuses_a_revoked_ticket_before_the_ns_tells_it_again(ns, tmp_path):
    """Attack: an agent whose key an admin rejected comes straight back (it skips the NS) to its
    TS right after that TS restarted, before the TS's link to the NS has told it the revoked
    tickets again. What must hold: the TS kept the revocation on disk and refuses the ticket."""
    ts_token = await token(ns, "taskserver")
    ts = task_server(tmp_path, "ts-1", ns.url, ts_token)
    await ts.start()
    # Linked before the agent registers: an agent the NS sees first goes to the built-in
    # service, and stays there (no rebalancing).
    await asyncio.wait_for(ts.connected.wait(), 15)
    agent = quick_agent(ns.url, "pc-bad", await token(ns, "agent"))
    task = asyncio.create_task(agent.run())
    try:
        assert ts.relay is not None
        relay = ts.relay

        async def at_ts() -> bool:
            return "pc-bad" in relay.agents

        await until(at_ts, "pc-bad at ts-1")
        assert agent.store is not None
        config = dict(agent.store.config)
        async with admin(ns) as c:
            await c.call("keys.reject", name="pc-bad")
        await asyncio.wait_for(task, 15)  # refused for good by the NS: it stops
    except RefusedForGood:
        pass
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ts.stop()

    # The NS is gone for this TS (another URL): only what the TS kept can refuse the ticket.
    again = task_server(tmp_path, "ts-1", "ws://127.0.0.1:1", "")
    again.port = ts.port
    await again.start()
    try:
        nonce = os.urandom(32)
        with pytest.raises(RemoteError) as refused:
            await connect(
                again.url,
                role=Role.AGENT,
                identity="pc-bad",
                credentials={
                    "ticket": config["ticket"],
                    "ticket_signature": bytes.fromhex(config["ticket_signature"]),
                    "nonce": nonce,
                },
                key=agent.key,
                trust=INSECURE,
            )
        assert refused.value.code == "bad_ticket" and "rejected or deleted" in refused.value.message
    finally:
        await again.stop()
