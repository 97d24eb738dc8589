"""A child NS's summary for its parent (``server.hierarchy.up.build_summary``) against a real
store (SQLite and PostgreSQL): computers by state and OS, runs of the parent's items only,
recent ones only, and ``below`` carrying each grandchild's own summary and lag."""

from __future__ import annotations

import time
from typing import Any

from protocol.tasks import parse_document, validate_task
from server.hierarchy.up import HEARTBEAT_S, below_ids, build_summary, due
from server.store import NewInstance, Store
from tests.helpers import task_doc

PARENT = "top"


def task(name: str, **flags: bool) -> dict[str, Any]:
    """A validated run-script task document, with hierarchy flags when given."""
    doc = parse_document(task_doc(name, "echo hi"), filename=f"{name}.toml")
    return validate_task({**doc, **flags}).to_dict()


async def fleet_of_four(store: Store) -> None:
    """Three agents (two Linux kernels, one Windows; two online) and a device with no agent."""
    await store.register_agent("pc-1", {"os": "Linux 6.1.0-18-amd64"})
    await store.register_agent("pc-2", {"os": "Linux 5.15.0"})
    await store.register_agent("win-1", {"os": "Windows 10"})
    await store.add_device("printer", "10.0.0.9", None)
    await store.set_online(["pc-1", "win-1"], True, None)


async def from_parent(store: Store, *docs: dict[str, Any]) -> None:
    """Apply ``docs`` as the parent's replicated items, through the child's real path."""
    changes = [
        {"seq": n, "kind": "task", "name": d["name"], "doc": d} for n, d in enumerate(docs, 1)
    ]
    await store.apply_from_parent(PARENT, changes, full=False, upto=len(changes))


async def run_of(store: Store, definition: dict[str, Any], states: list[str]) -> int:
    """A run of ``definition`` with one instance per state given (``pending`` stays open)."""
    instances = [
        NewInstance(None, f"pc-{n}", "@ns", status=state) for n, state in enumerate(states, 1)
    ]
    return await store.create_run(definition, instances, time.time() + 60)


async def test_computers_are_counted_in_all_online_and_by_os_family(store_target):
    """Counts: every computer, those online, and by the OS's first word (a kernel build does
    not split Linux; a device with no OS reported is ``unknown``)."""
    store = await Store.open(store_target)
    try:
        await fleet_of_four(store)
        summary = await build_summary(store, PARENT, [])
        assert summary["computers"] == {
            "total": 4,
            "online": 2,
            "by_os": {"Linux": 2, "Windows": 1, "unknown": 1},
        }
        assert summary["runs"] == [] and summary["below"] == []
    finally:
        await store.close()


async def test_only_runs_of_the_parents_items_are_summarised_with_their_states(store_target):
    """A run of a task that came from the parent is in the summary with its instances counted
    per state; a run of the child's own task is not; newest first."""
    store = await Store.open(store_target)
    try:
        shared = task("shared", replicate=True, remote_start=True)
        await from_parent(store, shared)
        await store.save_task(task("own"))
        first = await run_of(store, shared, ["succeeded", "succeeded", "failed"])
        await run_of(store, task("own"), ["succeeded"])
        second = await run_of(store, shared, ["pending", "succeeded"])
        summary = await build_summary(store, PARENT, [])
        runs = summary["runs"]
        assert [r["run_id"] for r in runs] == [second, first]
        assert runs[1]["counts"] == {"succeeded": 2, "failed": 1}
        assert runs[0]["counts"] == {"pending": 1, "succeeded": 1}
        assert {(r["name"], r["kind"], r["status"]) for r in runs} == {
            ("shared", "task", "running")
        }
        assert await store.run_origin(first) == PARENT
        assert await store.run_origin(second + 1) is None
    finally:
        await store.close()


async def test_an_ended_run_leaves_the_summary_after_a_day_a_running_one_stays(store_target):
    """Ended more than 24 h before the summary's time: left out; still running: kept."""
    store = await Store.open(store_target)
    try:
        shared = task("shared", replicate=True)
        await from_parent(store, shared)
        ended = await run_of(store, shared, ["succeeded"])
        await store.finish_run(ended, "succeeded")
        running = await run_of(store, shared, ["pending"])
        now = await build_summary(store, PARENT, [])
        assert [r["run_id"] for r in now["runs"]] == [running, ended]
        assert now["runs"][1]["status"] == "succeeded" and now["runs"][1]["ended_at"]
        later = await build_summary(store, PARENT, [], now=time.time() + 25 * 3600)
        assert [r["run_id"] for r in later["runs"]] == [running]
    finally:
        await store.close()


async def test_below_carries_each_childs_summary_link_and_lag(store_target):
    """Each child of this NS is in ``below`` with the summary it sent (so a grandchild's
    reaches the top), whether it is linked now, and how long its oldest unacknowledged
    change has waited (0 once it acknowledged the journal's tail)."""
    store = await Store.open(store_target)
    try:
        await from_parent(store, task("shared", replicate=True))  # journalled here too
        await store.upsert_child("leaf", "leaf:SHA256:aa", True)
        grandchild = {"at": 1.0, "computers": {"total": 3}, "runs": [], "below": []}
        await store.set_child_summary("leaf", grandchild)
        later = time.time() + 10
        (entry,) = (await build_summary(store, PARENT, ["leaf"], now=later))["below"]
        assert entry["name"] == "leaf" and entry["ns_id"] == "leaf:SHA256:aa"
        assert entry["connected"] is True and entry["summary"] == grandchild
        assert entry["lag_s"] >= 10
        await store.child_acked("leaf", await store.journal_tail())
        (entry,) = (await build_summary(store, PARENT, [], now=later))["below"]
        assert entry["lag_s"] == 0 and entry["connected"] is False
    finally:
        await store.close()


def test_below_ids_gathers_every_tier_once():
    """The ids a parent keeps for its loop check: each NS under a child, at any depth."""
    summary = {
        "below": [
            {"ns_id": "b:1", "summary": {"below": [{"ns_id": "c:1", "summary": None}]}},
            {"ns_id": "b:2", "summary": {"below": [{"ns_id": "c:1"}]}},
            "not an entry",
        ]
    }
    assert below_ids(summary) == ["b:1", "c:1", "b:2"]
    assert below_ids({"computers": {}}) == []


def test_a_summary_goes_up_when_it_changed_or_the_heartbeat_is_due():
    """Nothing new: not sent again until the heartbeat; its own time alone is no change."""
    first = {
        "at": 1.0,
        "computers": {"total": 1, "online": 1, "by_os": {}},
        "runs": [],
        "below": [],
    }
    assert due(first, None, 0.0, 100.0)
    sent = {k: v for k, v in first.items() if k != "at"}
    assert not due({**first, "at": 3.0}, sent, 100.0, 102.0)
    assert due({**first, "computers": {"total": 1, "online": 0, "by_os": {}}}, sent, 100.0, 102.0)
    assert due({**first, "at": 131.0}, sent, 100.0, 100.0 + HEARTBEAT_S)
