"""Work authentication (``protocol.workauth``): what the NS vouches for, and the agent's check."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from protocol.workauth import (
    agent_work_key,
    check_mac,
    master_work_key,
    task_digest,
    work_mac,
)

TASK: dict[str, Any] = {
    "name": "hi",
    "type": "run-script",
    "kind": "client",
    "params": {"interpreter": "sh", "script": "echo hi", "env": {"B": "2", "A": "1"}},
    "timeout_s": 60.0,
}
TOKENS = {"COMPUTERNAME": "pc-1", "COMPUTERID": "3", "TASKSERVER": "ts-1", "RUNID": "5"}
IID = (1234 << 40) | 77


def _genuine() -> tuple[bytes, bytes]:
    key = agent_work_key(master_work_key(os.urandom(32)), "pc-1")
    return key, work_mac(key, IID, "pc-1", 5, task_digest(TASK), TOKENS)


def test_the_work_the_ns_sent_passes_after_a_relay_round_trip() -> None:
    """What the NS authenticated passes on the agent, even after the relay stored the task as
    JSON and sent it again (key order, integral floats)."""
    key, mac = _genuine()
    relayed = json.loads(json.dumps(TASK))
    reordered = dict(reversed(list(relayed.items())))
    assert check_mac(key, mac, IID, "pc-1", 5, reordered, dict(reversed(TOKENS.items()))) is None


@pytest.mark.parametrize(
    "change",
    [
        {"instance_id": IID + 1},
        {"computer": "pc-2"},
        {"run_id": 6},
        {"task": {**TASK, "params": {**TASK["params"], "script": "rm -rf /"}}},
        {"task": {**TASK, "timeout_s": 61.0}},
        {"tokens": {**TOKENS, "COMPUTERNAME": "pc-2"}},
        {"tokens": {**TOKENS, "EXTRA": "1"}},
    ],
)
def test_any_change_to_the_work_is_refused(change: dict[str, Any]) -> None:
    """Attack: a relay changes the instance, computer, run, task or tokens of genuine work and
    keeps its MAC. Must hold: the check fails with a reason."""
    key, mac = _genuine()
    fields: dict[str, Any] = {
        "instance_id": IID,
        "computer": "pc-1",
        "run_id": 5,
        "task": TASK,
        "tokens": TOKENS,
        **change,
    }
    why = check_mac(key, mac, **fields)
    assert why is not None and "altered or invented" in why


def test_missing_malformed_or_foreign_macs_are_refused_without_raising() -> None:
    """Attack: no MAC, a short one, another agent's, and a task no canonical form accepts (keys
    that are not strings). Must hold: each is refused with a reason; nothing raises."""
    key, mac = _genuine()
    other = agent_work_key(master_work_key(os.urandom(32)), "pc-1")
    assert check_mac(key, b"", IID, "pc-1", 5, TASK, TOKENS) == (
        "it carries no authentication from the NS"
    )
    assert check_mac(key, mac[:5], IID, "pc-1", 5, TASK, TOKENS) is not None
    assert check_mac(other, mac, IID, "pc-1", 5, TASK, TOKENS) is not None
    hostile: dict[Any, Any] = {1: "x", "a": "y"}
    assert check_mac(key, mac, IID, "pc-1", 5, hostile, TOKENS) is not None


def test_each_agent_has_its_own_key() -> None:
    """Two computers of one NS never share a key; the same NS key derives the same one again."""
    master = master_work_key(b"s" * 32)
    assert agent_work_key(master, "pc-1") != agent_work_key(master, "pc-2")
    assert agent_work_key(master, "pc-1") == agent_work_key(master_work_key(b"s" * 32), "pc-1")
