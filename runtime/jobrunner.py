"""Drives a client job's state machine: shared by agents and by task servers (for devices).

The machine (``protocol.jobs.JobMachine``) decides; this loop only carries out its actions:
run a step, hand the result back, store the new state with the step's result.

The job's own time limit (its ``timeout_s``, counted from the run's start) is kept here, the same
way wherever a job runs (``JobClock``): each step gets its own limit or what is left of the job's,
whichever is shorter, so a step still running when the job's time is up is killed as for its own
time limit; a step the job's limit cut short ends the job ``timed_out``, and no step starts once
the job's time is up. The NS's deadline for the instance is the same instant (the run's), and its
sweep waits a grace past it, so the job's own result normally arrives first.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from protocol.jobs import JobEnded, JobEvent, JobMachine, JobState, RunStep, time_limit_reason
from protocol.states import InstanceState
from runtime.runner import Outcome

DEFAULT_STEP_LIMIT_S = 300.0
"""A step's limit when its task names none (compiled tasks always do)."""


@dataclass(frozen=True)
class JobClock:
    """The job's own time limit as this process counts it: ``deadline`` is when the job's time is
    up on this machine's clock (from the run's "seconds left", never a timestamp from elsewhere),
    ``limit_s`` the job's ``timeout_s``, named in the reason when it is reached."""

    deadline: float
    limit_s: float

    def left(self) -> float:
        """Seconds until the job's time is up (0 or less: it is up)."""
        return self.deadline - time.time()

    def step_limit(self, step: RunStep) -> float:
        """The time ``step`` may take: its own limit or what is left of the job's, if shorter."""
        return max(0.0, min(own_limit(step), self.left()))


def own_limit(step: RunStep) -> float:
    """A step's own time limit (its ``timeout_s``, else its task's)."""
    return float(step.task.get("timeout_s") or DEFAULT_STEP_LIMIT_S)


def job_limit_s(task: dict[str, Any]) -> float:
    """The time limit of the client job ``task`` (a run's definition, or a server job's step)."""
    return float(task.get("timeout_s") or task.get("job", {}).get("timeout_s") or 0)


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


def ended_state(ended: JobEnded) -> InstanceState:
    """The state a job's instance ends in, from how the job ended."""
    return {
        JobState.SUCCEEDED: InstanceState.SUCCEEDED,
        JobState.STOPPED: InstanceState.STOPPED,
        JobState.TIMED_OUT: InstanceState.TIMED_OUT,
    }.get(ended.state, InstanceState.FAILED)


async def drive(
    machine: JobMachine,
    run_step: Callable[[RunStep], Awaitable[Outcome]],
    step_ended: Callable[[RunStep, Outcome, dict[str, Any]], Awaitable[None]],
    started: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    clock: JobClock | None = None,
) -> JobEnded:
    """Run ``machine`` to its end. ``step_ended(step, outcome, snapshot)`` must store both;
    ``started(snapshot)`` stores the state entered at START, before the first step runs.

    With a ``clock`` the job's own limit holds: ``run_step`` must give a step no more than
    ``clock.step_limit(step)``; a step that limit cut short (or that ended badly after the time
    was up) ends the job ``timed_out``, and once the time is up no further step starts. A step
    that ended ``stopped`` stops the job."""
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
        if clock is not None and clock.left() <= 0:
            reason = time_limit_reason(clock.limit_s, action.step, started=False)
            ended = machine.handle(JobEvent.TIME_UP, {"reason": reason})[0]
            assert isinstance(ended, JobEnded)
            return ended
        job_bound = clock is not None and clock.left() < own_limit(action)
        outcome = await run_step(action)
        if outcome.state is InstanceState.STOPPED:
            # Only a stop ends a step ``stopped`` (here, or on the relay that ran it for us):
            # the job stops with it, and no later step starts.
            actions = machine.handle(JobEvent.STOP)
        elif clock is not None and _cut_short(outcome, job_bound, clock):
            reason = time_limit_reason(clock.limit_s, action.step)
            if outcome.state is InstanceState.TIMED_OUT:
                outcome = dataclasses.replace(outcome, reason=f"{reason} ({outcome.reason})")
            actions = machine.handle(
                JobEvent.TIME_UP, {"reason": reason, "result": result_of(outcome)}
            )
        else:
            actions = machine.handle(JobEvent.STEP_ENDED, result_of(outcome))
        await step_ended(action, outcome, machine.snapshot())


def _cut_short(outcome: Outcome, job_bound: bool, clock: JobClock) -> bool:
    """Whether the job's own limit, not the step, ended this step: it timed out on a limit that
    was the job's, or it did not succeed and the job's time is up anyway."""
    if outcome.state is InstanceState.SUCCEEDED:
        return False
    return (job_bound and outcome.state is InstanceState.TIMED_OUT) or clock.left() <= 0
