"""A job's own time limit, and `stop` during a task-server step of a client job (issue 19).

Each test starts a real fleet. A step that would outlive its job writes its process id to a file
and sleeps; the step after it would create a marker file. The tests then check what only the
real parts can show: the step's process is gone, the marker was never made, and the job ended
with the state and reason the NS shows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.helpers import Fleet, task_doc, until, wait_run

LIMIT_REACHED = "the job's time limit of 2 s was reached during step 'nap'"


async def add(fleet: Fleet, tmp_path: Path, kind: str, name: str, text: str) -> None:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    code, _, err = await fleet.cli(kind, "add", str(path))
    assert code == 0, err


def job_doc(name: str, type_: str, steps: str, timeout_s: int | None = None) -> str:
    limit = f"timeout_s = {timeout_s}\n" if timeout_s is not None else ""
    return f'name = "{name}"\ntype = "{type_}"\n{limit}{steps}'


def nap_script(where: Path) -> str:
    """Print "napping", then write this script's process id to ``where/pid-COMPUTER`` (one line
    per start), then sleep: once the id is there, so is the output (a stop may come at once)."""
    return f"echo napping\necho $$ >> {where}/pid-%COMPUTERNAME%\nsleep 30\necho woke"


def mark_script(where: Path) -> str:
    return f"touch {where}/mark-%COMPUTERNAME%"


def pids(where: Path, computer: str) -> list[int]:
    path = where / f"pid-{computer}"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie left for its parent to reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def process_gone(pid: int, what: str) -> None:
    async def gone() -> bool:
        return not alive(pid)

    await until(gone, what, timeout_s=20)


def agent_ended(fleet: Fleet, agent: str) -> list[str]:
    """The end states the agent itself stored for its instances (its ``seen`` table)."""
    with sqlite3.connect(fleet.root / agent / "agent.db") as db:
        rows = db.execute("SELECT state FROM seen").fetchall()
    return [r[0] for r in rows if r[0] in ("succeeded", "failed", "timed_out", "stopped")]


def jobs_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each computer's job instance (the row with no step), by computer."""
    return {i["computer"]: i for i in run["instances"] if not i["step"]}


def steps_of(run: dict[str, Any], computer: str) -> dict[str, dict[str, Any]]:
    return {i["step"]: i for i in run["instances"] if i["step"] and i["computer"] == computer}


async def add_nap_and_mark(fleet: Fleet, tmp_path: Path, where: Path, type_: str) -> None:
    """Tasks ``nap`` (longer than any job limit here) and ``mark``, of task type ``type_``."""
    await add(fleet, tmp_path, "task", "nap", task_doc("nap", nap_script(where), type=type_))
    await add(fleet, tmp_path, "task", "mark", task_doc("mark", mark_script(where), type=type_))


NAP_THEN_MARK = '[[steps]]\ntask = "nap"\non_failure = "continue"\n[[steps]]\ntask = "mark"\n'
"""`continue` on the nap: a step's own failure would let the job go on; only the job's limit ends it."""


async def test_client_job_limit_ends_the_running_step_and_starts_no_other(fleet: Fleet, tmp_path):
    """A client job with timeout_s = 2 whose first step sleeps 30 s: the agent kills the step at the
    job's limit, ends the job timed_out with a reason naming the limit, and never starts step 2."""
    where = tmp_path / "work"
    where.mkdir()
    await fleet.server()
    await fleet.agent("a-1")
    await fleet.wait_online(["a-1"])
    await add_nap_and_mark(fleet, tmp_path, where, "run-script")
    await add(fleet, tmp_path, "job", "cj", job_doc("cj", "client-job", NAP_THEN_MARK, 2))
    async with fleet.admin() as c:
        started = await c.call("run.start", task="cj", computers=["a-1"])
        final = await wait_run(c, started["run_id"], 60)
    assert final["status"] == "failed", final
    job = jobs_of(final)["a-1"]
    assert job["status"] == "timed_out" and job["reason"] == LIMIT_REACHED, job
    steps = steps_of(final, "a-1")
    assert set(steps) == {"nap"}, steps
    assert steps["nap"]["status"] == "timed_out", steps["nap"]
    assert not (where / "mark-a-1").exists()
    assert agent_ended(fleet, "a-1") == ["timed_out"]  # the agent ended it, not a sweep
    (pid,) = pids(where, "a-1")
    await process_gone(pid, "the nap step's process killed at the job's limit")


async def test_client_job_limit_through_a_task_server(fleet: Fleet, tmp_path):
    """The same job made of task-server steps, on an agent behind a TS (the TS runs the step for
    the agent) and on a device (the TS drives the job itself): both end timed_out at the job's
    limit, the step's process is killed, the second step never runs."""
    where = tmp_path / "work"
    where.mkdir()
    await fleet.server()
    await fleet.taskserver("ts-1")
    await fleet.agent("a-1")
    await fleet.wait_online(["a-1"])
    async with fleet.admin() as c:
        await c.call("computers.add", name="switch-1", address="192.0.2.1")
    await add_nap_and_mark(fleet, tmp_path, where, "run-script-on-taskserver")
    await add(fleet, tmp_path, "job", "cj", job_doc("cj", "client-job", NAP_THEN_MARK, 2))
    async with fleet.admin() as c:
        started = await c.call("run.start", task="cj", computers=["a-1", "switch-1"])
        final = await wait_run(c, started["run_id"], 60)
    assert final["status"] == "failed", final
    for computer in ("a-1", "switch-1"):
        job = jobs_of(final)[computer]
        assert job["status"] == "timed_out" and job["reason"] == LIMIT_REACHED, job
        steps = steps_of(final, computer)
        assert set(steps) == {"nap"} and steps["nap"]["status"] == "timed_out", steps
        assert not (where / f"mark-{computer}").exists()
        (pid,) = pids(where, computer)
        await process_gone(pid, f"{computer}'s nap step killed on the TS at the job's limit")
    assert agent_ended(fleet, "a-1") == ["timed_out"]


async def test_server_job_limit_ends_the_open_step_and_opens_no_other(fleet: Fleet, tmp_path):
    """A server job with timeout_s = 2 waiting at a client step that sleeps 30 s: at the job's
    limit the NS ends the step's instances timed_out (the agents' scripts are killed) and never
    opens the next step."""
    where = tmp_path / "work"
    where.mkdir()
    await fleet.server()
    for name in ("a-1", "a-2"):
        await fleet.agent(name)
    await fleet.wait_online(["a-1", "a-2"])
    await add_nap_and_mark(fleet, tmp_path, where, "run-script")
    await add(
        fleet, tmp_path, "task", "hello", task_doc("hello", "true", type="run-script-on-server")
    )
    steps = '[[steps]]\ntask = "hello"\n' + NAP_THEN_MARK
    await add(fleet, tmp_path, "job", "sj", job_doc("sj", "server-job", steps, 2))
    async with fleet.admin() as c:
        started = await c.call("run.start", task="sj", all=True)
        final = await wait_run(c, started["run_id"], 60)
    assert final["status"] == "failed", final
    by_step: dict[str, list[dict[str, Any]]] = {}
    for i in final["instances"]:
        by_step.setdefault(i["step"], []).append(i)
    assert set(by_step) == {"hello", "nap"}, by_step  # `mark` was never opened
    naps = by_step["nap"]
    assert len(naps) == 2, naps
    for i in naps:
        assert i["status"] == "timed_out" and i["reason"] == LIMIT_REACHED, i
    for name in ("a-1", "a-2"):
        assert not (where / f"mark-{name}").exists()
        (pid,) = await until(lambda n=name: _pids_soon(where, n), f"{name} started its nap")
        await process_gone(pid, f"{name}'s nap killed when the job's time was up")


async def _pids_soon(where: Path, computer: str) -> list[int]:
    return pids(where, computer)


async def test_stop_ends_a_task_server_step_inside_a_client_job(fleet: Fleet, tmp_path):
    """`stop` while a client job waits for its TS to run a step: the TS kills that step's script,
    the agent ends the job stopped and starts no later step, and nothing ran twice."""
    where = tmp_path / "work"
    where.mkdir()
    await fleet.server()
    await fleet.taskserver("ts-1")
    await fleet.agent("a-1")
    await fleet.wait_online(["a-1"])
    await add(
        fleet,
        tmp_path,
        "task",
        "nap",
        task_doc("nap", nap_script(where), type="run-script-on-taskserver", timeout_s=120),
    )
    await add(fleet, tmp_path, "task", "mark", task_doc("mark", mark_script(where)))
    steps = '[[steps]]\ntask = "nap"\non_failure = "continue"\n[[steps]]\ntask = "mark"\n'
    await add(fleet, tmp_path, "job", "cj", job_doc("cj", "client-job", steps))
    async with fleet.admin() as c:
        run_id = (await c.call("run.start", task="cj", computers=["a-1"]))["run_id"]
        (pid,) = await until(lambda: _pids_soon(where, "a-1"), "the TS running the nap step")

        async def nap_shown_running() -> bool:
            run = await c.call("run.show", run_id=run_id)
            return steps_of(run, "a-1").get("nap", {}).get("status") == "running"

        await until(nap_shown_running, "the NS showing the nap step running")
        await c.call("run.stop", run_id=run_id)
        final = await wait_run(c, run_id, 60)
        assert final["status"] == "stopped", final
        await process_gone(pid, "the task-server step's script killed by the stop")

        async def agent_stopped() -> bool:
            return agent_ended(fleet, "a-1") == ["stopped"]

        await until(agent_stopped, "the agent ending its job stopped")
        assert not (where / "mark-a-1").exists()  # the job ended: no later step can start now
        assert pids(where, "a-1") == [pid]  # the step ran once

        async def nap_output_kept() -> dict[str, Any] | None:
            nap = steps_of(await c.call("run.show", run_id=run_id), "a-1")["nap"]
            return nap if nap["output"] else None

        # The TS answered the agent `stopped` with what the script had printed; the agent
        # reported that, and the NS keeps the output of a stopped step.
        nap = await until(nap_output_kept, "the stopped nap step's output, through the agent")
    assert nap["status"] == "stopped" and nap["output"].strip() == "napping", nap
    job = jobs_of(final)["a-1"]
    assert job["status"] == "stopped", job
