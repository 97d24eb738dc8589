"""The disk under PostgreSQL's files fills while agents report through a TS (issue 23: disk full
on PostgreSQL is met as SQLite's is): PostgreSQL refuses the roll-up with ``disk_full``
(SQLSTATE 53100), the NS keeps the batch and tries it again, one message and one log line, and
every result is stored once when space is back.

The NS's tables live in a tablespace on an 8 MiB tmpfs (``small_tablespace``), filled for real;
the cluster's own files and write-ahead log are elsewhere, as on a site whose tablespace disk
fills. Without PostgreSQL these are skipped with the reason (failed under
TASKFLEET_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests import helpers
from tests.helpers import Fleet, until, wait_run
from tests.server.test_pg_extras import small_tablespace

__all__ = ["small_tablespace"]  # the fixture, used by name below

AGENTS = ["pg-1", "pg-2", "pg-3"]
LINES = 60_000
"""Lines of numbers each agent prints: about 400 kB that compress poorly, so storing them needs
new pages of the (full) tablespace."""


async def test_a_full_disk_under_postgresql_holds_results_back_and_loses_none(
    fleet: Fleet, small_tablespace: Path, postgres_url: str, tmp_path
):
    fleet.database = postgres_url
    ns = await fleet.server()
    ts = await fleet.taskserver("ts-1")
    for name in AGENTS:
        await fleet.agent(name)
    await fleet.wait_online(AGENTS)
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; seq 100000 {100000 + LINES - 1}"
    expected = "".join(f"{n}\n" for n in range(100000, 100000 + LINES))
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
                    "output_limit_bytes": len(expected) + 1000,
                },
            },
        )
        run_id = (await c.call("run.start", task="big", computers=AGENTS))["run_id"]

        async def running() -> bool:
            view = await c.call("run.show", run_id=run_id)
            return all(i["status"] == "running" for i in view["instances"])

        await until(running, "every agent to run the task")
        filler = small_tablespace / "filler"
        helpers.fill(filler)
        go.touch()  # the results now come back to a full tablespace

        async def full() -> bool:
            return "disk_full" in ns.log_path.read_text(errors="replace")

        await until(full, "the NS to find PostgreSQL's disk full", 30)
        view = await c.call("run.show", run_id=run_id)
        assert view["status"] == "running"  # nothing stored while the disk is full
        os.remove(filler)
        final = await wait_run(c, run_id, 60)
        messages = await c.call("messages.list")
    assert final["status"] == "succeeded", final
    assert sorted(i["computer"] for i in final["instances"]) == AGENTS  # each once
    assert all(i["output"].strip() == expected.strip() for i in final["instances"])
    raised = [m for m in messages if "disk full on the NS" in m["text"]]
    assert len(raised) == 1, raised
    ns_log = ns.log_path.read_text(errors="replace")
    ts_log = ts.log_path.read_text(errors="replace")
    assert "53100" in ns_log or "No space left on device" in ns_log, ns_log[-3000:]
    assert ns_log.count('"event": "disk_full"') == 1, ns_log[-3000:]
    assert "Traceback" not in ns_log and "stood_down" not in ns_log, ns_log[-3000:]
    assert ts_log.count("ns_connected") == 1, ts_log[-3000:]  # its link never dropped
