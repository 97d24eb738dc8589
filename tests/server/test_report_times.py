"""Report times from agents on a real database (review M3): a time that is not a finite number
makes the report refused and counted; one far off is clamped to [1970, now + one day], so a
rogue or broken agent's 1e20 never reaches an admin's printer."""

from __future__ import annotations

import time

from protocol.messages import Report
from server.store import NewInstance, Store
from server.store.runs import AHEAD_S, sane_time


async def test_report_times_not_finite_are_refused_and_far_ones_clamped(store_target):
    store = await Store.open(store_target)
    try:
        task = {"name": "t", "kind": "client", "type": "run-script"}
        computers = [NewInstance(1, "pc-1", "ts"), NewInstance(2, "pc-2", "ts")]
        run_id = await store.create_run(task, computers, 2e9)
        one, two = sorted(await store.instances(run_id), key=lambda i: i["computer"])
        before = time.time()
        changes = await store.apply_reports(
            [
                Report(
                    instance_id=one["id"],
                    state="succeeded",
                    computer="pc-1",
                    started_at=float("nan"),
                    ended_at=5.0,
                ),
                Report(
                    instance_id=two["id"],
                    state="succeeded",
                    computer="pc-2",
                    started_at=-1e20,
                    ended_at=1e20,
                ),
            ]
        )
        after = time.time()
        assert [c.instance_id for c in changes] == [two["id"]]
        assert store.refused == 1
        rows = {i["computer"]: i for i in await store.instances(run_id)}
        assert rows["pc-1"]["status"] == "pending" and rows["pc-1"]["ended_at"] is None
        assert rows["pc-2"]["started_at"] == 0.0
        assert before + AHEAD_S <= rows["pc-2"]["ended_at"] <= after + AHEAD_S
    finally:
        await store.close()


def test_sane_time_keeps_ordinary_times_as_they_are():
    now = 1_800_000_000.0
    assert sane_time(None, now) is None
    assert sane_time(now - 3600.5, now) == now - 3600.5
    assert sane_time(now + 2 * AHEAD_S, now) == now + AHEAD_S
