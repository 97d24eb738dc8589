"""Instance and run states, and the one rule for how an instance may move between them.

An instance is born ``pending``. It may go to ``received`` then ``running``, and ends in
exactly one terminal state. A terminal state never changes again: a late or repeated
report is ignored, which is what makes roll-up idempotent.
"""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    """Where one instance (one target of one run) stands."""

    PENDING = "pending"
    RECEIVED = "received"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"


TERMINAL = frozenset(
    {InstanceState.SUCCEEDED, InstanceState.FAILED, InstanceState.TIMED_OUT, InstanceState.STOPPED}
)
_ORDER = {InstanceState.PENDING: 0, InstanceState.RECEIVED: 1, InstanceState.RUNNING: 2}


def is_terminal(state: str) -> bool:
    """True for the four end states."""
    return state in TERMINAL


def may_move(current: str, new: str) -> bool:
    """Whether a report of ``new`` may replace ``current``.

    Terminal states are final; progress only moves forward (a late ``received`` does
    not undo ``running``).
    """
    if current in TERMINAL:
        return False
    if new in TERMINAL:
        return True
    try:
        return _ORDER[InstanceState(new)] > _ORDER[InstanceState(current)]
    except (KeyError, ValueError):
        return False


class RunState(StrEnum):
    """Where a whole run stands. A run ends when all its instances are terminal."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


def run_outcome(instance_states: list[str], stopped: bool = False) -> RunState:
    """The run's end state from its instances' end states."""
    if stopped:
        return RunState.STOPPED
    if all(s == InstanceState.SUCCEEDED for s in instance_states):
        return RunState.SUCCEEDED
    return RunState.FAILED
