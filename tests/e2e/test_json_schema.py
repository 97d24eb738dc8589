"""One JSON schema across the admin verbs, through the real ``taskfleet`` command on a real
fleet: the same run fields in ``runs --json`` and ``runs show --json``, ISO 8601 UTC times
everywhere, errors as one JSON line on stderr, ``runs show --csv``, and Ctrl-C on ``run
--wait`` and ``watch`` leaving the run going (docs/json.md)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import signal
from pathlib import Path
from typing import Any

from admin.schema import CSV_COLUMNS, RUN_FIELDS
from tests.helpers import Fleet, Proc, task_doc, until, wait_run

CLIENT_JOB = """\
name = "two-steps"
type = "client-job"
[[steps]]
id = "first"
task = "hello"
[[steps]]
id = "second"
task = "hello"
"""


def utc(text: str) -> dt.datetime:
    """An ISO 8601 time as the schema writes it: parses, and is UTC."""
    when = dt.datetime.fromisoformat(text)
    assert when.utcoffset() == dt.timedelta(0), text
    return when


def times_in(data: Any, names: set[str]) -> list[str]:
    """Every value of a field called one of ``names``, anywhere in ``data``, except nulls."""
    found: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if k in names and v is not None:
                found.append(v)
            elif k != "definition":
                found.extend(times_in(v, names))
    elif isinstance(data, list):
        for v in data:
            found.extend(times_in(v, names))
    return found


def last_json_line(err: str) -> dict[str, Any]:
    """The error object: the last line of stderr (earlier lines are warnings)."""
    line = err.strip().splitlines()[-1]
    parsed: dict[str, Any] = json.loads(line)
    return parsed


async def _fleet_with(fleet: Fleet, tmp_path: Path, agents: list[str]) -> None:
    await fleet.server()
    for name in agents:
        await fleet.agent(name)
    await fleet.wait_online(agents)
    (tmp_path / "hello.toml").write_text(task_doc("hello", "echo hello from %COMPUTERNAME%"))
    assert (await fleet.cli("task", "add", str(tmp_path / "hello.toml")))[0] == 0


async def test_runs_and_runs_show_share_the_run_fields_and_every_time_is_iso_utc(
    fleet: Fleet, tmp_path: Path
):
    """`runs --json` and `runs show ID --json` name a run's fields alike, with the same values
    (`run_id`, `task`, `created`, ...: no `id`, `task_name`, `created_at`); `runs show` adds the
    definition that ran and its version; every time in these and the other listing verbs is
    an ISO 8601 UTC string that `datetime.fromisoformat` reads."""
    await _fleet_with(fleet, tmp_path, ["pc-1", "pc-2"])
    code, out, err = await fleet.cli("run", "hello", "--all", "--wait", "--json")
    assert code == 0, err
    ran = json.loads(out)
    listed = await fleet.cli_json("runs")
    shown = await fleet.cli_json("runs", "show", str(ran["run_id"]))
    (row,) = [r for r in listed if r["run_id"] == ran["run_id"]]

    assert set(RUN_FIELDS) <= set(row) and set(RUN_FIELDS) <= set(shown)
    assert {k: shown[k] for k in RUN_FIELDS} == {k: row[k] for k in RUN_FIELDS}
    assert {k: ran[k] for k in RUN_FIELDS} == {k: row[k] for k in RUN_FIELDS}
    assert row["task"] == "hello" and row["version"] == 1 and row["total"] == 2
    for old in ("id", "task_name", "created_at", "ended_at"):
        assert old not in row and old not in shown
    assert shown["definition"]["name"] == "hello"
    assert "echo hello from" in shown["definition"]["params"]["script"]
    assert utc(shown["created"]) <= utc(shown["finished"])
    for inst in shown["instances"]:
        assert utc(inst["started"]) <= utc(inst["finished"])

    stamps = times_in(shown, {"created", "finished", "started"})
    assert len(stamps) == 2 + 2 * len(shown["instances"])
    for verb, names in (
        (["computers"], {"last_seen"}),
        (["keys"], {"created", "decided"}),
        (["tokens"], {"created", "expires"}),
        (["admins"], {"created"}),
        (["audit", "--limit", "5"], {"at"}),
        (["task", "history", "hello"], {"saved"}),
        (["tasks"], {"updated"}),
    ):
        data = await fleet.cli_json(*verb)
        found = times_in(data, names)
        assert found, f"no time in {verb}: {data}"
        for text in found:
            assert isinstance(text, str), (verb, text)
            utc(text)
        assert "_at" not in json.dumps(data), (verb, data)


async def test_errors_are_one_json_line_on_stderr_with_json(fleet: Fleet, tmp_path: Path):
    """With --json a failure prints {"error": {code, message, details?}} as the last line of
    stderr, with the same exit code as without: an unknown run (2), an invalid document (2,
    its problems by path), a usage error of the verb itself (2)."""
    await fleet.server()
    code, out, err = await fleet.cli("runs", "show", "999", "--json")
    assert code == 2 and out == ""
    assert last_json_line(err) == {
        "error": {
            "code": "unknown_run",
            "message": "no run with id 999; `taskfleet runs` lists them",
        }
    }
    plain_code, _, plain_err = await fleet.cli("runs", "show", "999")
    assert plain_code == code and "taskfleet: no run with id 999" in plain_err

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ntype = "run-script"\ntimeout_s = 0\n[params]\nscript = 3\n')
    code, out, err = await fleet.cli("task", "add", str(bad), "--json")
    assert code == 2 and out == ""
    problem = last_json_line(err)["error"]
    assert problem["code"] == "invalid_document"
    paths = {d["path"] for d in problem["details"]}
    assert {"params.script", "timeout_s"} <= paths, problem
    assert all(d["problem"] for d in problem["details"])

    code, out, err = await fleet.cli("runs", "show", "--json")
    assert code == 2 and last_json_line(err)["error"]["code"] == "usage"


async def test_runs_show_csv_has_a_row_per_computer_and_per_step_for_a_job(
    fleet: Fleet, tmp_path: Path
):
    """`runs show ID --csv`: a header of the JSON field names, one row per computer for a task
    (its whole output in one quoted field), and for a client job the job's row then one row per
    step on each computer; --csv with --json is a usage error (2)."""
    await _fleet_with(fleet, tmp_path, ["pc-1", "pc-2"])
    (tmp_path / "job.toml").write_text(CLIENT_JOB)
    assert (await fleet.cli("job", "add", str(tmp_path / "job.toml")))[0] == 0
    task_run = (await fleet.cli_json("run", "hello", "--all", "--wait"))["run_id"]
    job_run = (await fleet.cli_json("run", "two-steps", "--all", "--wait"))["run_id"]

    code, out, err = await fleet.cli("runs", "show", str(task_run), "--csv")
    assert code == 0, err
    reader = csv.DictReader(io.StringIO(out))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    rows = list(reader)
    assert [(r["computer"], r["step"], r["status"]) for r in rows] == [
        ("pc-1", "", "succeeded"),
        ("pc-2", "", "succeeded"),
    ]
    for r in rows:
        assert r["run_id"] == str(task_run) and r["return_code"] == "0"
        assert r["output"] == f"hello from {r['computer']}\n"
        assert utc(r["started"]) <= utc(r["finished"])

    code, out, err = await fleet.cli("runs", "show", str(job_run), "--csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["computer"], r["step"]) for r in rows] == [
        ("pc-1", ""),
        ("pc-1", "first"),
        ("pc-1", "second"),
        ("pc-2", ""),
        ("pc-2", "first"),
        ("pc-2", "second"),
    ]
    assert all(r["status"] == "succeeded" for r in rows)
    assert [r["output"] for r in rows if r["step"]] == [
        f"hello from {r['computer']}\n" for r in rows if r["step"]
    ]

    code, out, err = await fleet.cli("runs", "show", str(job_run), "--csv", "--json")
    assert code == 2 and out == "" and last_json_line(err)["error"]["code"] == "usage"


async def _held_run(fleet: Fleet, tmp_path: Path) -> Path:
    """A fleet of two agents and a task that runs until the test creates ``release``: so the
    run is surely going on when the command following it is interrupted."""
    release = tmp_path / "release"
    await fleet.server()
    for name in ("pc-1", "pc-2"):
        await fleet.agent(name)
    await fleet.wait_online(["pc-1", "pc-2"])
    script = f"while [ ! -e {release} ]; do sleep 0.05; done; echo released"
    (tmp_path / "held.toml").write_text(task_doc("held", script))
    assert (await fleet.cli("task", "add", str(tmp_path / "held.toml")))[0] == 0
    (tmp_path / "token").write_text(fleet.admin_token)
    return release


def _admin_args(fleet: Fleet, tmp_path: Path) -> list[str]:
    assert fleet.ns is not None
    return [
        "--server",
        fleet.ns.url,
        "--token-file",
        str(tmp_path / "token"),
        *fleet.trust_args(),
    ]


async def _interrupt(proc: Proc) -> int:
    proc.kill(signal.SIGINT)
    return await proc.wait(15)


async def _goes_on_and_succeeds(fleet: Fleet, release: Path, run_id: int) -> None:
    async with fleet.admin() as c:
        shown = await c.call("run.show", run_id=run_id)
        assert shown["status"] == "running"
        release.touch()
        final = await wait_run(c, run_id, 60)
    assert final["status"] == "succeeded"
    assert [i["status"] for i in final["instances"]] == ["succeeded", "succeeded"]
    assert all(i["output"].strip() == "released" for i in final["instances"])


async def test_ctrl_c_on_run_wait_says_the_run_goes_on_and_exits_130(fleet: Fleet, tmp_path: Path):
    """SIGINT to a real `taskfleet run --wait` once it said the run started: it prints that the
    run goes on, with the commands that follow and stop it, and exits 130; the run is not
    stopped: its instances still end succeeded."""
    release = await _held_run(fleet, tmp_path)
    proc = Proc(
        "run-wait",
        ["run", "held", "--all", "--wait", *_admin_args(fleet, tmp_path)],
        tmp_path / "run-wait.log",
    )
    await proc.start(wait_ready=False)
    try:

        async def started() -> bool:
            return " started on 2 target(s)" in proc.log()

        await until(started, "run --wait said the run started")
        run_id = int(proc.log().split("run ", 1)[1].split()[0])
        assert await _interrupt(proc) == 130, proc.log()
    finally:
        proc.kill()
    said = proc.log()
    assert (
        f"run {run_id} goes on: `taskfleet watch {run_id}` follows it,"
        f" `taskfleet stop {run_id}` stops it" in said
    ), said
    assert "Traceback" not in said
    await _goes_on_and_succeeds(fleet, release, run_id)


async def test_ctrl_c_on_watch_says_the_run_goes_on_and_exits_130(fleet: Fleet, tmp_path: Path):
    """The same for `taskfleet watch ID`, interrupted once it printed the run's progress."""
    release = await _held_run(fleet, tmp_path)
    async with fleet.admin() as c:
        run_id = int((await c.call("run.start", task="held", all=True))["run_id"])
    proc = Proc(
        "watch", ["watch", str(run_id), *_admin_args(fleet, tmp_path)], tmp_path / "watch.log"
    )
    await proc.start(wait_ready=False)
    try:
        assert proc.proc is not None and proc.proc.stdout is not None
        # The progress line: it is following.
        first = await asyncio.wait_for(proc.proc.stdout.readline(), 30)
        assert b"done" in first, (first, proc.log())
        assert await _interrupt(proc) == 130, proc.log()
    finally:
        proc.kill()
    assert f"run {run_id} goes on: `taskfleet watch {run_id}` follows it" in proc.log()
    await _goes_on_and_succeeds(fleet, release, run_id)
