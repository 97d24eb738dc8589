"""The hierarchy's store (``server.store.hierarchy``) against a real store, SQLite and
PostgreSQL: the parent's journal of changes to replicated items (appended in the change's own
transaction, listeners told after the commit only), its trimming, the children's rows; and the
child's side, ``apply_from_parent`` (in order, repeat-safe, clashes left alone, full sets,
cursor, replicated again for the child's own children)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from protocol.filters import validate_filter
from protocol.policies import validate_policy
from protocol.tasks import parse_document, validate_task
from server.retention import Purger
from server.store import Store
from server.store.hierarchy import KEEP_ACKED_S, KEEP_MAX_S
from tests.helpers import task_doc

PARENT = "top"


def task(name: str, script: str = "echo hi", **flags: bool) -> dict[str, Any]:
    """A validated run-script task as the store saves it, with hierarchy flags when given."""
    doc = parse_document(task_doc(name, script), filename=f"{name}.toml")
    return validate_task({**doc, **flags}).to_dict()


def policy(name: str, task_name: str, **flags: bool) -> dict[str, Any]:
    doc = {"name": name, "task": task_name, "schedule": {"every_s": 60}, **flags}
    return validate_policy(doc, "client")


def a_filter(name: str, **flags: bool) -> dict[str, Any]:
    return validate_filter({"name": name, "query": 'computer.os == "Linux"', **flags})[0]


def change(seq: int, kind: str, name: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "name": name, "doc": doc}


@contextlib.asynccontextmanager
async def opened(target: str) -> AsyncIterator[Store]:
    store = await Store.open(target)
    try:
        yield store
    finally:
        await store.close()


async def journal(store: Store) -> list[tuple[str, str, bool]]:
    """The journal as (kind, name, has a document), oldest first."""
    return [(c["kind"], c["name"], c["doc"] is not None) for c in await store.changes_after(0)]


# -- the parent's journal ---------------------------------------------------------------


async def test_save_change_unflag_and_delete_of_a_task_are_journalled(store_target):
    """Saving a replicated task, changing it, un-flagging it and deleting it each append one
    row; saving it unchanged, and anything done to a task that is not replicated, append
    none."""
    async with opened(store_target) as store:
        await store.save_task_version(task("local"))
        await store.save_task_version(task("shared", replicate=True))
        await store.save_task_version(task("shared", replicate=True))  # unchanged
        await store.save_task_version(task("shared", "echo changed", replicate=True))
        await store.save_task_version(task("shared", "echo changed"))  # un-flagged
        await store.save_task_version(task("shared", "echo again"))  # not replicated now
        await store.delete_definition("task", "local")
        assert await journal(store) == [
            ("task", "shared", True),
            ("task", "shared", True),
            ("task", "shared", False),
        ]
        changes = await store.changes_after(0)
        assert changes[1]["doc"]["params"]["script"].strip() == "echo changed"
        assert changes[1]["doc"]["replicate"] is True
        await store.save_task_version(task("shared", replicate=True))
        await store.delete_definition("task", "shared")
        assert (await journal(store))[-2:] == [("task", "shared", True), ("task", "shared", False)]
        assert await store.journal_tail() == changes[0]["seq"] + 4


async def test_jobs_policies_filters_and_groups_are_journalled(store_target):
    """Every kind: a job saved and deleted, a policy saved, disabled and deleted, a filter
    saved and deleted, a group added and deleted; a group added without --replicate is not."""
    async with opened(store_target) as store:
        await store.save_task_version(task("t", replicate=True))
        job = {"name": "j", "type": "client-job", "description": "", "steps": [{"task": "t"}]}
        await store.save_job_version({**job, "replicate": True})
        await store.delete_definition("job", "j")
        await store.save_policy(policy("p", "t", replicate=True))
        await store.set_policy_enabled("p", False)
        await store.delete_item("policy", "p")
        await store.save_filter(a_filter("f", replicate=True))
        await store.delete_item("filter", "f")
        await store.add_group("plain", None)
        gid = await store.add_group("sites", None, replicate=True)
        await store.add_group("paris", "sites", replicate=True)
        paris = await store.group_id("paris")
        assert paris is not None
        await store.delete_group(paris)
        assert await journal(store) == [
            ("task", "t", True),
            ("job", "j", True),
            ("job", "j", False),
            ("policy", "p", True),
            ("policy", "p", True),
            ("policy", "p", False),
            ("filter", "f", True),
            ("filter", "f", False),
            ("group", "sites", True),
            ("group", "paris", True),
            ("group", "paris", False),
        ]
        disabled = (await store.changes_after(0))[4]["doc"]
        assert disabled["enabled"] is False
        group = (await store.changes_after(0))[9]["doc"]
        assert group == {"name": "paris", "parent": "sites", "replicate": True}
        assert gid == await store.group_id("sites")


async def test_a_change_rolled_back_leaves_no_journal_row_and_tells_nobody(store_target):
    async with opened(store_target) as store:
        told: list[int] = []
        store.journal_listeners.append(told.append)
        with pytest.raises(RuntimeError):
            async with store.db.transaction():
                await store.save_task_version(task("shared", replicate=True))
                raise RuntimeError("the caller's next step failed")
        assert await store.changes_after(0) == []
        assert await store.task("shared") is None
        assert told == []


async def test_listeners_are_told_once_after_the_outermost_commit(store_target):
    """Two saves inside one outer transaction: nobody is told while it is open (a listener
    reading then would not see the rows), then once, with the tail, after it commits."""
    async with opened(store_target) as store:
        told: list[int] = []
        store.journal_listeners.append(told.append)
        async with store.db.transaction():
            await store.save_task_version(task("a", replicate=True))
            await store.save_task_version(task("b", replicate=True))
            assert told == []
        tail = await store.journal_tail()
        assert told == [tail]
        assert [c["name"] for c in await store.changes_after(tail - 2)] == ["a", "b"]
        await store.save_task_version(task("c", replicate=True))  # its own transaction
        assert told == [tail, tail + 1]
        await store.save_task_version(task("d"))  # not replicated: nothing to tell
        assert told == [tail, tail + 1]


async def test_a_failing_listener_does_not_fail_the_change_nor_the_others(store_target):
    async with opened(store_target) as store:
        told: list[int] = []

        def broken(seq: int) -> None:
            raise ValueError("a listener's bug")

        store.journal_listeners.extend([broken, told.append])
        await store.save_task_version(task("a", replicate=True))
        assert told == [await store.journal_tail()]
        assert await store.task("a") is not None


async def test_changes_after_gives_changes_in_order_up_to_the_limit(store_target):
    async with opened(store_target) as store:
        for n in range(5):
            await store.save_task_version(task(f"t{n}", replicate=True))
        first = await store.changes_after(0, limit=2)
        assert [c["name"] for c in first] == ["t0", "t1"]
        rest = await store.changes_after(first[-1]["seq"])
        assert [c["name"] for c in rest] == ["t2", "t3", "t4"]
        seqs = [c["seq"] for c in first + rest]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert await store.changes_after(seqs[-1]) == []
        # Each change keeps when it was made: a child that acknowledged none of them lags by the
        # age of the first; one that acknowledged the last (or beyond) does not lag.
        later = time.time() + 100
        assert 99 < await store.child_lag_s(0, later) <= 100 + 60
        assert await store.child_lag_s(seqs[-1]) == 0.0
        assert await store.child_lag_s(seqs[-1] + 100) == 0.0


async def test_replicated_items_lists_the_whole_set_groups_parent_first(store_target):
    async with opened(store_target) as store:
        await store.add_group("zone", None, replicate=True)
        await store.add_group("a-site", "zone", replicate=True)
        await store.add_group("mine", None)
        await store.save_task_version(task("t", replicate=True))
        await store.save_task_version(task("local"))
        await store.save_policy(policy("p", "t", replicate=True))
        await store.save_filter(a_filter("f", replicate=True))
        items = await store.replicated_items()
        assert [(c["kind"], c["name"]) for c in items] == [
            ("group", "zone"),
            ("group", "a-site"),
            ("task", "t"),
            ("filter", "f"),
            ("policy", "p"),
        ]
        assert all(c["seq"] == 0 for c in items)
        assert items[1]["doc"] == {"name": "a-site", "parent": "zone", "replicate": True}


# -- trimming -----------------------------------------------------------------------------


async def _age(store: Store, seconds: float) -> None:
    """Make every journal row ``seconds`` old."""
    await store.db.execute("UPDATE hier_journal SET at = at - ?", (seconds,))


async def test_trimming_keeps_what_a_child_has_not_acknowledged_up_to_a_week(store_target):
    async with opened(store_target) as store:
        for n in range(4):
            await store.save_task_version(task(f"t{n}", replicate=True))
        seqs = [c["seq"] for c in await store.changes_after(0)]
        await store.upsert_child("eu", "eu:abc", True)
        await store.upsert_child("us", "us:def", True)
        await store.child_acked("eu", seqs[3])
        await store.child_acked("us", seqs[1])
        assert await store.trim_journal() == 0  # acknowledged, but younger than an hour
        assert await store.journal_floor() == seqs[0] - 1
        await _age(store, KEEP_ACKED_S + 60)
        assert await store.trim_journal() == 2  # up to what "us" acknowledged
        assert await store.journal_floor() == seqs[1]
        assert [c["seq"] for c in await store.changes_after(await store.journal_floor())] == (
            seqs[2:]
        )
        await _age(store, KEEP_MAX_S)
        assert await store.trim_journal(batch=10) == 1  # a week old: gone whatever the acks...
        assert [c["seq"] for c in await store.changes_after(0)] == [seqs[3]]  # ...but the tail
        assert await store.journal_floor() == seqs[2]
        await store.save_task_version(task("next", replicate=True))
        assert await store.journal_tail() > seqs[3]  # a seq is never given twice


async def test_trimming_goes_a_batch_at_a_time_from_the_oldest(store_target):
    async with opened(store_target) as store:
        for n in range(6):
            await store.save_task_version(task(f"t{n}", replicate=True))
        seqs = [c["seq"] for c in await store.changes_after(0)]
        await _age(store, KEEP_ACKED_S + 60)  # no child known: nobody needs them
        assert await store.trim_journal(batch=2) == 2
        assert await store.journal_floor() == seqs[1]
        assert await store.trim_journal(batch=2) == 2
        assert await store.trim_journal(batch=2) == 1
        assert await store.trim_journal(batch=2) == 0
        assert [c["seq"] for c in await store.changes_after(0)] == [seqs[5]]


# -- children -------------------------------------------------------------------------------


async def test_children_rows_keep_link_acks_summary_clashes_and_below(store_target):
    async with opened(store_target) as store:
        await store.upsert_child("eu", "eu:abc", True, below=["grand:1"])
        row = await store.child("eu")
        assert row is not None
        assert (row["connected"], row["acked_seq"], row["below"]) == (True, 0, ["grand:1"])
        assert row["summary"] is None and row["clashes"] == []
        linked = row["linked_at"]
        await store.child_acked("eu", 7)
        await store.set_child_summary("eu", {"computers": {"total": 3}})
        await store.set_child_clashes("eu", [{"kind": "task", "name": "backup"}])
        await store.upsert_child("eu", "eu:abc", False)  # below None: kept
        row = await store.child("eu")
        assert row is not None
        assert row["connected"] is False and row["linked_at"] == linked
        assert row["acked_seq"] == 7 and row["below"] == ["grand:1"]
        assert row["summary"] == {"computers": {"total": 3}}
        assert row["clashes"] == [{"kind": "task", "name": "backup"}]
        await store.upsert_child("asia", "asia:1", True)
        assert [c["name"] for c in await store.children()] == ["asia", "eu"]
        assert await store.child("nobody") is None


# -- the child's side -----------------------------------------------------------------------


async def test_changes_apply_in_order_marked_from_the_parent(store_target):
    async with opened(store_target) as store:
        result = await store.apply_from_parent(
            PARENT,
            [
                change(1, "task", "t", task("t", "echo one", replicate=True)),
                change(2, "task", "t", task("t", "echo two", replicate=True)),
                change(3, "task", "gone", task("gone", replicate=True)),
                change(4, "task", "gone", None),
            ],
            full=False,
            upto=4,
        )
        assert (result["cursor"], result["applied"], result["deleted"]) == (4, 3, 1)
        assert result["clashes"] == []
        saved = await store.task("t")
        assert saved is not None and saved["params"]["script"].strip() == "echo two"
        assert await store.task("gone") is None
        assert [(t["name"], t["origin"]) for t in await store.tasks()] == [("t", PARENT)]
        assert await store.item_origin("task", "t") == PARENT
        assert await store.parent_cursor(PARENT) == 4
        items = {i["id"]: i["origin"] for i in await store.items()}
        assert items["task:t"] == PARENT


async def test_a_batch_sent_again_changes_nothing(store_target):
    async with opened(store_target) as store:
        batch = [
            change(5, "task", "t", task("t", replicate=True)),
            change(6, "task", "t", None),
        ]
        first = await store.apply_from_parent(PARENT, batch, full=False, upto=6)
        assert (first["applied"], first["deleted"]) == (1, 1)
        again = await store.apply_from_parent(PARENT, batch, full=False, upto=6)
        assert (again["cursor"], again["applied"], again["deleted"]) == (6, 0, 0)
        assert await store.task("t") is None  # not applied again: it stays deleted
        partly = await store.apply_from_parent(
            PARENT, [*batch, change(7, "task", "u", task("u", replicate=True))], False, 7
        )
        assert (partly["cursor"], partly["applied"]) == (7, 1)


async def test_a_clash_with_an_item_of_the_childs_own_is_reported_and_left_alone(store_target):
    async with opened(store_target) as store:
        await store.save_task_version(task("backup", "echo mine"))
        await store.save_job_version(
            {"name": "nightly", "type": "client-job", "description": "", "steps": []}
        )
        result = await store.apply_from_parent(
            PARENT,
            [
                change(1, "task", "backup", task("backup", "echo theirs", replicate=True)),
                change(2, "task", "nightly", task("nightly", replicate=True)),  # a job here
            ],
            full=False,
            upto=2,
        )
        assert result["applied"] == 0
        assert result["clashes"] == [
            {"kind": "task", "name": "backup"},
            {"kind": "task", "name": "nightly"},
        ]
        mine = await store.task("backup")
        assert mine is not None and mine["params"]["script"].strip() == "echo mine"
        assert await store.item_origin("task", "backup") == ""
        assert [(c["parent"], c["name"]) for c in await store.hier_clashes()] == [
            (PARENT, "backup"),
            (PARENT, "nightly"),
        ]
        gone = await store.apply_from_parent(
            PARENT, [change(3, "task", "backup", None)], full=False, upto=3
        )
        assert gone["deleted"] == 0 and gone["clashes"] == [{"kind": "task", "name": "nightly"}]
        assert await store.task("backup") is not None  # the child's own stays


async def test_a_full_set_deletes_what_the_parent_no_longer_replicates(store_target):
    async with opened(store_target) as store:
        await store.save_task_version(task("mine"))
        await store.add_group("sites", None)
        await store.apply_from_parent(
            PARENT,
            [
                change(1, "task", "keep", task("keep", replicate=True)),
                change(2, "task", "drop", task("drop", replicate=True)),
                change(3, "policy", "p", policy("p", "drop", replicate=True)),
                change(4, "group", "zone", {"name": "zone", "parent": None, "replicate": True}),
            ],
            full=False,
            upto=4,
        )
        result = await store.apply_from_parent(
            PARENT, [change(0, "task", "keep", task("keep", replicate=True))], full=True, upto=40
        )
        assert (result["cursor"], result["unchanged"], result["deleted"]) == (40, 1, 3)
        assert sorted(t["name"] for t in await store.tasks()) == ["keep", "mine"]
        assert await store.policies() == []
        assert [g["name"] for g in await store.groups()] == ["sites"]
        assert await store.parent_cursor(PARENT) == 40


async def test_an_item_replicated_again_is_journalled_on_the_child(store_target):
    """An item that comes with replicate = true goes on to the child's own children: the child
    journals it (and tells its listeners once); one without it is not journalled."""
    async with opened(store_target) as store:
        told: list[int] = []
        store.journal_listeners.append(told.append)
        await store.apply_from_parent(
            PARENT,
            [
                change(1, "task", "down", task("down", replicate=True)),
                change(2, "filter", "f", a_filter("f", replicate=True)),
                change(3, "task", "here", task("here")),
            ],
            full=False,
            upto=3,
        )
        assert await journal(store) == [("task", "down", True), ("filter", "f", True)]
        assert told == [await store.journal_tail()]
        await store.apply_from_parent(PARENT, [change(4, "task", "down", None)], False, 4)
        assert (await journal(store))[-1] == ("task", "down", False)


async def test_groups_from_the_parent_nest_when_they_can_and_keep_local_members(store_target):
    async with opened(store_target) as store:
        await store.register_agent("pc-1", {"os": "Linux"})
        result = await store.apply_from_parent(
            PARENT,
            [
                change(1, "group", "zone", {"name": "zone", "parent": None, "replicate": True}),
                change(2, "group", "paris", {"name": "paris", "parent": "zone", "replicate": True}),
                change(
                    3, "group", "lost", {"name": "lost", "parent": "nowhere", "replicate": True}
                ),
            ],
            full=False,
            upto=3,
        )
        assert result["applied"] == 3
        assert result["notes"] == [
            "group lost: its parent group nowhere does not exist here: created at top level"
        ]
        groups = {g["name"]: g for g in await store.groups()}
        assert groups["paris"]["parent"] == "zone" and groups["lost"]["parent"] is None
        assert groups["paris"]["origin"] == PARENT and groups["paris"]["replicate"] is True
        paris = await store.group_id("paris")
        computers = await store.computers()
        assert paris is not None
        await store.add_to_group(paris, [computers[0]["id"]])
        again = await store.apply_from_parent(PARENT, await _as_full(store), full=True, upto=3)
        assert again["deleted"] == 0
        assert [m["name"] for m in await store.group_members(paris)] == ["pc-1"]
        await store.add_group("mine", "zone")  # the child's own group, under the parent's
        gone = await store.apply_from_parent(
            PARENT, [change(4, "group", "zone", None)], full=False, upto=4
        )
        assert gone["deleted"] == 1 and "moved to top level" in gone["notes"][0]
        groups = {g["name"]: g for g in await store.groups()}
        assert "zone" not in groups and groups["mine"]["parent"] is None


async def _as_full(store: Store) -> list[dict[str, Any]]:
    """What this store replicates now, as the full set a parent would send of it."""
    return [change(0, c["kind"], c["name"], c["doc"]) for c in await store.replicated_items()]


async def test_a_bad_change_refuses_the_whole_batch(store_target):
    async with opened(store_target) as store:
        with pytest.raises(ValueError, match="kind"):
            await store.apply_from_parent(
                PARENT,
                [
                    change(1, "task", "t", task("t", replicate=True)),
                    change(2, "report", "r", {"name": "r"}),
                ],
                full=False,
                upto=2,
            )
        assert await store.task("t") is None
        assert await store.parent_cursor(PARENT) == 0


async def test_the_retention_pass_trims_the_journal(ns):
    """The NS's retention pass (``server.retention.Purger``) trims what no child needs, a
    batch at a time, and keeps the newest change."""
    await asyncio.wait_for(ns.purger.first_pass.wait(), 30)  # the pass at start is done
    for n in range(5):
        await ns.db.save_task_version(task(f"t{n}", replicate=True))
    tail = await ns.db.journal_tail()
    done = await Purger(ns, batch=2, pause_s=0).purge()
    assert done["hier_journal"] == 0  # younger than an hour
    await _age(ns.db, KEEP_ACKED_S + 60)
    done = await Purger(ns, batch=2, pause_s=0).purge()
    assert done["hier_journal"] == 4
    assert [c["seq"] for c in await ns.db.changes_after(0)] == [tail]
    assert await ns.db.journal_floor() == tail - 1


async def test_a_document_this_ns_cannot_validate_is_left_out_with_a_note(store_target):
    """A child checks the parent's documents as it checks its own admins' (a parent on a newer
    version may send a task type this NS does not know): such an item is not stored, the note
    says why, and the rest of the batch applies."""
    bad = {**task("new-type", replicate=True), "type": "no-such-type"}
    async with opened(store_target) as store:
        result = await store.apply_from_parent(
            PARENT,
            [
                change(1, "task", "new-type", bad),
                change(2, "task", "ok", task("ok", replicate=True)),
            ],
            full=False,
            upto=2,
        )
        assert await store.task("new-type") is None
        assert (await store.task("ok")) is not None
        assert result["cursor"] == 2 and result["applied"] == 1
        assert any("new-type" in n and "no-such-type" in n for n in result["notes"])


async def test_a_full_set_goes_a_chunk_per_transaction_and_moves_the_cursor_at_the_end(
    store_target, monkeypatch
):
    """A full set larger than a chunk is applied chunk by chunk (the child's own writes are not
    held behind the whole set), and only its last transaction deletes what the parent no
    longer replicates and moves the cursor; a malformed change anywhere refuses the whole set
    before anything is applied."""
    monkeypatch.setattr("server.store.hierarchy.FULL_CHUNK", 3)
    async with opened(store_target) as store:
        await store.apply_from_parent(
            PARENT, [change(1, "task", "old", task("old", replicate=True))], False, 1
        )
        commits: list[int] = []
        store.journal_listeners.append(commits.append)  # once per committed transaction
        items = [change(0, "task", f"t{i}", task(f"t{i}", replicate=True)) for i in range(7)]
        with pytest.raises(ValueError, match="kind"):
            await store.apply_from_parent(
                PARENT, [*items, change(0, "report", "r", {"name": "r"})], True, 9
            )
        assert await store.task("t0") is None and await store.parent_cursor(PARENT) == 1
        result = await store.apply_from_parent(PARENT, items, True, 9)
        assert (result["cursor"], result["applied"], result["deleted"]) == (9, 7, 1)
        assert len(commits) == 4  # three chunks of 3, 3, 1, then the delete with the cursor
        assert await store.task("old") is None
        assert sorted(t["name"] for t in await store.tasks()) == [f"t{i}" for i in range(7)]
