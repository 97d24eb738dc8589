"""Drives a client job's state machine: shared by agents and by task servers (for devices).

The machine (``protocol.jobs.JobMachine``) decides; this loop only carries out its actions:
run a step, hand the result back, store the new state with the step's result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from protocol.jobs import JobEnded, JobEvent, JobMachine, JobState, RunStep
from runtime.runner import Outcome


def result_of(outcome: Outcome) -> dict[str, Any]:
    """A step's result as the machine and conditions see it."""
    return {
        "status": str(outcome.state),
        "return_code": outcome.return_code,
        "output": outcome.output,
        "reason": outcome.reason,
        "started_at": outcome.started_at,
        "ended_at": outcome.ended_at,
    }


async def drive(
    machine: JobMachine,
    run_step: Callable[[RunStep], Awaitable[Outcome]],
    step_ended: Callable[[RunStep, Outcome, dict[str, Any]], Awaitable[None]],
    started: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> JobEnded:
    """Run ``machine`` to its end. ``step_ended(step, outcome, snapshot)`` must store both;
    ``started(snapshot)`` stores the state entered at START, before the first step runs."""
    if machine.state is JobState.READY:
        actions = machine.handle(JobEvent.START)
        if started is not None:
            await started(machine.snapshot())
    elif machine.state is JobState.WAITING:
        current = machine.current
        assert current is not None
        actions = [current]
    else:
        return JobEnded(machine.state, machine.reason)
    while True:
        action = actions[0]
        if isinstance(action, JobEnded):
            return action
        outcome = await run_step(action)
        actions = machine.handle(JobEvent.STEP_ENDED, result_of(outcome))
        await step_ended(action, outcome, machine.snapshot())
