"""End to end: NS, two task servers and six agents, each a real ``taskfleet`` process."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from tests.helpers import Fleet, task_doc, until, wait_run

AGENTS = [f"pc-{i}" for i in range(1, 7)]


async def test_fleet_of_six_behind_two_task_servers(fleet: Fleet, tmp_path):
    """A run-script on six agents succeeds with per-computer output; the six are spread over
    both TS; a TS task reaches a device with no agent; a client task on that device fails
    with "no agent" and `run --wait` exits 1."""
    await fleet.server()
    await fleet.taskserver("ts-a")
    await fleet.taskserver("ts-b")
    async with fleet.admin() as c:

        async def both_online():
            rows = await c.call("taskservers.list")
            return sum(1 for r in rows if r["online"]) == 2

        await until(both_online, "both task servers connected")
        for name in AGENTS:
            await fleet.agent(name)
        await fleet.wait_online(AGENTS)

        computers = await fleet.cli_json("computers")
        by_ts: dict[str, list[str]] = {}
        for row in computers:
            assert row["has_agent"] and row["online"] and row["last_seen"]
            by_ts.setdefault(row["taskserver"], []).append(row["name"])
        assert sorted(by_ts) == ["ts-a", "ts-b"]
        assert [len(v) for v in by_ts.values()] == [3, 3]

        doc = tmp_path / "hello.toml"
        doc.write_text(
            task_doc("hello", "echo hello from %COMPUTERNAME% via %TASKSERVER% run %RUNID%")
        )
        code, out, err = await fleet.cli("task", "add", str(doc))
        assert code == 0, err
        code, out, err = await fleet.cli("run", "hello", "--all", "--wait", "--json")
        assert code == 0, out + err
        run = json.loads(out)
        assert run["status"] == "succeeded"
        assert len(run["instances"]) == 6
        ts_of = {r["name"]: r["taskserver"] for r in computers}
        for inst in run["instances"]:
            assert inst["status"] == "succeeded"
            assert inst["return_code"] == 0
            expected = (
                f"hello from {inst['computer']} via {ts_of[inst['computer']]} run {run['run_id']}"
            )
            assert inst["output"].strip() == expected
            assert inst["started"] and inst["finished"]

        # A device: no agent. A TS task reaches it; a client task fails at once.
        added = await c.call("computers.add", name="printer-1", address="192.0.2.10")
        assert added["has_agent"] is False and added["taskserver"] in ("ts-a", "ts-b")
        (tmp_path / "ts.toml").write_text(
            task_doc(
                "ping-device",
                "echo %TASKSERVER% acts for %COMPUTERNAME%",
                type="run-script-on-taskserver",
            )
        )
        code, _, err = await fleet.cli("task", "add", str(tmp_path / "ts.toml"))
        assert code == 0, err
        started = await c.call("run.start", task="ping-device", computers=["printer-1"])
        final = await wait_run(c, started["run_id"])
        assert final["status"] == "succeeded"
        (inst,) = final["instances"]
        assert inst["output"].strip() == f"{added['taskserver']} acts for printer-1"

        code, out, err = await fleet.cli(
            "run", "hello", "--computer", "printer-1", "--wait", "--json"
        )
        assert code == 1, out + err
        run = json.loads(out)
        (inst,) = run["instances"]
        assert inst["status"] == "failed" and inst["reason"] == "no agent"
        assert "no agent" in err  # the warning before the run starts


async def test_usage_errors_exit_2_with_a_clear_message(fleet: Fleet, tmp_path):
    """Unknown task, unknown computer and an invalid document are usage errors (exit 2),
    and the invalid document's every problem is listed by field path."""
    await fleet.server()
    code, _, err = await fleet.cli("run", "nope", "--all")
    assert code == 2 and "no task or job named 'nope'" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "x"\ntype = "run-script"\ntimeout_s = -1\n[params]\ninterpreter = "fish"\n'
    )
    code, _, err = await fleet.cli("task", "add", str(bad))
    assert code == 2
    for path in ("timeout_s:", "params.interpreter:", "params.script:"):
        assert path in err, err
    (tmp_path / "ok.toml").write_text(task_doc("ok", "true"))
    assert (await fleet.cli("task", "add", str(tmp_path / "ok.toml")))[0] == 0
    code, _, err = await fleet.cli("run", "ok", "--computer", "ghost")
    assert code == 2 and "unknown computer(s): ghost" in err
    code, _, err = await fleet.cli("run", "ok")
    assert code == 2 and "--all" in err


async def test_watch_gets_the_changes_of_one_pass_as_one_event(fleet: Fleet, tmp_path):
    """Changes the NS makes together reach a watcher as one ``instances`` event: stopping a
    run on four agents gives one event with four ``stopped`` items, and then the ``run`` event."""
    names = [f"w-{i}" for i in range(4)]
    await fleet.server()
    for name in names:
        await fleet.agent(name)
    await fleet.wait_online(names)
    async with fleet.admin() as c:
        await c.call("task.add", text=task_doc("long", "sleep 60", timeout_s=120), filename="t")
        run_id = (await c.call("run.start", task="long", computers=names))["run_id"]
        await c.call("run.watch", run_id=run_id)
        running: set[int] = set()

        async def next_event():
            return await asyncio.wait_for(c._events.get(), 30)

        while len(running) < len(names):  # progress, in however many events it came
            event = await next_event()
            assert event.kind == "instances", event
            running.update(i["instance_id"] for i in event.data["items"] if i["state"] == "running")
        await c.call("run.stop", run_id=run_id)
        event = await next_event()
        assert event.kind == "instances"
        items = event.data["items"]
        assert sorted(i["instance_id"] for i in items) == sorted(running)
        assert {i["state"] for i in items} == {"stopped"}
        event = await next_event()
        assert (event.kind, event.data) == ("run", {"status": "stopped"})


async def test_a_totals_watch_gets_counts_not_rows(fleet: Fleet, tmp_path):
    """``run.watch`` with ``instances`` false: the snapshot has per-state ``counts`` and no
    rows, each roll-up arrives as one ``counts`` event, and a detailed watcher of the same run
    on another connection still gets every instance."""
    names = [f"t-{i}" for i in range(4)]
    await fleet.server()
    for name in names:
        await fleet.agent(name)
    await fleet.wait_online(names)
    async with fleet.admin() as c, fleet.admin() as d:
        await c.call("task.add", text=task_doc("long", "sleep 60", timeout_s=120), filename="t")
        run_id = (await c.call("run.start", task="long", computers=names))["run_id"]
        view = await c.call("run.watch", run_id=run_id, instances=False)
        assert "instances" not in view and sum(view["counts"].values()) == len(names)
        full = await d.call("run.watch", run_id=run_id)
        assert len(full["instances"]) == len(names)
        running = 0

        async def next_event(client):
            return await asyncio.wait_for(client._events.get(), 30)

        while running < len(names):  # received/running, in however many roll-ups it came
            event = await next_event(c)
            assert event.kind == "counts", event
            assert event.data["changes"] >= sum(event.data["states"].values())
            running += event.data["states"].get("running", 0)
        await c.call("run.stop", run_id=run_id)
        event = await next_event(c)
        assert (event.kind, event.data) == (
            "counts",
            {"changes": len(names), "states": {"stopped": len(names)}},
        )
        assert (await next_event(c)).kind == "run"
        stopped = set()
        while len(stopped) < len(names):  # the detailed watcher saw each instance stop
            event = await next_event(d)
            assert event.kind == "instances", event
            stopped.update(i["instance_id"] for i in event.data["items"] if i["state"] == "stopped")
        final = await c.call("run.show", run_id=run_id, instances=False)
        assert final["counts"] == {"stopped": len(names)} and "instances" not in final


async def test_results_leave_the_agent_outbox_once_acknowledged(fleet: Fleet, tmp_path):
    """Acks are deferred off a run's critical path, not skipped: after a run, and after the
    next run whose executes carry them, every agent's outbox (its SQLite file) is empty."""
    names = ["ack-1", "ack-2"]
    await fleet.server()
    await fleet.taskserver("ts-ack")
    for name in names:
        await fleet.agent(name)
    await fleet.wait_online(names)
    async with fleet.admin() as c:
        await c.call("task.add", text=task_doc("quick", "echo hi"), filename="t")
        for _ in range(2):  # the second run's executes carry the first run's acks
            run_id = (await c.call("run.start", task="quick", computers=names))["run_id"]
            assert (await wait_run(c, run_id))["status"] == "succeeded"

    async def outbox_empty() -> bool:
        total = 0
        for name in names:
            with sqlite3.connect(fleet.root / name / "agent.db") as db:
                total += db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return total == 0

    await until(outbox_empty, "the agents' outboxes to empty", timeout_s=15)
