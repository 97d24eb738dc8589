"""What the NS keeps in memory about a run in flight: its steps, and per step and route, what
is still out. A step's barrier is an asyncio gather over its routes' ``done`` events. A server
job's own time limit is its ``ActiveRun.deadline``; a step it would open too late is refused
with ``JobTimeUp``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RouteCount:
    """Unfinished instances of one step on one route (a TS, the built-in service, or the NS)."""

    remaining: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Stage:
    """One step of a run in progress: its deadline and, per route, what is still out."""

    deadline: float
    routes: dict[str, RouteCount] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        return sum(r.remaining for r in self.routes.values())

    def count(self, route: str | None) -> None:
        rc = self.routes.get(route or "")
        if rc is not None and rc.remaining > 0:
            rc.remaining -= 1
            if rc.remaining == 0:
                rc.done.set()

    async def barrier(self) -> None:
        """Wait until every route's instances ended: an asyncio gather across connections.

        Checked again after each wake: work that moved to another route adds a route to wait on.
        """
        while pending := [rc for rc in self.routes.values() if not rc.done.is_set()]:
            await asyncio.gather(*(rc.done.wait() for rc in pending))


class JobTimeUp(Exception):
    """A server job's own time limit was reached before its next step opened: raised by
    ``Runs.open_step`` so that the step is neither stored nor dispatched; ``machine`` is the job's
    state, waiting at that step, with the results of the steps before it."""

    def __init__(self, step: str, machine: dict[str, Any]):
        super().__init__(f"the job's time is up before step {step!r}")
        self.step = step
        self.machine = machine


@dataclass
class ActiveRun:
    """What the NS keeps in memory about a run that has not ended."""

    kind: str
    task_type: str = ""
    stages: dict[str, Stage] = field(default_factory=dict)
    runner: asyncio.Task[None] | None = None
    deadline: float = float("inf")
    """For server jobs: when the job's own time limit is reached, over all its steps (the sweep
    then ends it: ``Runs.job_time_up``)."""


def new_stage(deadline: float, routes: list[str | None]) -> Stage:
    """A step's counts: one per instance still to end, by route (``None``: the NS itself)."""
    stage = Stage(deadline)
    for route in routes:
        key = route or ""
        rc = stage.routes.setdefault(key, RouteCount(0))
        rc.remaining += 1
    return stage
