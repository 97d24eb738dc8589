"""Outbox rows and a relay's held work: what a stored record turns back into."""

from __future__ import annotations

import json
import sqlite3
import time

import structlog

from protocol.messages import Report
from protocol.states import InstanceState
from runtime.db import SEEN_KEEP_S, report_from_row, report_to_row
from taskserver.relay import Relay
from taskserver.store import _MIGRATIONS, Held, RelayStore
from tests.helpers import until


def test_a_stored_report_comes_back_field_for_field():
    report = Report(
        instance_id=7,
        state=InstanceState.FAILED,
        step="s2",
        return_code=3,
        output="é\x00 out",
        reason="exit 3",
        started_at=1.5,
        ended_at=2.25,
        computer="pc-1",
    )
    row = report_to_row(report)
    assert isinstance(row, bytes)
    assert report_from_row(row) == report


def test_an_outbox_row_written_as_json_by_an_earlier_build_still_reads():
    row = json.dumps({"instance_id": 9, "state": "succeeded", "return_code": 0, "gone": 1})
    back = report_from_row(row)
    assert (back.instance_id, back.state, back.return_code) == (9, "succeeded", 0)


async def test_a_relay_keeps_held_work_and_its_tokens_across_a_restart(tmp_path):
    """A TS's held work comes back from its SQLite file as it went in, tokens included, also a
    row whose tokens an earlier build wrote as JSON."""
    path = str(tmp_path / "relay.db")
    tokens = {"COMPUTERNAME": "pc-1", "RUNID": "4", "MACADDRESS": ""}
    task = {"type": "noop", "params": {}}
    store = await RelayStore.open(path)
    try:
        fresh = await store.hold(
            [Held(1, 4, "pc-1", task, tokens, 1e10), Held(2, 4, "pc-2", task, {}, 1e10)]
        )
        assert [h.instance_id for h in fresh] == [1, 2]
        assert await store.hold([Held(1, 4, "pc-1", task, tokens, 1e10)]) == []  # seen before
        await store.db.execute(
            "INSERT INTO held(instance_id, run_id, computer, task, tokens, deadline)"
            " VALUES (3, 4, 'pc-3', ?, ?, 1e10)",
            (json.dumps(task), json.dumps({"COMPUTERNAME": "pc-3"})),
        )
        await store.db.commit()
    finally:
        await store.close()
    store = await RelayStore.open(path)
    try:
        held, _ = await store.load()
    finally:
        await store.close()
    by_id = {h.instance_id: h for h in held}
    assert by_id[1].tokens == tokens and by_id[1].task == task
    assert by_id[2].tokens == {}
    assert by_id[3].tokens == {"COMPUTERNAME": "pc-3"} and by_id[3].computer == "pc-3"


async def test_a_relay_database_of_schema_2_is_migrated_keeping_its_held_work(tmp_path):
    """A TS file written at schema 2 opens at the current schema: the held work is still there,
    and the by-computer index that nothing read (migration 3) is gone."""
    path = tmp_path / "relay.db"
    db = sqlite3.connect(path)
    db.executescript("".join(_MIGRATIONS[:2]) + "\nPRAGMA user_version=2;")
    db.execute(
        "INSERT INTO held(instance_id, run_id, computer, task, tokens, deadline)"
        " VALUES (9, 4, 'pc-9', '{}', '{}', 1e10)"
    )
    db.commit()
    db.close()
    store = await RelayStore.open(str(path))
    try:
        held, _ = await store.load()
        (version,) = await (await store.db.execute("PRAGMA user_version")).fetchone()
        indexes = await store.db.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='held'"
        )
    finally:
        await store.close()
    assert [(h.instance_id, h.computer, h.mac) for h in held] == [(9, "pc-9", b"")]
    assert version == len(_MIGRATIONS) == 4  # 4: held work keeps the NS's MAC (none before)
    assert [r[0] for r in indexes] == []


async def test_a_relay_forgets_a_delivered_batch_in_one_call(tmp_path):
    """Once the NS stored a batch, its outbox rows (results the relay made) and the held work of
    the agents' results it carried go; other held work stays."""
    store = await RelayStore.open(str(tmp_path / "relay.db"))
    try:
        task: dict[str, object] = {"type": "noop"}
        await store.hold([Held(i, 4, f"pc-{i}", task, {}, 1e10) for i in (1, 2, 3)])
        (seq,) = await store.finish([Report(instance_id=1, state="timed_out", computer="pc-1")])
        held, outbox = await store.load()
        assert sorted(h.instance_id for h in held) == [2, 3] and [s for s, _ in outbox] == [seq]
        await store.delivered([seq], [2])
        held, outbox = await store.load()
        assert [h.instance_id for h in held] == [3] and outbox == []
    finally:
        await store.close()


async def test_a_relay_forgets_instances_taken_long_ago_unless_still_held(tmp_path):
    """``seen`` no longer grows for ever: rows taken before the cut-off go, except for work the
    relay still holds; a dispatch of a forgotten instance is fresh again, of a kept one a repeat.
    With every row stale, all but the held go."""
    store = await RelayStore.open(str(tmp_path / "relay.db"))
    try:
        task: dict[str, object] = {"type": "noop"}
        await store.hold([Held(i, 4, f"pc-{i}", task, {}, 1e10) for i in range(1, 6)])
        await store.db.execute("UPDATE seen SET at=100 WHERE instance_id <= 3")
        await store.db.commit()
        await store.drop([1, 3, 4, 5])  # 2 is still held
        assert await store.forget_seen(1000.0) == 2
        async with store.db.execute("SELECT instance_id FROM seen ORDER BY instance_id") as cur:
            assert [r[0] for r in await cur.fetchall()] == [2, 4, 5]
        fresh = await store.hold(
            [Held(1, 4, "pc-1", task, {}, 1e10), Held(4, 4, "pc-4", task, {}, 1e10)]
        )
        assert [h.instance_id for h in fresh] == [1]
        await store.db.execute("UPDATE seen SET at=100")
        await store.db.commit()
        assert await store.forget_seen(1000.0) == 2  # 4 and 5: 1 (taken again) and 2 are held
        async with store.db.execute("SELECT instance_id FROM seen ORDER BY instance_id") as cur:
            assert [r[0] for r in await cur.fetchall()] == [1, 2]
    finally:
        await store.close()


async def test_a_relay_forgets_stale_instances_as_it_starts(tmp_path):
    """The relay's sweep forgets instances taken more than SEEN_KEEP_S ago when it starts (and
    hourly after): a task server restarted with an old ``seen`` table sheds it."""
    store = await RelayStore.open(str(tmp_path / "relay.db"))
    relay = Relay("ts-x", store, log=structlog.get_logger())
    try:
        task: dict[str, object] = {"type": "noop"}
        await store.hold([Held(i, 4, f"pc-{i}", task, {}, 1e10) for i in (1, 2)])
        await store.drop([1, 2])
        old = time.time() - SEEN_KEEP_S - 60
        await store.db.execute("UPDATE seen SET at=? WHERE instance_id=1", (old,))
        await store.db.commit()
        await relay.start()

        async def forgotten() -> bool:
            async with store.db.execute("SELECT instance_id FROM seen") as cur:
                return [r[0] for r in await cur.fetchall()] == [2]

        await until(forgotten, "instance 1 forgotten, 2 kept", 10)
    finally:
        await relay.stop()
        await store.close()
