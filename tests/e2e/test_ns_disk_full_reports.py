"""Issue 18, item 16: the NS's disk fills while agents report through a TS.

Before, applying each batch failed, the TS link was closed with 1011 again and again, and the
NS's log filled with tracebacks. Now the NS keeps the batch and tries it again until space
returns, reading nothing more from that TS meanwhile: one message, one log line, and every
result stored once space is back.
"""

from __future__ import annotations

import os

import pytest

from tests import helpers
from tests.helpers import Fleet, until, wait_run

pytestmark = pytest.mark.sqlite_only  # a full disk under the NS's data folder, where SQLite writes

AGENTS = ["pc-1", "pc-2", "pc-3"]
OUTPUT = 300_000
"""Bytes each agent's result carries: the database must grow to take them."""


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs for the NS's data folder."""
    with helpers.small_disk(tmp_path, "24m") as mount:
        yield mount


async def test_a_full_disk_at_the_ns_holds_results_back_and_loses_none(
    fleet: Fleet, small_disk, tmp_path
):
    """Three agents behind a TS finish a task (300 kB of output each) while the NS's disk is
    full: the NS raises one message and logs one line, the TS's link stays up (no 1011, no
    reconnect, no traceback at the NS); once space is freed every result is stored, once,
    by itself."""
    ns = await fleet.server(data_root=small_disk)
    ts = await fleet.taskserver("ts-1")
    for name in AGENTS:
        await fleet.agent(name)
    rows = await fleet.wait_online(AGENTS)
    assert {r["taskserver"] for r in rows if r["name"] in AGENTS} == {"ts-1"}
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; head -c {OUTPUT} /dev/zero | tr '\\0' x"
    async with fleet.admin() as c:
        await c.call(
            "task.add",
            document={
                "name": "big",
                "type": "run-script",
                "timeout_s": 120,
                "params": {
                    "interpreter": "sh",
                    "script": script,
                    "output_limit_bytes": OUTPUT + 1000,
                },
            },
        )
        run_id = (await c.call("run.start", task="big", computers=AGENTS))["run_id"]

        async def running() -> bool:
            view = await c.call("run.show", run_id=run_id)
            return all(i["status"] == "running" for i in view["instances"])

        await until(running, "every agent to run the task")
        filler = small_disk / "filler"
        helpers.fill(filler)
        go.touch()  # the results now come back to a full disk

        async def full() -> bool:
            return "disk_full" in ns.log_path.read_text(errors="replace")

        await until(full, "the NS to find its disk full", 30)
        view = await c.call("run.show", run_id=run_id)
        assert view["status"] == "running"  # nothing stored while the disk is full
        os.remove(filler)
        final = await wait_run(c, run_id, 60)
        messages = await c.call("messages.list")
    assert final["status"] == "succeeded", final
    assert sorted(i["computer"] for i in final["instances"]) == AGENTS  # each once
    assert all(i["output"] == "x" * OUTPUT for i in final["instances"])
    raised = [m for m in messages if "disk full on the NS" in m["text"]]
    assert len(raised) == 1, raised
    ns_log = ns.log_path.read_text(errors="replace")
    ts_log = ts.log_path.read_text(errors="replace")
    assert ns_log.count("disk_full") == 1, ns_log[-3000:]
    assert "Traceback" not in ns_log and "1011" not in ns_log, ns_log[-3000:]
    assert ts_log.count("ns_connected") == 1, ts_log[-3000:]  # its link never dropped
    assert "ns_link_lost" not in ts_log and "ns_link_failed" not in ts_log, ts_log[-3000:]
