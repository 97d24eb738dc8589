"""The admin operations the web console's Fleet, Computers, Computer and Audit pages read
(``fleet.summary``, ``computer.show``, ``computer.runs``, ``computers.list`` narrowed by group and
filter, ``audit.list`` narrowed by who and action), on a real in-process NS with real agents
over loopback WebSockets and a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from admin.client import AdminClient
from agent.agent import Agent
from protocol.errors import RemoteError
from server.core import NotificationServer
from tests.helpers import INSECURE, until, wait_run

TASK = {
    "name": "hello",
    "type": "run-script",
    "params": {"interpreter": "sh", "script": "echo hello"},
}


@asynccontextmanager
async def agents(
    ns: NotificationServer, c: AdminClient, tmp_path: Path, names: list[str], delay_ms: float = 0
) -> AsyncIterator[None]:
    """Real agents (simulated tasks that take ``delay_ms``) connected to ``ns``, until the
    block ends."""
    token = (await c.call("tokens.create", ttl_s=600, uses=len(names)))["token"]
    running = [
        asyncio.create_task(
            Agent(
                server_url=ns.url,
                name=name,
                trust=INSECURE,
                enrol_token=token,
                data_dir=str(tmp_path / name),
                simulate={"delay_ms": delay_ms},
                backoff_initial_s=0.1,
                backoff_max_s=0.5,
            ).run()
        )
        for name in names
    ]
    try:

        async def online() -> bool:
            rows = await c.call("computers.list")
            return {r["name"] for r in rows if r["online"]} >= set(names)

        await until(online, f"{', '.join(names)} online")
        yield
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def viewer(c: AdminClient, name: str = "vera") -> str:
    return str((await c.call("admins.add", name=name, role="viewer"))["token"])


async def refused(c: AdminClient, op: str, **args: Any) -> str:
    with pytest.raises(RemoteError) as caught:
        await c.call(op, **args)
    return caught.value.code


async def test_fleet_summary_counts_computers_runs_in_flight_failures_and_messages(ns, tmp_path):
    """One agent busy with a long task, one device without an agent: the summary counts both,
    shows the run in flight, the device's instance as a recent failure naming run, computer
    and reason, and a message raised for admins."""
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        async with agents(ns, c, tmp_path, ["pc-1"], delay_ms=600_000):
            await c.call("computers.add", name="printer-1")
            await c.call("task.add", document=TASK)
            run_id = (await c.call("run.start", task="hello", computers=["pc-1", "printer-1"]))[
                "run_id"
            ]
            await ns.raise_message("warning", "the disk of pc-1 is nearly full", "pc-1")
            async with AdminClient(ns.url, await viewer(c), INSECURE) as v:
                summary = await v.call("fleet.summary", failures=5, messages=5)
            assert (summary["computers"], summary["online"]) == (2, 1)
            assert (summary["agents"], summary["no_agent"]) == (1, 1)
            by_ts = {t["taskserver"]: t for t in summary["by_taskserver"]}
            assert by_ts["(built-in)"] == {
                "taskserver": "(built-in)",
                "computers": 1,
                "online": 1,
                "connected": True,
            }
            assert by_ts[None]["computers"] == 1 and by_ts[None]["online"] == 0
            (flying,) = summary["runs_in_flight"]
            assert flying["id"] == run_id and flying["status"] == "running"
            assert (flying["total"], flying["failed"], flying["pending"]) == (2, 1, 1)
            (failure,) = summary["failures"]
            assert failure["run_id"] == run_id and failure["task_name"] == "hello"
            assert failure["computer"] == "printer-1" and failure["status"] == "failed"
            assert "agent" in failure["reason"]
            assert summary["messages"][0]["text"] == "the disk of pc-1 is nearly full"
            await c.call("run.stop", run_id=run_id)
            after = await c.call("fleet.summary")
            assert after["runs_in_flight"] == []
            # A stopped instance is no failure: only the device's is listed still.
            assert [f["computer"] for f in after["failures"]] == ["printer-1"]


async def test_computer_runs_lists_every_run_that_touched_a_computer_newest_first(ns, tmp_path):
    """Three runs on two agents: each computer's list holds exactly the runs with an instance
    on it, newest first, with its state there; its page shows its groups and filters."""
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        async with agents(ns, c, tmp_path, ["pc-1", "pc-2"]):
            await c.call("task.add", document=TASK)
            ids = []
            for targets in (["pc-1", "pc-2"], ["pc-2"], ["pc-1"]):
                run_id = (await c.call("run.start", task="hello", computers=targets))["run_id"]
                assert (await wait_run(c, run_id))["status"] == "succeeded"
                ids.append(run_id)
            await c.call("groups.add", name="web")
            await c.call("groups.add_member", group="web", computers=["pc-1"])
            await c.call("filter.add", document={"name": "two", "query": "computer.name == 'pc-2'"})
            async with AdminClient(ns.url, await viewer(c), INSECURE) as v:
                one = await v.call("computer.runs", computer="pc-1")
                two = await v.call("computer.runs", computer="pc-2")
                shown = await v.call("computer.show", computer="pc-1")
                assert await refused(v, "computer.runs", computer="nobody") == "unknown_computer"
                assert await refused(v, "computer.show", computer="nobody") == "unknown_computer"
            assert [r["run_id"] for r in one] == [ids[2], ids[0]]
            assert [r["run_id"] for r in two] == [ids[1], ids[0]]
            assert {(r["status"], r["run_status"], r["task_name"]) for r in one + two} == {
                ("succeeded", "succeeded", "hello")
            }
            assert [
                r["run_id"] for r in await c.call("computer.runs", computer="pc-1", limit=1)
            ] == [ids[2]]
            assert shown["name"] == "pc-1" and shown["online"] is True
            assert shown["groups"] == ["web"] and shown["filters"] == []
            assert (await c.call("computer.show", computer="pc-2"))["filters"] == ["two"]


async def test_computers_list_narrows_by_group_with_nested_groups_and_by_filter(ns, tmp_path):
    """``group`` reaches the computers of nested groups too, as a run on the group would;
    ``filter`` keeps its members; both together intersect; unknown names are refused."""
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        for name in ("a-1", "a-2", "b-1"):
            await c.call("computers.add", name=name)
        await c.call("groups.add", name="site")
        await c.call("groups.add", name="floor", parent="site")
        await c.call("groups.add_member", group="site", computers=["a-1"])
        await c.call("groups.add_member", group="floor", computers=["a-2"])
        await c.call("filter.add", document={"name": "twos", "query": "computer.name == 'a-2'"})

        async def names(**args: Any) -> list[str]:
            return [r["name"] for r in await c.call("computers.list", **args)]

        assert await names(group="site") == ["a-1", "a-2"]
        assert await names(group="floor") == ["a-2"]
        assert await names(filter="twos") == ["a-2"]
        assert await names(group="site", filter="twos") == ["a-2"]
        assert await names() == ["a-1", "a-2", "b-1"]
        assert await refused(c, "computers.list", group="nope") == "unknown_group"
        assert await refused(c, "computers.list", filter="nope") == "unknown_filter"


async def test_audit_list_narrows_by_who_and_action_and_stays_refused_to_a_viewer(ns):
    """``who`` matches one admin exactly and ``action`` a prefix of the op; a viewer may not
    read the trail (refused and audited), while the console's reads are open to them."""
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        token = await viewer(c)
        await c.call("admins.add", name="olga", role="operator")
        async with AdminClient(ns.url, token, INSECURE) as v:
            assert await refused(v, "audit.list", who="vera") == "forbidden"
            assert await refused(v, "keys.accept", all=True) == "forbidden"
            assert await refused(v, "tokens.create") == "forbidden"
            await v.call("fleet.summary")
        by_vera = await c.call("audit.list", who="vera")
        assert {e["who"] for e in by_vera} == {"vera"}
        assert {e["action"] for e in by_vera} == {"audit.list", "keys.accept", "tokens.create"}
        assert all(e["outcome"].startswith("refused") for e in by_vera)
        adds = await c.call("audit.list", action="admins")
        assert "olga" in adds[0]["detail"]
        assert {e["action"] for e in adds} == {"admins.add"} and len(adds) == 3
        assert await c.call("audit.list", who="vera", action="admins") == []
        assert len(await c.call("audit.list", who="vera", limit=1)) == 1
