"""The NS store: schema version, forward migrations, idempotent roll-up."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest

from protocol.messages import Report
from server.store import _MIGRATIONS, NewInstance, Store


async def test_new_database_gets_the_schema_version_and_wal(tmp_path):
    """A new data folder gets a SQLite file in WAL mode at the current schema version."""
    store = await Store.open(str(tmp_path / "server.db"))
    await store.close()
    db = sqlite3.connect(tmp_path / "server.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


async def test_a_version_1_database_is_migrated_forward_keeping_its_runs(tmp_path):
    """A file at schema 1 is migrated to the current schema at open; its runs and results stay."""
    db = sqlite3.connect(tmp_path / "server.db")
    db.executescript(_MIGRATIONS[0] + "\nPRAGMA user_version=1;")
    db.execute(
        "INSERT INTO runs(id, task_name, kind, definition, status, created_at, deadline)"
        " VALUES (7, 't', 'client', '{\"name\": \"t\"}', 'succeeded', 1.0, 2.0)"
    )
    db.execute(
        "INSERT INTO instances(run_id, computer, status, output, updated_at) VALUES (7, 'pc', 'succeeded', 'hi', 1.0)"
    )
    db.commit()
    db.close()
    store = await Store.open(str(tmp_path / "server.db"))
    try:
        (inst,) = await store.instances(7)
        assert (inst["status"], inst["output"], inst["step"], inst["parent_id"]) == (
            "succeeded",
            "hi",
            "",
            None,
        )
        assert [s["step"] for s in await store.steps(7)] == [""]
    finally:
        await store.close()


async def test_a_database_from_a_newer_taskfleet_is_refused(tmp_path):
    """A file whose schema is newer than this code is refused with a message, not damaged."""
    db = sqlite3.connect(tmp_path / "server.db")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this taskfleet"):
        await Store.open(str(tmp_path / "server.db"))


def run_step(step: str) -> dict:
    """A client job program's instruction that runs ``step`` (as ``protocol.jobs`` compiles it)."""
    return {"op": "run", "step": step, "task": {"name": step}, "kind": "client"}


async def one_instance(store: Store) -> tuple[int, int]:
    """A client task's run on one computer: (run id, instance id)."""
    run_id = await store.create_run(
        {"name": "t", "kind": "client"}, [NewInstance(1, "pc", "@ns")], deadline=2e9
    )
    (inst,) = await store.instances(run_id)
    return run_id, int(inst["id"])


async def test_repeated_and_late_reports_change_nothing(store_target):
    """A terminal result is final: a repeat, a late progress report and a second result are ignored."""
    store = await Store.open(store_target)
    try:
        run_id, iid = await one_instance(store)
        first = await store.apply_reports(
            [
                Report(instance_id=iid, state="running"),
                Report(instance_id=iid, state="succeeded", return_code=0, output="a"),
            ]
        )
        assert [c.state for c in first] == ["running", "succeeded"]
        again = await store.apply_reports(
            [
                Report(instance_id=iid, state="succeeded", return_code=0, output="a"),
                Report(instance_id=iid, state="running"),
                Report(instance_id=iid, state="failed", return_code=1, output="b"),
            ]
        )
        assert again == []
        (inst,) = await store.instances(run_id)
        assert (inst["status"], inst["output"], inst["return_code"]) == ("succeeded", "a", 0)
    finally:
        await store.close()


async def test_a_result_is_final_within_one_batch_too(store_target):
    """Reports for one instance in one roll-up apply in order: once a result is in, a later
    progress report or a second result in the same batch changes nothing."""
    store = await Store.open(store_target)
    try:
        run_id, iid = await one_instance(store)
        changes = await store.apply_reports(
            [
                Report(instance_id=iid, state="received"),
                Report(instance_id=iid, state="failed", return_code=2, output="first"),
                Report(instance_id=iid, state="running"),
                Report(instance_id=iid, state="succeeded", return_code=0, output="second"),
            ]
        )
        assert [c.state for c in changes] == ["received", "failed"]
        (inst,) = await store.instances(run_id)
        assert (inst["status"], inst["output"], inst["return_code"]) == ("failed", "first", 2)
    finally:
        await store.close()


async def test_undispatched_pages_in_id_order_and_skips_what_is_taken_or_ended(store_target):
    """A route's work is read a page at a time, oldest first: taken, ended and other routes'
    instances are left out, and the pages together hold every one exactly once."""
    store = await Store.open(store_target)
    try:
        computers = [NewInstance(i, f"pc-{i:02}", "ts-a" if i % 3 else "ts-b") for i in range(30)]
        first = await store.create_run({"name": "t", "kind": "client"}, computers, 2e9)
        second = await store.create_run({"name": "u", "kind": "client"}, computers[:6], 2e9)
        rows = {r["id"]: r for r in await store.instances(first) + await store.instances(second)}
        mine = sorted(i for i, r in rows.items() if r["route"] == "ts-a")
        taken, ended = mine[0], mine[5]
        await store.mark_dispatched([taken])
        await store.apply_reports([Report(instance_id=ended, state="failed")])
        expected = [i for i in mine if i not in (taken, ended)]
        pages: list[list[int]] = []
        after = 0
        while page := await store.undispatched("ts-a", after, 4):
            pages.append([r.id for r in page])
            after = page[-1].id
        assert [i for p in pages for i in p] == expected
        assert all(len(p) == 4 for p in pages[:-1])
        assert {r.run_id for r in await store.undispatched("ts-a")} == {first, second}
        assert [r.id for r in await store.undispatched("ts-a")] == expected
    finally:
        await store.close()


async def test_the_instance_queries_of_the_hot_path_and_of_reroute_use_an_index(tmp_path):
    """Reading a route's undispatched work and moving a computer's work both search an index
    (migration 9 replaced the index reroute used to scan), not the whole instances table."""
    store = await Store.open(str(tmp_path / "server.db"))
    await store.close()
    db = sqlite3.connect(tmp_path / "server.db")
    try:
        for sql, args, index in [
            (
                "SELECT id FROM instances WHERE route=? AND dispatched=0 AND id>? ORDER BY id",
                ("ts", 0),
                "instances_undispatched",
            ),
            (
                "SELECT id FROM instances WHERE computer_id=? AND route=? AND parent_id IS NULL",
                (1, "ts"),
                "instances_computer",
            ),
            ("SELECT id FROM instances WHERE run_id=?", (1,), "instances_run_step"),
        ]:
            plan = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert f"INDEX {index}" in plan, (sql, plan)
            assert "ORDER BY" not in plan, plan  # no sort: the index is already in id order
    finally:
        db.close()


async def test_a_report_for_another_computer_is_ignored(store_target):
    """A report naming a different computer than the instance's is not applied."""
    store = await Store.open(store_target)
    try:
        run_id = await store.create_run(
            {"name": "t", "kind": "client"}, [NewInstance(1, "pc", "ts")], 2e9
        )
        (inst,) = await store.instances(run_id)
        changed = await store.apply_reports(
            [Report(instance_id=inst["id"], state="failed", computer="other")]
        )
        assert changed == []
    finally:
        await store.close()


async def test_step_reports_of_a_nested_client_job_make_one_row_per_step(store_target):
    """Step reports under an instance that is itself a job step are stored as `outer/inner`,
    once, however often they arrive (progress, result, repeated result)."""
    store = await Store.open(store_target)
    try:
        run_id = await store.create_run(
            {"name": "j", "kind": "server-job"}, [], 2e9, first_step=False
        )
        inner = {"name": "inner", "type": "client-job", "job": {"program": [run_step("a")]}}
        await store.start_step(run_id, "sub", inner, 2e9, [NewInstance(1, "pc", "ts")], {})
        (parent,) = await store.instances(run_id)
        pid = parent["id"]
        for state in ("running", "succeeded", "succeeded"):
            await store.apply_reports([Report(instance_id=pid, step="a", state=state, output="x")])
        rows = [i for i in await store.instances(run_id) if i["parent_id"] == pid]
        assert [(r["step"], r["status"]) for r in rows] == [("sub/a", "succeeded")]
    finally:
        await store.close()


async def test_one_roll_up_makes_each_new_step_row_once_and_none_for_a_refused_report(store_target):
    """A batch that starts several steps of many client jobs at once: one row per step (its
    progress and result in the same batch move it twice), and none for a report naming another
    computer."""
    store = await Store.open(store_target)
    try:
        computers = [NewInstance(i, f"pc-{i}", "ts") for i in range(5)]
        job = {"program": [run_step("one"), run_step("two")]}
        run_id = await store.create_run(
            {"name": "c", "kind": "client", "type": "client-job", "job": job}, computers, 2e9
        )
        # From a relay: the ids as dispatched (row id and epoch, ``server.store.runs.wire_id``).
        ids = {r.computer: r.wire for r in await store.undispatched("ts")}
        batch = []
        for name, iid in ids.items():
            for step in ("one", "two"):
                batch.append(Report(instance_id=iid, step=step, state="running", computer=name))
                batch.append(Report(instance_id=iid, step=step, state="succeeded", computer=name))
        batch.append(Report(instance_id=ids["pc-0"], step="three", state="running", computer="x"))
        changes = await store.apply_reports(batch, route="ts")
        assert len(changes) == 20
        rows = [r for r in await store.instances(run_id) if r["parent_id"] is not None]
        assert sorted((r["computer"], r["step"], r["status"]) for r in rows) == sorted(
            (name, step, "succeeded") for name in ids for step in ("one", "two")
        )
        assert {c.instance_id for c in changes} == {r["id"] for r in rows}
    finally:
        await store.close()


async def test_an_enrolment_token_is_never_spent_more_often_than_it_allows(store_target):
    """Five enrolments racing for a one-use token: exactly one gets it, the others are told why."""
    import asyncio
    import time

    store = await Store.open(store_target)
    try:
        await store.add_enrol_token("h", 1, time.time() + 60, "admin")
        answers = await asyncio.gather(
            *(
                store.enrol_with_token("h", "agent", f"pc-{i}", bytes([i]) * 32, f"fp{i}", "x")
                for i in range(5)
            )
        )
        assert answers.count(None) == 1
        assert answers.count("the enrolment token is used up") == 4
        (row,) = await store.enrol_tokens()
        assert row["uses_left"] == 0
        winner = answers.index(None)
        assert (await store.key("agent", f"pc-{winner}"))["state"] == "accepted"
        assert await store.key("agent", f"pc-{(winner + 1) % 5}") is None
    finally:
        await store.close()


async def test_an_enrolment_cut_mid_way_still_stores_the_key_it_paid_for(store_target):
    """The use of a token and the key's acceptance are one commit: a handshake cancelled while
    enrolling (``server/auth.py`` shields the call the same way) leaves the key accepted, so the
    agent's retry spends nothing more."""
    import asyncio
    import time

    store = await Store.open(store_target)
    try:
        await store.add_enrol_token("h", 2, time.time() + 60, "admin")
        task = asyncio.ensure_future(
            asyncio.shield(store.enrol_with_token("h", "agent", "pc-1", b"k" * 32, "fp", "x"))
        )
        await asyncio.sleep(0)
        task.cancel()  # the handshake deadline, say
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # the shielded enrolment finishes on its own
        assert (await store.key("agent", "pc-1"))["state"] == "accepted"
        (row,) = await store.enrol_tokens()
        assert row["uses_left"] == 1
    finally:
        await store.close()


async def test_presence_updates_from_several_task_servers_at_once_all_apply(store_target):
    """Two TS reporting presence at the same moment run the same cached UPDATE one after the
    other in the database thread. A cursor freed by the event loop's thread used to reset that
    statement under the next caller ("bad parameter or other API misuse", seen under a
    10,000-agent burst); every statement now finishes in the database thread. Eight writers,
    3 s of back-to-back updates (the old code failed it four runs in five): none may
    fail, and the last word on each computer stands."""
    store = await Store.open(store_target)
    try:
        names = [f"pc-{i:04d}" for i in range(1_000)]
        for name in names:
            await store.register_agent(name, {})
        errors: list[BaseException] = []
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.0

        async def writer(k: int) -> int:
            n = 0
            while loop.time() < until:
                chunk = names[(k * 97 + n * 37) % 900 :][:50]
                try:
                    await store.set_online(chunk, True, None)
                except Exception as exc:  # the bug surfaced as sqlite3.InterfaceError
                    errors.append(exc)
                n += 1
            return n

        counts = await asyncio.gather(*(writer(k) for k in range(8)))
        assert not errors, errors[:3]
        assert sum(counts) > 100  # the writers really overlapped
        await store.set_online(names, False, None)
        rows = await store.computers(names[:3])
        assert [r["online"] for r in rows] == [0, 0, 0]
    finally:
        await store.close()
