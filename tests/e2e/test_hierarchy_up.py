"""End to end, the hierarchy's "up" (issue 24): real NS processes linked parent to child, a
child's agents behind its own task server. The parent sees each child's computers and its runs
of the parent's items within seconds (`children show`, `runs --child`), starts a replicated
task flagged `remote_start = true` on the child's computers through the child and reads each
result (`run --child`, `runs --child NAME ID`), is refused one without the flag, and a
grandchild's summary reaches the top through `below`."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path
from typing import Any

from tests.helpers import Fleet, Proc, task_doc, until

AGENTS = ["pc-1", "pc-2"]


def shared_doc(name: str, script: str, *, remote_start: bool) -> str:
    """A run-script task the parent replicates to its children (and lets them run for it when
    ``remote_start``)."""
    flags = f"replicate = true\nremote_start = {'true' if remote_start else 'false'}\n"
    return flags + task_doc(name, script)


async def taskserver_on(fleet: Fleet, ns: Proc, name: str) -> Proc:
    """A task server of the NS ``ns``, enrolled by a token made there (in its environment)."""
    token = await fleet.child_token(ns, role="taskserver")
    proc = fleet._proc(
        name,
        [
            "taskserver",
            "--server",
            ns.url,
            "--data",
            str(fleet.root / name),
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--server-fingerprint",
            ns.fingerprint,
        ],
    )
    proc.env = {"TASKFLEET_ENROL_TOKEN": token}
    return await proc.start()


async def json_of(fleet: Fleet, ns: Proc, *args: str) -> Any:
    """A verb's ``--json`` output on the NS ``ns`` (it must succeed)."""
    code, out, err = await fleet.cli_on(ns, *args, "--json")
    assert code == 0, f"taskfleet {' '.join(args)} exited {code}: {err}"
    return json.loads(out)


async def add_on_parent(fleet: Fleet, parent: Proc, child: Proc, path: Path, name: str) -> None:
    """Save a task document on the parent and wait until the child holds it."""
    code, _, err = await fleet.cli_on(parent, "task", "add", str(path))
    assert code == 0, err
    async with fleet.admin_of(child) as c:

        async def arrived() -> bool:
            return any(t["name"] == name for t in await c.call("tasks.list"))

        await until(arrived, f"task {name} replicated to {child.name}", timeout_s=15)


async def child_with_agents(fleet: Fleet) -> tuple[Proc, Proc]:
    """A parent ``hq`` and its child ``site-a`` whose two agents are behind the child's TS."""
    hq = await fleet.server("hq", 0, "--name", "hq")
    site = await fleet.child_server("site-a", parent=hq)
    await taskserver_on(fleet, site, "ts-a")
    async with fleet.admin_of(site) as c:

        async def ts_up() -> bool:
            return any(r["online"] for r in await c.call("taskservers.list"))

        await until(ts_up, "the child's task server connected")
        for name in AGENTS:
            await fleet.agent_on(site, name)

        async def behind_ts() -> bool:
            rows = await c.call("computers.list")
            return sum(1 for r in rows if r["online"] and r["taskserver"] == "ts-a") == 2

        await until(behind_ts, "both agents online behind the child's TS")
    return hq, site


async def test_the_parent_sees_a_childs_computers_and_runs_and_starts_one_there(
    fleet: Fleet, tmp_path: Path
):
    """`children show` on the parent has the child's computers (online, by OS) within
    seconds; a run on the child of a replicated task shows in `runs --child` with its
    per-status counts; a task with `remote_start = true` started from the parent runs on the
    child's agents and the parent reads each result; one without the flag, an unknown child
    and a child that went away are refused, each saying why."""
    hq, site = await child_with_agents(fleet)

    async def computers() -> Any:
        shown = await json_of(fleet, hq, "children", "show", "site-a")
        summary = shown["summary"] or {}
        got = summary.get("computers")
        return got if got and got["online"] == 2 else None

    counted = await until(computers, "the child's two agents counted on the parent", 15)
    assert counted == {"total": 2, "online": 2, "by_os": {"Linux": 2}}

    # A replicated task run on the child itself: the parent sees it and its counts.
    (tmp_path / "check.toml").write_text(
        shared_doc("check", "echo checked %COMPUTERNAME%", remote_start=False)
    )
    await add_on_parent(fleet, hq, site, tmp_path / "check.toml", "check")
    ran = await json_of(fleet, site, "run", "check", "--all", "--wait")
    assert ran["status"] == "succeeded"

    async def seen_on_parent() -> Any:
        listed = await json_of(fleet, hq, "runs", "--child", "site-a")
        row = next((r for r in listed["runs"] if r["run_id"] == ran["run_id"]), None)
        return row if row and row["status"] == "succeeded" else None

    row = await until(seen_on_parent, "the child's run in `runs --child`", 15)
    assert row["task"] == "check" and row["counts"] == {"succeeded": 2}
    for time_field in (row["created"], row["finished"]):  # the schema's ISO 8601 UTC times
        assert dt.datetime.fromisoformat(time_field).utcoffset() == dt.timedelta(0)
    assert (row["total"], row["succeeded"], row["failed"], row["pending"]) == (2, 2, 0, 0)
    code, out, _ = await fleet.cli_on(hq, "runs", "--child", "site-a")
    assert code == 0 and "check" in out and "succeeded 2" in out

    # Without remote_start the parent may not start it there.
    code, _, err = await fleet.cli_on(hq, "run", "check", "--child", "site-a", "--all")
    assert code == 2, err
    assert "not remote-startable" in err and "remote_start = true" in err

    # With it: the child runs it on its agents, the parent reads each result.
    (tmp_path / "hello.toml").write_text(
        shared_doc("hello", "echo hello from %COMPUTERNAME%", remote_start=True)
    )
    await add_on_parent(fleet, hq, site, tmp_path / "hello.toml", "hello")
    started = await json_of(fleet, hq, "run", "hello", "--child", "site-a", "--all")
    assert started["child"] == "site-a" and started["targets"] == 2
    run_id = started["run_id"]

    async def ended() -> Any:
        view = await json_of(fleet, hq, "runs", "--child", "site-a", str(run_id))
        return view if view["status"] != "running" else None

    view = await until(ended, "the remote run's end, read from the parent", 30)
    assert view["status"] == "succeeded" and view["child"] == "site-a"
    results = {i["computer"]: i for i in view["instances"]}
    assert sorted(results) == AGENTS
    for name, i in results.items():
        assert (i["status"], i["return_code"]) == ("succeeded", 0)
        assert i["output"].strip() == f"hello from {name}"
    code, out, _ = await fleet.cli_on(hq, "runs", "--child", "site-a", str(run_id))
    assert code == 0 and f"run {run_id}: task hello" in out
    assert all(name in out for name in AGENTS)
    async with fleet.admin_of(site) as c:
        trail = await c.call("audit.list", who="parent:hq", action="hier.start")
    assert trail and trail[0]["outcome"] == "ok" and f"run_id={run_id}" in trail[0]["detail"]

    code, _, err = await fleet.cli_on(hq, "run", "hello", "--child", "nowhere", "--all")
    assert code == 2 and "no child NS named 'nowhere'" in err

    # The child checks too: a name it holds as its own item is not the parent's to start.
    (tmp_path / "local.toml").write_text(task_doc("local", "echo the child's own"))
    assert (await fleet.cli_on(site, "task", "add", str(tmp_path / "local.toml")))[0] == 0
    (tmp_path / "local-hq.toml").write_text(
        shared_doc("local", "echo the parent's", remote_start=True)
    )
    assert (await fleet.cli_on(hq, "task", "add", str(tmp_path / "local-hq.toml")))[0] == 0
    code, _, err = await fleet.cli_on(hq, "run", "local", "--child", "site-a", "--all")
    assert code == 2 and "task 'local' on site-a is not from hq" in err

    # The child goes away: its last summary still answers, a start is refused.
    site.kill(signal.SIGTERM)
    await site.wait()

    async def gone() -> bool:
        rows = await json_of(fleet, hq, "children")
        return not next(r for r in rows if r["name"] == "site-a")["connected"]

    await until(gone, "the parent sees the child gone", 15)
    kept = await json_of(fleet, hq, "runs", "--child", "site-a")
    assert kept["connected"] is False and {r["run_id"] for r in kept["runs"]} >= {run_id}
    code, _, err = await fleet.cli_on(hq, "run", "hello", "--child", "site-a", "--all")
    assert code == 3 and "not linked" in err


async def test_a_grandchilds_summary_reaches_the_top_through_below(fleet: Fleet):
    """hq <- mid <- leaf: the computers of leaf's agent reach hq in mid's summary (`below`),
    and hq keeps leaf's NS id under mid (for the loop check), though leaf linked after mid."""
    hq = await fleet.server("hq", 0, "--name", "hq")
    mid = await fleet.child_server("mid", parent=hq)
    leaf = await fleet.child_server("leaf", parent=mid)
    await fleet.agent_on(leaf, "pc-leaf")
    (leaf_row,) = await json_of(fleet, mid, "children")

    async def reached() -> Any:
        shown = await json_of(fleet, hq, "children", "show", "mid")
        below = (shown["summary"] or {}).get("below") or []
        entry = next((b for b in below if b["name"] == "leaf"), None)
        counts = ((entry or {}).get("summary") or {}).get("computers") or {}
        return shown if counts.get("online") == 1 else None

    shown = await until(reached, "leaf's agent counted at the top", 20)
    (entry,) = shown["summary"]["below"]
    assert entry["ns_id"] == leaf_row["ns_id"] and entry["connected"] is True
    assert entry["summary"]["computers"] == {"total": 1, "online": 1, "by_os": {"Linux": 1}}
    assert shown["summary"]["computers"]["total"] == 0  # mid's own fleet is empty
    assert leaf_row["ns_id"] in shown["below"]
