"""Issue 18, trust: the attacks on enrolment, revocation and the audit trail, on real connections.

Each test performs the attack against an in-process NS (and TS) on loopback and asserts it is
refused, with nothing lost and everyone else served.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed

from admin.client import AdminClient
from protocol.errors import RemoteError
from protocol.identity import fingerprint, hash_token
from protocol.session import Role
from runtime.db import open_db
from runtime.keys import public_bytes
from runtime.link import connect
from server.core import NotificationServer
from server.guards import Alerts
from server.store.schema import _MIGRATIONS
from taskserver import service
from taskserver.service import TaskServer
from tests.helpers import INSECURE, quick_agent, until


def admin(ns, token: str | None = None) -> AdminClient:
    return AdminClient(ns.url, token or ns.first_admin_token, INSECURE)


async def token_for(ns, role: str = "agent", uses: int = 1) -> tuple[int, str]:
    async with admin(ns) as c:
        t = await c.call("tokens.create", uses=uses, role=role)
    return t["id"], t["token"]


async def peer(ns, role: Role, name: str, enrol: str = "", key=None, **info):
    """A peer with a real key that enrols (or tries to) and speaks the protocol by hand."""
    return await connect(
        ns.url,
        role=role,
        identity=name,
        credentials={"enrol_token": enrol} if enrol else {},
        key=key or Ed25519PrivateKey.generate(),
        trust=INSECURE,
        info=info,
    )


async def tokens(ns) -> dict[int, dict]:
    async with admin(ns) as c:
        return {t["id"]: t for t in await c.call("tokens.list")}


async def messages(ns) -> list[str]:
    async with admin(ns) as c:
        return [m["text"] for m in await c.call("messages.list", limit=10_000)]


async def closed(client: AdminClient) -> None:
    """Wait (bounded) until the server closed this admin client's connection."""
    while await asyncio.wait_for(client._events.get(), 10) is not None:
        pass


async def close_code(link, timeout_s: float = 10.0) -> int:
    """Wait (bounded) for the server to close ``link``; its close code."""
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10_000):  # messages sent before the close come first
            await asyncio.wait_for(link.recv(), timeout_s)
    assert info.value.rcvd is not None
    return info.value.rcvd.code


# -- item 1: an enrolment token is for one role ----------------------------------------------


async def test_an_agent_token_never_enrols_a_task_server(ns):
    """Attack: a `tfe_` token made for endpoints is presented by a rogue task server (and a TS
    token by an agent). Both are refused with a reason naming the token's role, no use is spent,
    no key is kept, no agent is ever sent to the rogue, and the attempt is raised as a message.
    The right peers then enrol with the very same tokens."""
    agent_id, agent_token = await token_for(ns, "agent", uses=1)
    ts_id, ts_token = await token_for(ns, "taskserver", uses=1)

    with pytest.raises(RemoteError) as refused:
        await peer(ns, Role.TASKSERVER, "ts-rogue", agent_token, url="ws://127.0.0.1:1")
    assert refused.value.code == "enrol_token_refused"
    assert "is for agents, not task servers" in refused.value.message
    assert "tokens create --for taskserver" in refused.value.message
    with pytest.raises(RemoteError) as refused:
        await peer(ns, Role.AGENT, "pc-sneaky", ts_token)
    assert "is for task servers, not agents" in refused.value.message

    left = await tokens(ns)
    assert left[agent_id]["uses_left"] == 1 and left[agent_id]["role"] == "agent"
    assert left[ts_id]["uses_left"] == 1 and left[ts_id]["role"] == "taskserver"
    assert await ns.db.keys() == []
    assert "ts-rogue" not in ns.routes
    raised = await messages(ns)
    assert any("'ts-rogue'" in m and "made for another role" in m for m in raised)

    # The tokens still work for their own role; the TS's enrolment is raised with what
    # identifies it (its name, key fingerprint and address).
    agent_link, _ = await peer(ns, Role.AGENT, "pc-1", agent_token)
    ts_key = Ed25519PrivateKey.generate()
    ts_link, _ = await peer(ns, Role.TASKSERVER, "ts-1", ts_token, ts_key, url="ws://127.0.0.1:1")
    fp = fingerprint(public_bytes(ts_key))
    (enrolled,) = [m for m in await messages(ns) if m.startswith("task server 'ts-1' enrolled")]
    assert fp in enrolled and "127.0.0.1" in enrolled and "keys reject ts-1" in enrolled
    assert {(k["role"], k["name"]) for k in await ns.db.keys()} == {
        ("agent", "pc-1"),
        ("taskserver", "ts-1"),
    }
    for link in (agent_link, ts_link):
        await link.close()


async def test_accepting_a_task_servers_key_raises_a_message(ns):
    """A TS with no token waits as pending; `keys accept` lets it in and raises a message naming
    the TS, its key's fingerprint, its address and the admin who accepted it."""
    key = Ed25519PrivateKey.generate()
    with pytest.raises(RemoteError) as pending:
        await peer(ns, Role.TASKSERVER, "ts-2", key=key, url="ws://127.0.0.1:1")
    assert pending.value.code == "pending"
    async with admin(ns) as c:
        assert (await c.call("keys.accept", names=["ts-2"]))["accepted"] == ["ts-2"]
    (text,) = [m for m in await messages(ns) if "'ts-2'" in m]
    assert fingerprint(public_bytes(key)) in text and "127.0.0.1" in text and "admin" in text


async def test_tokens_of_an_old_database_are_agent_tokens(tmp_path):
    """Migration: a token made before tokens had a role enrols agents only, as before."""
    data = tmp_path / "ns"
    data.mkdir()
    (roles,) = [i for i, m in enumerate(_MIGRATIONS) if "enrol_tokens ADD COLUMN role" in m]
    old = await open_db(str(data / "server.db"), _MIGRATIONS[:roles])
    await old.execute(
        "INSERT INTO enrol_tokens(token_hash, uses_left, expires_at, created_at, created_by)"
        " VALUES (?, 5, ?, ?, 'admin')",
        (hash_token("tfe_old"), time.time() + 3600, time.time()),
    )
    await old.commit()
    await old.close()
    ns = NotificationServer(data_dir=str(data), insecure=True)
    await ns.start()
    try:
        (row,) = (await tokens(ns)).values()
        assert row["role"] == "agent" and row["revoked_at"] is None
        with pytest.raises(RemoteError) as refused:
            await peer(ns, Role.TASKSERVER, "ts-old", "tfe_old", url="ws://127.0.0.1:1")
        assert "is for agents" in refused.value.message
        link, _ = await peer(ns, Role.AGENT, "pc-old", "tfe_old")
        await link.close()
        assert (await tokens(ns))[row["id"]]["uses_left"] == 4
    finally:
        await ns.stop()


# -- item 4: revocation takes effect at once ----------------------------------------------


async def test_a_revoked_admin_loses_its_open_session_at_once(ns):
    """Attack: an admin whose token is revoked keeps its open connection and makes itself a new
    admin token. Now every open session of that admin is closed (4401) at once, by the server,
    and nothing it sends after the revocation is done."""
    async with admin(ns) as root:
        token = (await root.call("admins.add", name="mallory", role="admin"))["token"]
        mallory, _ = await connect(
            ns.url, role=Role.ADMIN, identity="x", credentials={"token": token}, trust=INSECURE
        )
        watcher = admin(ns, token)
        await watcher.__aenter__()
        try:
            await watcher.call("messages.watch")
            assert (await root.call("admins.revoke", name="mallory"))["sessions_ended"] == 2
            assert await close_code(mallory) == 4401
            await closed(watcher)
            with pytest.raises((RemoteError, ConnectionError, ConnectionClosed)):
                await watcher.call("admins.add", name="mallory2", role="admin")
        finally:
            await watcher.__aexit__(None, None, None)
        assert "mallory2" not in {a["name"] for a in await root.call("admins.list")}
        with pytest.raises(RemoteError) as refused:
            await connect(
                ns.url, role=Role.ADMIN, identity="x", credentials={"token": token}, trust=INSECURE
            )
        assert refused.value.code == "unauthorized"
        assert (await root.call("whoami"))["admin"] == "admin"  # everyone else is served


async def test_a_downgraded_admin_is_downgraded_at_once(ns):
    """Attack: an admin demoted to viewer (`admins add NAME --role viewer` again) keeps its open
    admin session. Now that session ends at once; the new token acts as a viewer only."""
    async with admin(ns) as root:
        old = (await root.call("admins.add", name="olga", role="admin"))["token"]
        link, _ = await connect(
            ns.url, role=Role.ADMIN, identity="x", credentials={"token": old}, trust=INSECURE
        )
        new = await root.call("admins.add", name="olga", role="viewer")
        assert new["sessions_ended"] == 1
        assert await close_code(link) == 4401
    async with admin(ns, new["token"]) as olga:
        assert olga.role == "viewer"
        with pytest.raises(RemoteError) as forbidden:
            await olga.call("tokens.create")
        assert forbidden.value.code == "forbidden"


async def test_an_admin_revoking_itself_gets_its_answer_then_is_closed(ns):
    """Revoking one's own token answers the request, then ends the session."""
    async with admin(ns) as root:
        token = (await root.call("admins.add", name="self-r", role="admin"))["token"]
    async with admin(ns, token) as c:
        assert (await c.call("admins.revoke", name="self-r"))["revoked"] == "self-r"
        await closed(c)
        assert c.link is not None and c.link.ws.close_code == 4401


async def test_rejecting_an_agent_closes_it_and_its_ticket_no_longer_opens_its_ts(
    ns, tmp_path, monkeypatch
):
    """Attack: an agent whose key an admin rejected keeps its connection to its TS, and its
    ticket (valid 24 h) keeps opening that TS. Now `keys reject` closes the agent's link at
    once, the TS refuses that ticket, a TS that was away learns it when it connects, and the
    TS keeps serving its other agents."""
    _, ts_token = await token_for(ns, "taskserver", uses=2)
    _, agent_token = await token_for(ns, "agent", uses=2)
    ts = TaskServer(
        server_url=ns.url,
        data_dir=str(tmp_path / "ts"),
        name="ts-1",
        trust=INSECURE,
        enrol_token=ts_token,
        insecure=True,
    )
    late = TaskServer(
        server_url=ns.url,
        data_dir=str(tmp_path / "ts-late"),
        name="ts-late",
        trust=INSECURE,
        enrol_token=ts_token,
        insecure=True,
    )
    await ts.start()
    # Linked before the agents register: one the NS sees first goes to the built-in service.
    await asyncio.wait_for(ts.connected.wait(), 15)
    agents = [quick_agent(ns.url, name, agent_token) for name in ("pc-bad", "pc-good")]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:

        async def both_at_ts():
            return {"pc-bad", "pc-good"} <= set(ts.relay.agents)

        await until(both_at_ts, "both agents at ts-1")
        bad = agents[0]
        ticket = dict(bad.store.config["ticket"])
        signature = bytes.fromhex(bad.store.config["ticket_signature"])
        link = ts.relay.agents["pc-bad"].link

        async with admin(ns) as c:
            assert (await c.call("keys.reject", name="pc-bad"))["rejected"] == ["pc-bad"]
        # The TS acknowledged the revocation before `keys reject` answered.
        assert "pc-bad" in ts.revoked
        await asyncio.wait_for(link.ws.wait_closed(), 10)
        assert link.ws.close_code == 4401

        with pytest.raises(RemoteError) as refused:
            await connect(
                ts.url,
                role=Role.AGENT,
                identity="pc-bad",
                credentials={
                    "ticket": ticket,
                    "ticket_signature": signature,
                    "nonce": os.urandom(32),
                },
                key=bad.key,
                trust=INSECURE,
            )
        assert refused.value.code == "bad_ticket" and "rejected or deleted" in refused.value.message

        await late.start()
        await asyncio.wait_for(late.connected.wait(), 15)

        async def told():
            return "pc-bad" in late.revoked

        await until(told, "the TS that was away told of the revoked ticket")
        assert late.revoked["pc-bad"] == ts.revoked["pc-bad"] >= ticket["expires_at"]
        assert "pc-good" in ts.relay.agents and "pc-bad" not in ts.relay.agents

        # What the TS remembers is bounded: entries leave once the tickets they void have
        # expired, and past the bound the soonest to expire go first.
        now = int(time.time())
        monkeypatch.setattr(service, "REVOKED_AT_MOST", 3)
        late.revoke({"expired": now - 1, **{f"x-{i}": now + 100 + i for i in range(5)}})
        assert list(late.revoked) == ["x-3", "x-4", "pc-bad"]  # pc-bad: 24 h to go
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ts.stop()
        await late.stop()


async def test_deleting_a_key_closes_the_agent_served_by_the_ns(ns):
    """`keys delete` of an agent served by the NS's built-in service closes its connection at
    once (the agent may then enrol again, as `keys delete` means: here with its token)."""
    _, agent_token = await token_for(ns, "agent", uses=2)
    agent = quick_agent(ns.url, "pc-9", agent_token)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        link = ns.relay.agents["pc-9"].link
        async with admin(ns) as c:
            await c.call("keys.delete", name="pc-9")
            await asyncio.wait_for(link.ws.wait_closed(), 10)
            assert link.ws.close_code == 4401

        async def back():
            conn = ns.relay.agents.get("pc-9")
            return conn is not None and conn.link is not link

        await until(back, "pc-9 enrolled again on a new connection")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_rejecting_a_task_server_closes_its_link(ns):
    """`keys reject` of a connected TS closes its link to the NS at once (4401), it cannot come
    back, and its agents are not sent back to it (not even within the grace a TS that merely
    restarts gets): an agent that registers again is served by the NS itself."""
    _, ts_token = await token_for(ns, "taskserver")
    _, agent_token = await token_for(ns, "agent")
    key, agent_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    link, _ = await peer(ns, Role.TASKSERVER, "ts-9", ts_token, key, url="ws://127.0.0.1:1")
    assert "ts-9" in ns.routes
    agent, welcome = await peer(ns, Role.AGENT, "pc-a", agent_token, agent_key)
    assert welcome.config["taskserver"]["name"] == "ts-9"
    await agent.close()
    async with admin(ns) as c:
        await c.call("keys.reject", name="ts-9")
    assert await close_code(link) == 4401

    async def gone():
        return "ts-9" not in ns.routes

    await until(gone, "ts-9 no longer a route")
    with pytest.raises(RemoteError) as refused:
        await peer(ns, Role.TASKSERVER, "ts-9", key=key, url="ws://127.0.0.1:1")
    assert refused.value.code == "rejected"
    agent, welcome = await peer(ns, Role.AGENT, "pc-a", key=agent_key)
    assert welcome.config.get("taskserver") is None, welcome.config
    await agent.close()


async def test_a_revoked_enrolment_token_enrols_no_one(ns):
    """`tokens revoke ID`: the token enrols nothing (the reason says so) and is listed revoked."""
    token_id, token = await token_for(ns, "agent", uses=5)
    async with admin(ns) as c:
        assert (await c.call("tokens.revoke", id=token_id))["revoked"] == token_id
        with pytest.raises(RemoteError) as again:
            await c.call("tokens.revoke", id=token_id)
        assert again.value.code == "unknown_token"
    with pytest.raises(RemoteError) as refused:
        await peer(ns, Role.AGENT, "pc-late", token)
    assert f"enrolment token #{token_id} was revoked" in refused.value.message
    row = (await tokens(ns))[token_id]
    assert row["revoked_at"] is not None and row["uses_left"] == 5
    assert await ns.db.keys() == []


# -- item 7: key-mismatch alerts are coalesced ----------------------------------------------


async def test_a_storm_of_fresh_keys_claiming_one_name_raises_one_message(ns):
    """Attack: 300 fresh keys each claim to be the enrolled `pc-1`, then 30 more claim 30 other
    enrolled names from the same address. Each is refused; one message is raised for all of it
    in the window, and the next message (after the window) counts what was held back. The real
    pc-1 still connects, admins are served."""
    _, token = await token_for(ns, "agent", uses=40)
    real_key = Ed25519PrivateKey.generate()
    link, _ = await peer(ns, Role.AGENT, "pc-1", token, real_key)
    await link.close()
    for i in range(30):
        link, _ = await peer(ns, Role.AGENT, f"m-{i}", token)
        await link.close()
    ns.trust_alerts = Alerts(window_s=1.0)  # a short window, so the test sees the next one
    started = time.monotonic()

    async def impostor(name: str) -> str:
        with pytest.raises(RemoteError) as refused:
            await peer(ns, Role.AGENT, name)
        return refused.value.code

    for group in range(6):
        codes = await asyncio.gather(*(impostor("pc-1") for _ in range(50)))
        assert set(codes) == {"key_mismatch"}, group
    codes = await asyncio.gather(*(impostor(f"m-{i}") for i in range(30)))
    assert set(codes) == {"key_mismatch"}
    ended = time.monotonic()
    about = [m for m in await messages(ns) if "not its registered key" in m]
    if ended - started < 1.0:  # on a slow machine the burst may outlast the short window
        assert len(about) == 1, about

    async def window_passed():
        return time.monotonic() - ended > 1.2

    await until(window_passed, "the alert window to pass", 5)
    assert await impostor("pc-1") == "key_mismatch"
    about = [m for m in await messages(ns) if "not its registered key" in m]
    held = sum(
        int(m.split(" more such refusals")[0].rsplit("(", 1)[1]) for m in about if "more such" in m
    )
    assert len(about) + held == 300 + 30 + 1  # each refusal raised or counted, once
    if ended - started < 1.0:
        assert len(about) == 2 and "(329 more such refusals" in about[0]
    link, _ = await peer(ns, Role.AGENT, "pc-1", key=real_key)  # the real one is served
    await link.close()


def test_alert_memory_is_bounded_and_a_repeat_counts_once():
    """The coalescer remembers at most its bound of subjects, addresses and keys; the same key
    knocking again is neither raised nor counted again."""
    alerts = Alerts(window_s=600, remembered=100)
    raised = [
        alerts.note(("key", "agent", f"pc-{i}"), f"10.0.0.{i // 250}", (str(i),), 0.0)
        for i in range(10_000)
    ]
    assert raised[0] == 0 and all(r is None for r in raised[1:250])
    assert len(alerts._keys) <= 100 and len(alerts._last) <= 100
    assert alerts.note(("key", "agent", "x"), "1.1.1.1", ("9999",), 1.0) is None  # a repeat
    assert alerts.note(("key", "agent", "x"), "1.1.1.1", ("new",), 1.0) == 0
    assert alerts.note(("key", "agent", "x"), "1.1.1.2", ("n2",), 2.0) is None
    assert alerts.note(("key", "agent", "x"), "1.1.1.3", ("n3",), 700.0) == 1


# -- item 13: admin names follow the computer-name rule --------------------------------------


@pytest.mark.parametrize("name", ["(server)", "eve\nadmin", "agent:pc-1", "", "a" * 65, "-x"])
async def test_an_admin_name_that_could_fake_the_audit_trail_is_refused(ns, name):
    """Attack: an admin called `(server)`, or with a line break, forges the audit trail. Such a
    name is refused with the rule, and no admin is made."""
    async with admin(ns) as c:
        with pytest.raises(RemoteError) as refused:
            await c.call("admins.add", name=name, role="viewer")
        assert refused.value.code == "bad_request"
        assert "rule for computer names" in refused.value.message
        assert [a["name"] for a in await c.call("admins.list")] == ["admin"]
        assert (await c.call("admins.add", name="ops.eve-2", role="viewer"))["name"] == "ops.eve-2"
