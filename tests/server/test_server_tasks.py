"""Server tasks run once on the NS; their runs need no targets."""

from __future__ import annotations

from admin.client import AdminClient
from server import jobs
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


async def test_a_server_job_whose_runner_breaks_ends_failed_at_once(ns, monkeypatch):
    """Fault injection (a bug in the NS's job runner, which nothing else can provoke): the run
    ends ``failed`` at once instead of staying ``running`` until the job's time limit (an hour
    here), the error is in the server log for administrators, and the next run of the job is
    not affected."""
    note = {"name": "note", "type": "write-server-log", "params": {"message": "hi"}}
    job = 'name = "j"\ntype = "server-job"\ntimeout_s = 3600\n[[steps]]\ntask = "note"\n'
    run_step = jobs._run_step

    async def broken(*args: object) -> None:
        raise RuntimeError("injected fault")

    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("task.add", document=note)
        await c.call("job.add", text=job, filename="j.toml")
        monkeypatch.setattr(jobs, "_run_step", broken)
        started = await c.call("run.start", task="j")
        final = await wait_run(c, started["run_id"], 10)
        assert final["status"] == "failed", final
        (entry, *_) = await c.call("log.list")
        assert entry["level"] == "error"
        assert "injected fault" in entry["message"] and f"run {final['id']}" in entry["message"]
        monkeypatch.setattr(jobs, "_run_step", run_step)
        again = await wait_run(c, (await c.call("run.start", task="j"))["run_id"], 10)
        assert again["status"] == "succeeded", again
