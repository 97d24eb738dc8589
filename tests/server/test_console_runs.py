"""What the web console's Run page reads: ``run.show`` narrowed to one ``computer`` (the cell
clicked in a grid of thousands) and ``brief`` views without outputs (the grid's snapshot, from
``run.show`` and ``run.watch``), on a real in-process NS with real agents over loopback
WebSockets and a real SQLite file."""

from __future__ import annotations

import asyncio

import pytest

from admin.client import AdminClient
from protocol.errors import RemoteError
from tests.helpers import INSECURE, quick_agent, task_doc, until, wait_run

NAMES = ["pc-1", "pc-2", "pc-3"]


async def _three_agents_ran(ns, c: AdminClient) -> tuple[int, list[asyncio.Task[None]]]:
    """Three agents, one run of a task on each, ended; returns the run id and the agents."""
    token = (await c.call("tokens.create", ttl_s=600, uses=len(NAMES)))["token"]
    running = [asyncio.create_task(quick_agent(ns.url, n, token).run()) for n in NAMES]

    async def online() -> bool:
        return {r["name"] for r in await c.call("computers.list") if r["online"]} >= set(NAMES)

    await until(online, "three agents online")
    await c.call("task.add", text=task_doc("hello", "echo hello"))
    run_id = (await c.call("run.start", task="hello", computers=NAMES))["run_id"]
    await wait_run(c, run_id)
    return run_id, running


async def _stop(running: list[asyncio.Task[None]]) -> None:
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


async def test_run_show_for_one_computer_gives_only_its_rows_with_output(ns):
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        run_id, running = await _three_agents_ran(ns, c)
        try:
            whole = await c.call("run.show", run_id=run_id)
            one = await c.call("run.show", run_id=run_id, computer="pc-2")
            none = await c.call("run.show", run_id=run_id, computer="not-in-this-run")
        finally:
            await _stop(running)
    assert sorted(r["computer"] for r in whole["instances"]) == NAMES
    assert [r["computer"] for r in one["instances"]] == ["pc-2"]
    assert one["instances"][0]["status"] == "succeeded"
    assert "output" in one["instances"][0]
    assert one["status"] == "succeeded" and one["steps"] == whole["steps"]
    assert none["instances"] == []


async def test_brief_views_leave_every_output_out(ns):
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        run_id, running = await _three_agents_ran(ns, c)
        try:
            shown = await c.call("run.show", run_id=run_id, brief=True)
            watched = await c.call("run.watch", run_id=run_id, brief=True)
            full = await c.call("run.show", run_id=run_id)
        finally:
            await _stop(running)
    for view in (shown, watched):
        assert sorted(r["computer"] for r in view["instances"]) == NAMES
        assert all("output" not in r and r["status"] == "succeeded" for r in view["instances"])
    assert all("output" in r for r in full["instances"])


async def test_run_show_refuses_a_computer_that_is_not_a_string(ns):
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        with pytest.raises(RemoteError) as caught:
            await c.call("run.show", run_id=1, computer=5)
    assert caught.value.code == "bad_request"
    assert "'computer' must be str" in caught.value.message
