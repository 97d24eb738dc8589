"""``drive`` with the job's own time limit, and a stopped step, over real scripts.

The steps run as real processes (``ScriptRun``), given the time ``JobClock.step_limit`` allows
them, exactly as the agent and the relay give it; the tests look at what ran and how the job
ended.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from protocol.jobs import JobMachine, JobState, RunStep, compile_job
from protocol.states import InstanceState
from protocol.tasks import CATALOG, validate_params
from runtime.jobrunner import JobClock, drive, ended_state
from runtime.runner import Outcome, ScriptRun
from tests.helpers import until


def script_task(name: str, script: str, timeout_s: int = 60) -> tuple[str, dict[str, Any]]:
    problems: list[Any] = []
    params = validate_params(CATALOG["run-script"], {"script": script}, problems)
    assert not problems, problems
    return "task", {
        "name": name,
        "type": "run-script",
        "kind": "client",
        "timeout_s": timeout_s,
        "params": params,
    }


def program(where: Path, *, continue_after_nap: bool = True) -> list[dict[str, Any]]:
    """``nap`` (sleeps 30 s, its own limit 60 s), then ``mark`` (creates ``where/mark``)."""
    catalog = {
        "nap": script_task("nap", "echo napping\nsleep 30"),
        "mark": script_task("mark", f"touch {where}/mark"),
    }
    nap: dict[str, Any] = {"task": "nap"}
    if continue_after_nap:
        nap["on_failure"] = "continue"
    job = {"name": "j", "type": "client-job", "steps": [nap, {"task": "mark"}]}
    return list(compile_job(job, catalog.get)["program"])


class Steps:
    """Runs each step as a real script within what the clock allows; records what ran."""

    def __init__(self, clock: JobClock | None):
        self.clock = clock
        self.ran: list[str] = []
        self.ended: list[tuple[str, Outcome]] = []
        self.scripts: dict[str, ScriptRun] = {}

    async def run_step(self, step: RunStep) -> Outcome:
        self.ran.append(step.step)
        limit = self.clock.step_limit(step) if self.clock else float(step.task["timeout_s"])
        script = ScriptRun(step.task["params"], {}, limit)
        self.scripts[step.step] = script
        return await script.run()

    async def step_ended(self, step: RunStep, outcome: Outcome, snapshot: dict[str, Any]) -> None:
        self.ended.append((step.step, outcome))


async def test_the_jobs_limit_cuts_the_running_step_and_no_step_starts_after(tmp_path):
    """Job limit 1 s, first step 30 s (marked `continue`): the step is killed at the job's limit,
    the job ends timed_out naming its limit and that step, and `mark` never starts."""
    machine = JobMachine(program(tmp_path))
    clock = JobClock(time.time() + 1, 1)
    steps = Steps(clock)
    ended = await asyncio.wait_for(
        drive(machine, steps.run_step, steps.step_ended, clock=clock), 30
    )
    assert ended.state is JobState.TIMED_OUT
    assert ended.reason == "the job's time limit of 1 s was reached during step 'nap'"
    assert ended_state(ended) is InstanceState.TIMED_OUT
    assert steps.ran == ["nap"] and not (tmp_path / "mark").exists()
    ((name, outcome),) = steps.ended
    assert name == "nap" and outcome.state is InstanceState.TIMED_OUT
    assert outcome.reason.startswith(ended.reason + " (killed after the time limit of")
    assert outcome.output.strip() == "napping"  # killed as for a step's own limit: output kept
    assert machine.snapshot()["state"] == "timed_out"
    assert machine.results["nap"]["status"] == "timed_out"


async def test_a_job_whose_time_is_up_starts_no_step(tmp_path):
    """Resumed (or reached) after its time was up, a waiting job ends timed_out at once."""
    machine = JobMachine(program(tmp_path))
    clock = JobClock(time.time() - 1, 5)
    steps = Steps(clock)
    ended = await drive(machine, steps.run_step, steps.step_ended, clock=clock)
    assert ended.state is JobState.TIMED_OUT
    assert ended.reason == "the job's time limit of 5 s was reached before step 'nap' could start"
    assert steps.ran == []


async def test_without_a_clock_a_step_keeps_its_own_limit(tmp_path):
    """Control: the step's own limit (here 1 s) still applies, and a timed-out step marked
    `continue` lets the job go on to its next step, which runs."""
    catalog_program = program(tmp_path)
    catalog_program[0]["task"]["timeout_s"] = 1
    machine = JobMachine(catalog_program)
    steps = Steps(None)
    ended = await asyncio.wait_for(drive(machine, steps.run_step, steps.step_ended), 30)
    assert ended.state is JobState.SUCCEEDED
    assert steps.ran == ["nap", "mark"] and (tmp_path / "mark").exists()


async def test_a_stopped_step_stops_the_job(tmp_path):
    """A step that ends `stopped` (a stop, here or on the relay that ran it) ends the job stopped,
    even when the step is marked `continue`: no later step starts."""
    machine = JobMachine(program(tmp_path))
    steps = Steps(JobClock(time.time() + 60, 60))
    job = asyncio.ensure_future(drive(machine, steps.run_step, steps.step_ended))

    async def napping() -> bool:
        return "nap" in steps.scripts

    await until(napping, "the nap step started", timeout_s=10)
    steps.scripts["nap"].stop()
    ended = await asyncio.wait_for(job, 30)
    assert ended.state is JobState.STOPPED and ended_state(ended) is InstanceState.STOPPED
    assert steps.ran == ["nap"] and not (tmp_path / "mark").exists()
    assert steps.ended[0][1].state is InstanceState.STOPPED
