"""Failover (issue 19): the agents of a Task Server killed for good run their work through
another TS soon after its grace, nothing twice and nothing lost; a TS that only restarts keeps
its agents. Real ``taskfleet`` processes: an NS, two TS, six agents."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.helpers import Fleet, free_port, task_doc, until, wait_run

AGENTS = [f"f-{i}" for i in range(1, 7)]
GRACE_S = 2
"""A short ``--ts-grace-s`` so the test is quick; the default's budget is argued in
docs/architecture.md (Known limits)."""


async def _two_task_servers(fleet: Fleet, *ns_args: str, port_a: int = 0) -> dict[str, str]:
    """An NS, TS `ts-a` and `ts-b`, six agents; return each agent's TS once all are online
    (the NS spreads them over the two)."""
    await fleet.server("ns", 0, *ns_args)
    await fleet.taskserver("ts-a", port_a)
    await fleet.taskserver("ts-b")
    for name in AGENTS:
        await fleet.agent(name)
    rows = await fleet.wait_online(AGENTS)
    placed = {r["name"]: r["taskserver"] for r in rows if r["name"] in AGENTS}
    assert set(placed.values()) == {"ts-a", "ts-b"}, placed
    return placed


def _marking(run: str, marks: Path) -> str:
    """A script that appends a line to its computer's file for ``run``, so runs can be counted."""
    return f"echo ran >> {marks}/{run}-%COMPUTERNAME%\necho {run} on %COMPUTERNAME%"


def _each_succeeded_once(final: dict, run: str, marks: Path) -> None:
    """One result per agent, every one `succeeded` with its own output, each script run once."""
    assert final["status"] == "succeeded", final
    assert sorted(i["computer"] for i in final["instances"]) == AGENTS
    for inst in final["instances"]:
        assert inst["status"] == "succeeded", inst
        assert inst["output"].strip() == f"{run} on {inst['computer']}", inst
        ran = (marks / f"{run}-{inst['computer']}").read_text()
        assert ran == "ran\n", f"{run} ran {ran.count('ran')} times on {inst['computer']}"


async def test_agents_of_a_killed_task_server_run_their_work_through_the_other_once(
    fleet: Fleet, tmp_path
):
    """Attack: kill -9 one of two TS while a run is under way on its agents (their scripts still
    running), then start at once a task with a 60 s limit on all six agents. What must hold: the
    dead TS's agents move to the other TS right after the grace, with the work they held; both
    runs succeed on every agent well within the limit; each script ran exactly once on each
    computer (an agent that already had the work says how it ended, it does not run it again);
    each computer has one result per run; the live TS's agents never moved."""
    marks = tmp_path / "marks"
    marks.mkdir()
    placed = await _two_task_servers(fleet, "--ts-grace-s", str(GRACE_S))
    victims = sorted(n for n, ts in placed.items() if ts == "ts-a")
    ts_a = next(p for p in fleet.procs if p.name == "ts-a")
    async with fleet.admin() as c:
        await c.call(
            "task.add",
            text=task_doc("before", f"{_marking('before', marks)}\nsleep 3", timeout_s=60),
            filename="before.toml",
        )
        await c.call(
            "task.add",
            text=task_doc("after", _marking("after", marks), timeout_s=60),
            filename="after.toml",
        )
        before = int((await c.call("run.start", task="before", all=True))["run_id"])

        async def all_running() -> bool:
            view = await c.call("run.show", run_id=before)
            return all(i["status"] == "running" for i in view["instances"])

        await until(all_running, "the first run under way on all six agents")
        ts_a.kill(signal.SIGKILL)
        killed = time.monotonic()
        await ts_a.wait()
        after = int((await c.call("run.start", task="after", all=True))["run_id"])
        finals = {
            "before": await wait_run(c, before, timeout_s=60),
            "after": await wait_run(c, after, timeout_s=60),
        }
        took = time.monotonic() - killed
        moved = {r["name"]: r["taskserver"] for r in await c.call("computers.list")}
    for run, final in finals.items():
        _each_succeeded_once(final, run, marks)
    assert moved == {n: "ts-b" for n in AGENTS}, (victims, moved)
    # The grace, 0.2 s, a jitter of at most 1 s, then one registration and one dispatch; the
    # rest is slack for a loaded machine (the agents' backoff alone would not explain a delay).
    assert took < GRACE_S + 1.2 + 10, f"the work of ts-a's agents ran {took:.1f} s after its death"


async def test_a_task_server_restarted_within_the_grace_keeps_its_agents(fleet: Fleet, tmp_path):
    """Attack: kill -9 one of two TS and start it again at once on its address (as systemd's
    `Restart=on-failure` would), under the default grace. What must hold: none of its agents is
    moved to the other TS; they are back on it, and a run on all six agents succeeds, each
    script run once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    port = free_port()
    placed = await _two_task_servers(fleet, port_a=port)  # the default --ts-grace-s
    ts_a = next(p for p in fleet.procs if p.name == "ts-a")
    ts_a.kill(signal.SIGKILL)
    await ts_a.wait()
    async with fleet.admin() as c:

        async def seen_gone() -> bool:
            rows = await c.call("computers.list")
            return not any(r["online"] for r in rows if placed.get(r["name"]) == "ts-a")

        await until(seen_gone, "the NS seeing ts-a's agents offline")
        await fleet.taskserver("ts-a", port)

        async def all_back() -> dict[str, str] | None:
            rows = await c.call("computers.list")
            mine = {r["name"]: r for r in rows if r["name"] in AGENTS}
            if all(r["online"] for r in mine.values()):
                return {n: r["taskserver"] for n, r in mine.items()}
            return None

        # Once online, an agent is where it stays: a moved one would show ts-b here.
        back = await until(all_back, "the six agents online again", timeout_s=30)
        assert back == placed
        await c.call(
            "task.add",
            text=task_doc("again", _marking("again", marks), timeout_s=60),
            filename="again.toml",
        )
        run_id = int((await c.call("run.start", task="again", all=True))["run_id"])
        final = await wait_run(c, run_id, timeout_s=60)
        still = {r["name"]: r["taskserver"] for r in await c.call("computers.list")}
    _each_succeeded_once(final, "again", marks)
    assert still == placed
