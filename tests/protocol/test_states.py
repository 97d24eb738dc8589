"""Instance state moves and run outcomes."""

from __future__ import annotations

import pytest

from protocol.states import TERMINAL, InstanceState, RunState, is_terminal, may_move, run_outcome

S = InstanceState
PROGRESS = [S.PENDING, S.RECEIVED, S.RUNNING]


def test_terminal_set() -> None:
    """Exactly succeeded, failed, timed_out and stopped are terminal."""
    assert TERMINAL == {S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.STOPPED}
    assert is_terminal("timed_out")
    assert not is_terminal("running")
    assert not is_terminal("nonsense")


@pytest.mark.parametrize("current", sorted(TERMINAL))
@pytest.mark.parametrize("new", list(S))
def test_terminal_state_is_final(current: InstanceState, new: InstanceState) -> None:
    """Nothing replaces a terminal state, not even the same or another terminal state."""
    assert may_move(current, new) is False


@pytest.mark.parametrize("current", PROGRESS)
@pytest.mark.parametrize("new", sorted(TERMINAL))
def test_any_progress_state_may_end(current: InstanceState, new: InstanceState) -> None:
    """From pending, received or running an instance may move to any terminal state."""
    assert may_move(current, new) is True


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        (S.PENDING, S.RECEIVED, True),
        (S.PENDING, S.RUNNING, True),
        (S.RECEIVED, S.RUNNING, True),
        (S.RUNNING, S.RECEIVED, False),
        (S.RUNNING, S.PENDING, False),
        (S.RECEIVED, S.PENDING, False),
        (S.PENDING, S.PENDING, False),
        (S.RUNNING, S.RUNNING, False),
    ],
)
def test_progress_only_moves_forward(current: str, new: str, expected: bool) -> None:
    """A late received does not undo running; a repeated state is not a move."""
    assert may_move(current, new) is expected


def test_plain_strings_are_accepted() -> None:
    """may_move works on wire strings, not only enum members."""
    assert may_move("received", "running") is True
    assert may_move("succeeded", "running") is False


def test_unknown_states_never_move() -> None:
    """An unknown state on either side is not a legal move."""
    assert may_move("running", "exploded") is False
    assert may_move("exploded", "running") is False


def test_run_outcome_all_succeeded() -> None:
    """A run whose instances all succeeded succeeded."""
    assert run_outcome(["succeeded", "succeeded"]) is RunState.SUCCEEDED


@pytest.mark.parametrize("other", ["failed", "timed_out", "stopped"])
def test_run_outcome_any_other_end_fails(other: str) -> None:
    """One failed, timed-out or stopped instance makes the run failed."""
    assert run_outcome(["succeeded", other, "succeeded"]) is RunState.FAILED


def test_run_outcome_stopped_wins() -> None:
    """A run stopped by an operator is stopped, whatever its instances did."""
    assert run_outcome(["succeeded"], stopped=True) is RunState.STOPPED
    assert run_outcome(["failed"], stopped=True) is RunState.STOPPED


def test_run_outcome_of_no_instances_succeeds() -> None:
    """A run with no instances has nothing that failed, so it succeeded."""
    assert run_outcome([]) is RunState.SUCCEEDED
