"""Offline agents, time limits, a Task Server restarted mid-run, and stop."""

from __future__ import annotations

import os
import signal
import sqlite3

from tests.helpers import Fleet, free_port, task_doc, until, wait_run


async def test_offline_agent_gets_its_pending_task_and_a_missing_one_times_out(
    fleet: Fleet, tmp_path
):
    """A client task for an offline computer waits until its agent connects; a computer whose
    agent never comes back ends `timed_out` once the task's time limit has passed."""
    await fleet.server()
    await fleet.taskserver("ts-1")
    late = await fleet.agent("late")
    gone = await fleet.agent("gone")
    await fleet.wait_online(["late", "gone"])
    late.kill(signal.SIGTERM)
    gone.kill(signal.SIGKILL)
    await late.wait()
    await gone.wait()
    async with fleet.admin() as c:

        async def both_offline():
            rows = await c.call("computers.list")
            return not any(r["online"] for r in rows)

        await until(both_offline, "both agents offline")
        await c.call(
            "task.add",
            text=task_doc("later", "echo ran on %COMPUTERNAME%", timeout_s=60),
            filename="a.toml",
        )
        await c.call(
            "task.add", text=task_doc("short", "echo never", timeout_s=2), filename="b.toml"
        )
        waiting = await c.call("run.start", task="later", computers=["late"])
        doomed = await c.call("run.start", task="short", computers=["gone"])
        view = await c.call("run.show", run_id=waiting["run_id"])
        assert view["instances"][0]["status"] == "pending"

        final = await wait_run(c, doomed["run_id"], timeout_s=30)
        assert final["status"] == "failed"
        (inst,) = final["instances"]
        assert inst["status"] == "timed_out" and inst["reason"]

        await fleet.agent("late")  # same name, same data folder: the agent comes back
        final = await wait_run(c, waiting["run_id"], timeout_s=30)
        assert final["status"] == "succeeded"
        assert final["instances"][0]["output"].strip() == "ran on late"


async def _marked_run_under_way(fleet: Fleet, names: list[str], marks, sleep_s: int) -> int:
    """Start ``names`` as agents and a run on all of them of a script that marks its computer
    in ``marks``, sleeps ``sleep_s`` and says where it ran; return the run id once every
    instance is running."""
    for n in names:
        await fleet.agent(n)
    await fleet.wait_online(names)
    script = f"echo run >> {marks}/%COMPUTERNAME%\nsleep {sleep_s}\necho done on %COMPUTERNAME%"
    async with fleet.admin() as c:
        await c.call("task.add", text=task_doc("marked", script, timeout_s=120), filename="m.toml")
        run_id = int((await c.call("run.start", task="marked", all=True))["run_id"])

        async def all_running():
            view = await c.call("run.show", run_id=run_id)
            return all(i["status"] == "running" for i in view["instances"])

        await until(all_running, f"all {len(names)} instances running")
    return run_id


def _each_ran_once(final: dict, names: list[str], marks) -> None:
    """The run succeeded with one result per computer, and each script ran once."""
    assert final["status"] == "succeeded", final
    assert sorted(i["computer"] for i in final["instances"]) == sorted(names)
    for inst in final["instances"]:
        assert inst["output"].strip() == f"done on {inst['computer']}"
        assert (marks / inst["computer"]).read_text() == "run\n", "the script ran more than once"


async def test_task_server_restarted_mid_run_loses_and_doubles_nothing(fleet: Fleet, tmp_path):
    """SIGKILL the TS while three agents run a task, start it again on the same data folder:
    the run completes, every instance has exactly one result, and each script ran once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    await fleet.server()
    ts = await fleet.taskserver("ts-1")
    names = ["r-1", "r-2", "r-3"]
    run_id = await _marked_run_under_way(fleet, names, marks, sleep_s=2)
    ts.kill(signal.SIGKILL)
    await ts.wait()
    await fleet.taskserver("ts-1")  # same data folder, new port: agents find it through the NS
    async with fleet.admin() as c:
        final = await wait_run(c, run_id, timeout_s=60)
    _each_ran_once(final, names, marks)


async def test_results_waiting_at_a_task_server_that_dies_are_not_lost(fleet: Fleet, tmp_path):
    """The NS goes down while three agents run a task; they finish, and their results reach
    the TS, which cannot pass them on. Then the TS is killed too. A relay acknowledges a result
    only once the NS has stored it, so each agent still keeps its own: when both servers are
    back, the TS sends the work again, each agent answers with the result it kept, and the run
    ends with every result once and each script run once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    ns_port, ts_port = free_port(), free_port()
    await fleet.server(port=ns_port)
    ts = await fleet.taskserver("ts-1", ts_port)
    names = ["q-1", "q-2", "q-3"]
    run_id = await _marked_run_under_way(fleet, names, marks, sleep_s=1)
    assert fleet.ns is not None
    fleet.ns.kill(signal.SIGKILL)
    await fleet.ns.wait()

    async def results_kept() -> bool:
        for n in names:
            with sqlite3.connect(fleet.root / n / "agent.db") as db:
                if db.execute("SELECT count(*) FROM outbox").fetchone()[0] != 1:
                    return False
        return True

    await until(results_kept, "every agent done, its result in its outbox")
    ts.kill(signal.SIGKILL)
    await ts.wait()
    await fleet.server(port=ns_port)
    await fleet.taskserver("ts-1", ts_port)
    async with fleet.admin() as c:
        final = await wait_run(c, run_id, timeout_s=60)
    _each_ran_once(final, names, marks)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose: look at its state.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def test_stop_kills_a_running_sleep_and_marks_it_stopped(fleet: Fleet, tmp_path):
    """`taskfleet stop` on a running `sleep 600`: the agent kills the process group and the
    instance reads `stopped`; a pending instance on an offline computer is stopped too."""
    pidfile = tmp_path / "pid"
    await fleet.server()  # no TS: the agent is served by the NS's built-in task service
    away = await fleet.agent("away")
    await fleet.agent("sleeper")
    await fleet.wait_online(["sleeper", "away"])
    away.kill(signal.SIGKILL)
    await away.wait()
    async with fleet.admin() as c:
        await c.call(
            "task.add",
            text=task_doc("sleepy", f"echo $$ > {pidfile}\nexec sleep 600", timeout_s=900),
            filename="s.toml",
        )
        started = await c.call("run.start", task="sleepy", computers=["sleeper", "away"])
        run_id = started["run_id"]

        async def running_pid():
            view = await c.call("run.show", run_id=run_id)
            states = {i["computer"]: i["status"] for i in view["instances"]}
            if states == {"sleeper": "running", "away": "pending"} and pidfile.exists():
                text = pidfile.read_text().strip()
                return int(text) if text else None
            return None

        pid = await until(running_pid, "sleep 600 running")
        assert _alive(pid)
        code, out, err = await fleet.cli("stop", str(run_id))
        assert code == 0, err
        view = await c.call("run.show", run_id=run_id)
        assert view["status"] == "stopped"
        assert {i["computer"]: i["status"] for i in view["instances"]} == {
            "sleeper": "stopped",
            "away": "stopped",
        }

        async def dead():
            return not _alive(pid)

        await until(dead, f"process {pid} killed", timeout_s=15)


async def test_agents_of_a_task_server_that_stays_down_move_and_their_work_follows(
    fleet: Fleet, tmp_path
):
    """A TS killed for good: after the grace period its agents move to the NS's built-in task
    service, and the work they held (pending and running) follows them; the run completes with
    each script run once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    await fleet.server("ns", 0, "--ts-grace-s", "2")
    ts = await fleet.taskserver("ts-1")
    names = ["m-1", "m-2", "m-3"]
    run_id = await _marked_run_under_way(fleet, names, marks, sleep_s=2)
    ts.kill(signal.SIGKILL)
    await ts.wait()
    async with fleet.admin() as c:
        final = await wait_run(c, run_id, timeout_s=90)
        moved = {r["name"]: r["taskserver"] for r in await c.call("computers.list")}
    _each_ran_once(final, names, marks)
    assert moved == {n: "(built-in)" for n in names}
