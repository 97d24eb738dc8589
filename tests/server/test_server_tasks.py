"""Server tasks run once on the NS; their runs need no targets."""

from __future__ import annotations

from admin.client import AdminClient
from tests.helpers import INSECURE, wait_run


async def test_run_script_on_server_runs_once_with_run_tokens(ns):
    """run-script-on-server runs one instance on the NS; %RUNID% and %TASKSERVER% are replaced."""
    doc = {
        "name": "on-ns",
        "type": "run-script-on-server",
        "timeout_s": 30,
        "params": {"script": "echo run %RUNID% on %TASKSERVER%"},
    }
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("task.add", document=doc)
        started = await c.call("run.start", task="on-ns")
        final = await wait_run(c, started["run_id"])
    assert final["status"] == "succeeded"
    (inst,) = final["instances"]
    assert inst["output"].strip() == f"run {started['run_id']} on ns"


async def test_write_server_log_stores_an_entry(ns):
    """write-server-log writes an entry with its level and the run's tokens to the server log."""
    doc = {
        "name": "note",
        "type": "write-server-log",
        "params": {"level": "warning", "message": "maintenance window for run %RUNID%"},
    }
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("task.add", document=doc)
        started = await c.call("run.start", task="note")
        final = await wait_run(c, started["run_id"])
        entries = await c.call("log.list")
    assert final["status"] == "succeeded"
    assert entries[0]["level"] == "warning"
    assert entries[0]["message"] == f"maintenance window for run {started['run_id']}"


async def test_failing_server_script_fails_the_run(ns):
    """A server script with a non-zero exit makes the run fail, with the reason stored."""
    doc = {"name": "bad", "type": "run-script-on-server", "params": {"script": "exit 4"}}
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("task.add", document=doc)
        started = await c.call("run.start", task="bad")
        final = await wait_run(c, started["run_id"])
    assert final["status"] == "failed"
    assert final["instances"][0]["return_code"] == 4
    assert "return code 4" in final["instances"][0]["reason"]
