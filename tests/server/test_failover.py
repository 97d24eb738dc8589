"""Failover (issue 19): when the agents of a Task Server that went away register, and where the
NS sends them. An in-process NS on loopback; the TS and agents are real peers on real sockets
(or a real ``Agent``), the TS pointing at an address where nothing listens."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from admin.client import AdminClient
from agent.agent import Agent
from protocol.session import Role
from runtime.keys import load_or_create
from runtime.link import connect
from server.connections import FAILOVER_AFTER_GRACE_S
from server.core import NotificationServer
from tests.helpers import INSECURE, until

GRACE_S = 2.0
NOWHERE = "ws://127.0.0.1:1"
"""The URL the TS peer advertises: an agent sent there cannot connect."""


async def _ns(data: Path) -> NotificationServer:
    ns = NotificationServer(data_dir=str(data), insecure=True, ts_grace_s=GRACE_S)
    await ns.start()
    return ns


async def _token(ns: NotificationServer, role: str) -> str:
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        return str((await c.call("tokens.create", uses=10, role=role))["token"])


async def _register(ns: NotificationServer, role: Role, name: str, key, token: str = "", **info):
    """Connect as ``name`` with ``key`` (enrolling with ``token``); return the link and the
    welcome's config."""
    link, welcome = await connect(
        ns.url,
        role=role,
        identity=name,
        credentials={"enrol_token": token} if token else {},
        key=key,
        trust=INSECURE,
        info=info,
    )
    return link, welcome.config


async def _agent_ts(ns: NotificationServer, name: str, key) -> dict | None:
    """Register ``name`` once, as its agent would; what the NS says about its TS."""
    link, config = await _register(ns, Role.AGENT, name, key)
    await link.close()
    return config.get("taskserver")


async def _ts_gone(ns: NotificationServer, link) -> float:
    """Close the TS's link; once the NS has seen it go, return the time it went."""
    went = time.time()
    await link.close()

    async def gone() -> bool:
        return "ts-9" not in ns.routes

    await until(gone, "the NS seeing ts-9 go")
    return went


async def test_the_agents_of_a_task_server_that_went_away_are_told_when_they_move(tmp_path):
    """Attack: a TS's link drops while an agent is assigned to it. What must hold: an agent
    registering within the grace keeps its TS and is told to come back just after the grace ends
    (`retry_in_s`, not its backoff); registering after the grace moves it (here to the built-in
    service, the only relay left); and an agent of a TS that came back within the grace is kept,
    with no `retry_in_s`."""
    ns = await _ns(tmp_path / "ns")
    try:
        ts_key, agent_key, other_key = (Ed25519PrivateKey.generate() for _ in range(3))
        ts_token, agent_token = await _token(ns, "taskserver"), await _token(ns, "agent")
        ts, _ = await _register(ns, Role.TASKSERVER, "ts-9", ts_key, ts_token, url=NOWHERE)
        for name, key in (("pc-a", agent_key), ("pc-b", other_key)):
            link, config = await _register(ns, Role.AGENT, name, key, agent_token)
            await link.close()
            assert config["taskserver"]["name"] == "ts-9"
            assert "retry_in_s" not in config["taskserver"]  # its TS is connected

        went = await _ts_gone(ns, ts)
        kept = await _agent_ts(ns, "pc-a", agent_key)
        asked = time.time()
        assert kept is not None and kept["name"] == "ts-9"
        left = GRACE_S - (asked - went)
        assert left + FAILOVER_AFTER_GRACE_S - 0.1 <= kept["retry_in_s"] <= GRACE_S + 1.3, kept

        async def moved() -> float | None:
            ts = await _agent_ts(ns, "pc-a", agent_key)
            return time.time() if ts is None else None

        moved_at = await until(moved, "pc-a moved after the grace", 10, every_s=0.2)
        assert moved_at - went >= GRACE_S, "moved before its TS's grace ended"

        # ts-9 comes back within its grace: pc-b stays with it, and is not told to come back.
        ts, _ = await _register(ns, Role.TASKSERVER, "ts-9", ts_key, url=NOWHERE)
        went = await _ts_gone(ns, ts)
        ts, _ = await _register(ns, Role.TASKSERVER, "ts-9", ts_key, url=NOWHERE)
        back = await _agent_ts(ns, "pc-b", other_key)
        assert time.time() - went < GRACE_S, "the test itself was too slow to show this"
        assert back is not None and back["name"] == "ts-9" and "retry_in_s" not in back
        await ts.close()
    finally:
        await ns.stop()


async def test_an_agent_with_a_long_backoff_moves_right_after_the_grace(tmp_path):
    """Attack: an agent whose reconnect backoff is long (10-20 s from its first failure) loses
    its TS for good. What must hold: it follows the NS's `retry_in_s`, not its backoff: it is
    served by the built-in task service within a second or two of the grace's end, never before
    the grace."""
    ns = await _ns(tmp_path / "ns")
    key = load_or_create(str(tmp_path / "pc-c" / "agent.key"))
    try:
        ts_token, agent_token = await _token(ns, "taskserver"), await _token(ns, "agent")
        ts, _ = await _register(
            ns, Role.TASKSERVER, "ts-9", Ed25519PrivateKey.generate(), ts_token, url=NOWHERE
        )
        link, config = await _register(ns, Role.AGENT, "pc-c", key, agent_token)
        await link.close()
        assert config["taskserver"]["name"] == "ts-9"
        went = await _ts_gone(ns, ts)
        agent = Agent(
            server_url=ns.url,
            name="pc-c",
            trust=INSECURE,
            data_dir=str(tmp_path / "pc-c"),
            lightweight=True,
            simulate={"delay_ms": 0},
            backoff_initial_s=20.0,
            backoff_max_s=60.0,
        )
        running = asyncio.create_task(agent.run())
        try:

            async def served() -> float | None:
                assert ns.relay is not None
                return time.time() if "pc-c" in ns.relay.agents else None

            at = await until(served, "pc-c served by the built-in service", GRACE_S + 6)
            assert GRACE_S <= at - went <= GRACE_S + 1.2 + 3.0, at - went
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    finally:
        await ns.stop()


async def test_after_an_ns_restart_the_grace_counts_from_the_start(tmp_path):
    """Attack: the NS is down longer than the grace, and an agent registers with the new NS
    before its TS has reconnected. What must hold: the NS could not see that TS go, so the agent
    is kept for it (and told when to come back), not moved at once."""
    data = tmp_path / "ns"
    ns = await _ns(data)
    key = Ed25519PrivateKey.generate()
    ts_token, agent_token = await _token(ns, "taskserver"), await _token(ns, "agent")
    ts, _ = await _register(
        ns, Role.TASKSERVER, "ts-9", Ed25519PrivateKey.generate(), ts_token, url=NOWHERE
    )
    link, config = await _register(ns, Role.AGENT, "pc-d", key, agent_token)
    await link.close()
    assert config["taskserver"]["name"] == "ts-9"
    went = await _ts_gone(ns, ts)
    await ns.stop()

    async def grace_passed() -> bool:
        return time.time() - went > GRACE_S + 0.5

    await until(grace_passed, "longer than the grace with no NS", GRACE_S + 5)
    ns = await _ns(data)
    try:
        kept = await _agent_ts(ns, "pc-d", key)
        assert kept is not None and kept["name"] == "ts-9", kept
        assert 0 < kept["retry_in_s"] <= GRACE_S + 1.3, kept
    finally:
        await ns.stop()
