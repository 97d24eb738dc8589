"""Issue 18, item 3, the NS's rule on a real database: a step row only for a client-job
instance, for a step its program has (``outer/inner`` for a nested job), under an unfinished
instance; every other step report is refused and counted. An agent's ``pending`` report with a
reason (its disk is full) moves nothing and is noted once for the roll-up to raise."""

from __future__ import annotations

from protocol.messages import Report
from server.store import NewInstance, Store


def run_step(step: str) -> dict:
    return {"op": "run", "step": step, "task": {"name": step}, "kind": "client"}


PROGRAM = [
    run_step("first"),
    {
        "op": "branch",
        "condition": "first.status == 'failed'",
        "scope": {},
        "tests": [],
        "else_pc": 3,
    },
    run_step("outer/inner"),
]


async def test_step_rows_only_for_steps_of_an_unfinished_client_job(store_target):
    """Made-up steps, steps under a plain task, and a new step under an ended job are refused
    and counted; the job's own steps (a nested one too) are stored, and a repeated result of a
    stored step after the job ended is ignored, not refused. One batch of 10,000 made-up steps
    makes no row."""
    store = await Store.open(store_target)
    try:
        job = {"name": "j", "kind": "client", "type": "client-job", "job": {"program": PROGRAM}}
        run_id = await store.create_run(job, [NewInstance(1, "pc-1", "ts")], 2e9)
        plain = await store.create_run(
            {"name": "t", "kind": "client", "type": "run-script"},
            [NewInstance(1, "pc-1", "ts")],
            2e9,
        )
        (parent,) = await store.instances(run_id)
        (task,) = await store.instances(plain)
        pid, tid = parent["id"], task["id"]

        flood = [
            Report(instance_id=pid, step=f"made-up-{k}", state="running", computer="pc-1")
            for k in range(10_000)
        ]
        assert await store.apply_reports(flood) == []
        assert store.refused == 10_000
        batch = [
            Report(instance_id=tid, step="first", state="running", computer="pc-1"),
            Report(instance_id=pid, step="first", state="succeeded", computer="pc-1"),
            Report(instance_id=pid, step="outer/inner", state="running", computer="pc-1"),
            Report(instance_id=pid, step="inner", state="running", computer="pc-1"),
            Report(instance_id=pid, step="outer", state="running", computer="pc-1"),
        ]
        changes = await store.apply_reports(batch)
        assert [(c.step, c.state) for c in changes] == [
            ("first", "succeeded"),
            ("outer/inner", "running"),
        ]
        assert store.refused == 10_003
        await store.apply_reports([Report(instance_id=pid, state="succeeded")])
        late = [
            Report(instance_id=pid, step="outer/inner", state="succeeded", computer="pc-1"),
            Report(instance_id=pid, step="first", state="succeeded", computer="pc-1"),
        ]
        changes = await store.apply_reports(late)
        assert [(c.step, c.state) for c in changes] == [("outer/inner", "succeeded")]
        assert store.refused == 10_003  # moving a stored step is no new row: not refused
        # A step the job has but never started, reported after the job ended: refused.
        job2 = await store.create_run(job, [NewInstance(1, "pc-1", "ts")], 2e9)
        (p2,) = await store.instances(job2)
        await store.apply_reports([Report(instance_id=p2["id"], state="failed")])
        late = [Report(instance_id=p2["id"], step="first", state="running", computer="pc-1")]
        assert await store.apply_reports(late) == []
        assert store.refused == 10_004
        rows = [
            (i["parent_id"], i["step"], i["status"])
            for run in (run_id, plain, job2)
            for i in await store.instances(run)
            if i["parent_id"] is not None
        ]
        assert sorted(rows) == [(pid, "first", "succeeded"), (pid, "outer/inner", "succeeded")]
    finally:
        await store.close()


async def test_a_pending_report_with_a_reason_is_noted_once_and_moves_nothing(store_target):
    """An agent's `pending` report with a reason leaves the instance as it is, and is noted for
    the roll-up once per computer (a second one within the window is not), as one line."""
    store = await Store.open(store_target)
    try:
        run_id = await store.create_run(
            {"name": "t", "kind": "client"}, [NewInstance(1, "pc-1", "ts")], 2e9
        )
        (inst,) = await store.instances(run_id)
        note = Report(instance_id=inst["id"], state="pending", reason="disk full\nfake line")
        assert await store.apply_reports([note]) == []
        assert store.held_back == {"pc-1": "disk full fake line"}
        store.held_back = {}
        assert await store.apply_reports([note]) == []
        assert store.held_back == {}
        (inst,) = await store.instances(run_id)
        assert inst["status"] == "pending"
        # From a computer the instance is not for: refused, not noted.
        other = Report(instance_id=inst["id"], state="pending", reason="x", computer="pc-2")
        assert await store.apply_reports([other]) == []
        assert store.held_back == {} and store.refused == 1
    finally:
        await store.close()
