"""The agent's store writes each operation as one transaction (one call to its database thread):
what it keeps survives a restart whole, and a write that fails keeps none of its statements."""

from __future__ import annotations

import sqlite3

import pytest

from agent.store import AgentStore, NotStored
from protocol.messages import Report
from protocol.states import InstanceState


def _rows(path: str, sql: str) -> list[tuple[object, ...]]:
    """What the file holds, read by a connection of its own (as a restarted agent would)."""
    with sqlite3.connect(path) as db:
        return list(db.execute(sql))


async def test_an_instances_writes_are_on_disk_once_each_call_returns(tmp_path):
    """received, then the result, then its acknowledgement: each is committed when its call
    returns (a crash after ``finish`` still has the result to send)."""
    path = str(tmp_path / "agent.db")
    store = await AgentStore.open(str(tmp_path))
    try:
        await store.mark(5, InstanceState.RECEIVED)
        assert _rows(path, "SELECT instance_id, state FROM seen") == [(5, "received")]
        await store.finish(Report(instance_id=5, state=InstanceState.SUCCEEDED, output="hi"))
        assert _rows(path, "SELECT instance_id, state FROM seen") == [(5, "succeeded")]
        assert _rows(path, "SELECT instance_id, step FROM outbox") == [(5, "")]
        await store.delivered([(5, "")])
        assert _rows(path, "SELECT * FROM outbox") == []
    finally:
        await store.close()
    again = await AgentStore.open(str(tmp_path))
    try:
        assert again.seen == {5: "succeeded"} and again.outbox == {}
    finally:
        await again.close()


async def test_a_result_that_cannot_be_stored_leaves_none_of_its_writes(tmp_path):
    """The outbox refuses the row (a trigger stands in for the failing write): the result's
    other statement (its ``seen`` state) must not reach the disk with the next commit either."""
    path = str(tmp_path / "agent.db")
    store = await AgentStore.open(str(tmp_path))
    try:
        await store.mark(7, InstanceState.RECEIVED)
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN NEW.instance_id = 7"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        with pytest.raises(sqlite3.Error):
            await store.finish(Report(instance_id=7, state=InstanceState.SUCCEEDED))
        await store.mark(8, InstanceState.RECEIVED)  # a later write commits
        assert sorted(_rows(path, "SELECT instance_id, state FROM seen")) == [
            (7, "received"),
            (8, "received"),
        ]
        assert _rows(path, "SELECT * FROM outbox") == []
    finally:
        await store.close()


async def test_work_that_cannot_be_stored_is_not_seen(tmp_path):
    """``mark`` fails whole: NotStored, and the instance is not remembered, in memory or on
    disk (a re-sent execute must then run it)."""
    path = str(tmp_path / "agent.db")
    store = await AgentStore.open(str(tmp_path))
    try:
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON seen WHEN NEW.instance_id = 9"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        with pytest.raises(NotStored):
            await store.mark(9, InstanceState.RECEIVED)
        assert 9 not in store.seen
        await store.mark(10, InstanceState.RECEIVED)
        assert _rows(path, "SELECT instance_id FROM seen") == [(10,)]
    finally:
        await store.close()


async def test_a_job_step_result_and_the_jobs_state_are_stored_together(tmp_path):
    path = str(tmp_path / "agent.db")
    store = await AgentStore.open(str(tmp_path))
    try:
        await store.start_job(3, {"instance_id": 3}, {"at": "s1"}, 1e10)
        assert _rows(path, "SELECT instance_id, state FROM seen") == [(3, "running")]
        await store.finish(Report(instance_id=3, state="succeeded", step="s1"), {"at": "s2"})
        assert _rows(path, "SELECT snapshot FROM jobs") == [('{"at": "s2"}',)]
        assert _rows(path, "SELECT instance_id, step FROM outbox") == [(3, "s1")]
        await store.finish(Report(instance_id=3, state=InstanceState.SUCCEEDED))
        assert _rows(path, "SELECT * FROM jobs") == []
        assert sorted(_rows(path, "SELECT instance_id, step FROM outbox")) == [(3, ""), (3, "s1")]
        await store.delivered([(3, "s1"), (3, "")])
        assert _rows(path, "SELECT * FROM outbox") == []
    finally:
        await store.close()
