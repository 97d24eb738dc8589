"""Saved tasks and jobs through the real ``taskfleet`` command: show (TOML and JSON), delete
(refused while used), versions (history, show an old one, the version a run ran), and the
results of a run read per computer, failures only, and after a stop."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.helpers import Fleet, task_doc, until, wait_run

TRICKY_TASK = """\
name = "tricky"
type = "run-script"
timeout_s = 30
description = "quotes \\" and 'single' and a tab\\t"

[params]
interpreter = "sh"
script = '''
echo "double" 'single' \\back\\slash
printf 'a\\tb\\n'
cat <<'EOF'
two '' quotes, and a trailing backslash \\
EOF
'''

[params.env]
"WITH SPACE" = "x"
PLAIN = "line one\\nline two"
"""

JOB = """\
name = "deploy"
type = "client-job"
description = "install, and on failure fix and try again"

[[steps]]
id = "install"
task = "tricky"

[[steps]]
if = "install.status == 'failed'"
then = [ { task = "helper" }, { id = "again", task = "tricky" } ]
else = [ { id = "report", task = "helper" } ]
"""


async def test_show_prints_toml_that_reads_back_and_saves_again(fleet: Fleet, tmp_path: Path):
    """`task show` / `job show` print the document as saved: TOML by default that tomllib reads
    back to exactly the document `--json` gives (scripts with quotes, backslashes, tabs, a
    here-document; a job's steps with nested then/else), and that `task add` / `job add` take
    again; saving it unchanged keeps the version."""
    await fleet.server()
    (tmp_path / "tricky.toml").write_text(TRICKY_TASK)
    (tmp_path / "helper.toml").write_text(task_doc("helper", "echo help"))
    (tmp_path / "deploy.toml").write_text(JOB)
    for kind, name in (("task", "tricky"), ("task", "helper"), ("job", "deploy")):
        code, _, err = await fleet.cli(kind, "add", str(tmp_path / f"{name}.toml"))
        assert code == 0, err

    for kind, name in (("task", "tricky"), ("job", "deploy")):
        as_json = await fleet.cli_json(kind, "show", name)
        original = tomllib.loads((tmp_path / f"{name}.toml").read_text())
        for key, value in original.items():
            if key == "params":  # saved with the type's defaults filled in
                assert as_json[key] == {**as_json[key], **value}
            else:
                assert as_json[key] == value, key
        code, out, err = await fleet.cli(kind, "show", name)
        assert code == 0, err
        assert tomllib.loads(out) == as_json, out
        code, out2, _ = await fleet.cli(kind, "show", name, "--toml")
        assert out2 == out
        again = tmp_path / f"{name}-again.toml"
        again.write_text(out)
        code, out, err = await fleet.cli(kind, "add", str(again), "--json")
        assert code == 0, err
        saved = json.loads(out)
        assert saved["replaced"] is True and saved["version"] == 1, saved
    code, _, err = await fleet.cli("task", "show", "nope")
    assert code == 2 and "no task named 'nope'" in err
    code, _, err = await fleet.cli("task", "show", "deploy")
    assert code == 2 and "'deploy' is a job, not a task" in err


async def test_delete_is_refused_while_a_job_or_policy_uses_it(fleet: Fleet, tmp_path: Path):
    """Deleting a task a job names (even inside a condition's branch) or a policy runs, or a
    job another job nests, is refused with exit 2 naming each user; once they are gone the
    delete goes through and the item is no longer listed."""
    await fleet.server()
    for name in ("tricky", "helper", "polled"):
        (tmp_path / f"{name}.toml").write_text(task_doc(name, "echo x"))
        assert (await fleet.cli("task", "add", str(tmp_path / f"{name}.toml")))[0] == 0
    (tmp_path / "deploy.toml").write_text(JOB)
    assert (await fleet.cli("job", "add", str(tmp_path / "deploy.toml")))[0] == 0
    (tmp_path / "outer.toml").write_text(
        'name = "outer"\ntype = "client-job"\n[[steps]]\njob = "deploy"\n'
    )
    assert (await fleet.cli("job", "add", str(tmp_path / "outer.toml")))[0] == 0
    async with fleet.admin() as c:
        await c.call(
            "policy.add",
            document={
                "name": "nightly",
                "task": "polled",
                "schedule": {"every_s": 3600},
                "targets": {"all": True},
            },
        )

    code, _, err = await fleet.cli("task", "delete", "helper")  # only in then/else branches
    assert code == 2 and "job deploy" in err and "job outer" not in err, err
    code, _, err = await fleet.cli("task", "delete", "polled")
    assert code == 2 and "policy nightly" in err, err
    code, _, err = await fleet.cli("job", "delete", "deploy")
    assert code == 2 and "job outer" in err, err
    code, _, err = await fleet.cli("job", "delete", "tricky")  # a task, not a job
    assert code == 2 and "'tricky' is a task, not a job" in err, err

    code, out, err = await fleet.cli("job", "delete", "outer")
    assert code == 0 and "deleted job outer" in out, err
    assert (await fleet.cli("job", "delete", "deploy"))[0] == 0
    code, out, err = await fleet.cli("task", "delete", "helper")
    assert code == 0, err
    assert [t["name"] for t in await fleet.cli_json("tasks")] == ["polled", "tricky"]
    assert await fleet.cli_json("jobs") == []


async def test_versions_are_kept_and_a_run_records_the_one_it_ran(fleet: Fleet, tmp_path: Path):
    """Each save that changes a task keeps the one before: `task history` lists versions with
    who saved them and what changed, `task show --version N` gives that version, and a run
    records the version it ran (`runs show`, text and JSON). A job has versions too."""
    await fleet.server()
    await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])
    doc = tmp_path / "t.toml"
    doc.write_text(task_doc("hello", "echo one"))
    assert (await fleet.cli("task", "add", str(doc)))[0] == 0
    doc.write_text(task_doc("hello", "echo two"))
    assert (await fleet.cli("task", "add", str(doc)))[0] == 0
    doc.write_text(task_doc("hello", "echo two", timeout_s=45))
    assert (await fleet.cli("task", "add", str(doc)))[0] == 0
    (tmp_path / "j.toml").write_text('name = "j"\ntype = "client-job"\n[[steps]]\ntask = "hello"\n')
    assert (await fleet.cli("job", "add", str(tmp_path / "j.toml")))[0] == 0
    (tmp_path / "j.toml").write_text(
        'name = "j"\ntype = "client-job"\ndescription = "d"\n[[steps]]\ntask = "hello"\n'
    )
    assert (await fleet.cli("job", "add", str(tmp_path / "j.toml")))[0] == 0

    async with fleet.admin() as c:
        me = (await c.call("whoami"))["admin"]
    history = await fleet.cli_json("task", "history", "hello")
    assert [h["version"] for h in history] == [1, 2, 3]
    assert [h["current"] for h in history] == [False, False, True]
    assert all(h["saved_by"] == me and h["saved"].endswith("Z") for h in history)
    assert history[0]["summary"] == "first saved"
    assert history[1]["summary"] == "changed params.script"
    assert history[2]["summary"] == "changed timeout_s"
    code, out, err = await fleet.cli("task", "history", "hello")
    assert code == 0 and "changed params.script" in out, err
    first = await fleet.cli_json("task", "show", "hello", "--version", "1")
    assert first["params"]["script"].strip() == "echo one"
    code, out, _ = await fleet.cli("task", "show", "hello", "--version", "2")
    assert "version 2" in out and tomllib.loads(out)["timeout_s"] == 60
    code, _, err = await fleet.cli("task", "show", "hello", "--version", "9")
    assert code == 2 and "no version 9" in err

    code, out, err = await fleet.cli("run", "hello", "--computer", "pc-1", "--wait", "--json")
    assert code == 0, err
    run = json.loads(out)
    assert run["version"] == 3
    code, out, _ = await fleet.cli("runs", "show", str(run["run_id"]))
    assert "task hello version 3" in out, out
    code, out, err = await fleet.cli("run", "j", "--computer", "pc-1", "--wait", "--json")
    assert code == 0, err
    assert json.loads(out)["version"] == 2
    assert [h["version"] for h in await fleet.cli_json("job", "history", "j")] == [1, 2]


async def test_runs_show_one_computer_in_full_and_only_failures(fleet: Fleet, tmp_path: Path):
    """`runs show ID --computer NAME` prints that computer's whole output (every line, not the
    table's first), return code, times and reason; for a job each step's. `--failed` lists
    only what did not succeed (text and JSON). An unknown computer is exit 2."""
    await fleet.server()
    await fleet.agent("pc-1")
    await fleet.agent("pc-2")
    await fleet.wait_online(["pc-1", "pc-2"])
    script = (
        "echo first line on %COMPUTERNAME%\necho second line\n"
        'if [ "%COMPUTERNAME%" = pc-2 ]; then echo broken; exit 3; fi'
    )
    (tmp_path / "t.toml").write_text(task_doc("two-lines", script))
    assert (await fleet.cli("task", "add", str(tmp_path / "t.toml")))[0] == 0
    code, out, _ = await fleet.cli("run", "two-lines", "--all", "--wait", "--json")
    assert code == 1
    run_id = str(json.loads(out)["run_id"])

    code, out, err = await fleet.cli("runs", "show", run_id, "--computer", "pc-2")
    assert code == 0, err
    assert "first line on pc-2" in out and "second line" in out and "broken" in out
    assert "return code 3" in out and "started 20" in out and "ended 20" in out
    assert "pc-1" not in out
    code, out, err = await fleet.cli("runs", "show", run_id, "--failed")
    assert code == 0, err
    assert "pc-2" in out and "pc-1" not in out
    failed = await fleet.cli_json("runs", "show", run_id, "--failed")
    assert [i["computer"] for i in failed["instances"]] == ["pc-2"]
    code, _, err = await fleet.cli("runs", "show", run_id, "--computer", "pc-9")
    assert code == 2 and "pc-9" in err and "pc-1, pc-2" in err

    (tmp_path / "j.toml").write_text(
        'name = "j"\ntype = "client-job"\n[[steps]]\nid = "a"\ntask = "two-lines"\n'
        '[[steps]]\nif = "a.status == \'failed\'"\nthen = [ { id = "b", task = "two-lines" } ]\n'
    )
    assert (await fleet.cli("job", "add", str(tmp_path / "j.toml")))[0] == 0
    code, out, _ = await fleet.cli("run", "j", "--computer", "pc-2", "--wait", "--json")
    run_id = str(json.loads(out)["run_id"])
    code, out, err = await fleet.cli("runs", "show", run_id, "--computer", "pc-2")
    assert code == 0, err
    assert "step a: failed, return code 3" in out and "step b: failed, return code 3" in out
    assert out.count("first line on pc-2") == 2 and out.count("second line") == 2


@pytest.mark.parametrize("via", ["built-in", "ts-1"])
async def test_a_stopped_instance_keeps_the_output_it_had_produced(
    fleet: Fleet, tmp_path: Path, via: str
):
    """A script that prints, then sleeps, is stopped mid-way: its instance ends `stopped` and
    keeps the line it had printed (it used to be emptied: the agent's task was cancelled, and
    the relay dropped its late result), through the NS's built-in task service and through a
    task server."""
    await fleet.server()
    if via != "built-in":
        await fleet.taskserver(via)
        async with fleet.admin() as c:

            async def ts_online() -> bool:
                return any(t["online"] for t in await c.call("taskservers.list"))

            await until(ts_online, f"{via} connected")
    await fleet.agent("pc-1")
    (row,) = await fleet.wait_online(["pc-1"])
    assert row["taskserver"] == ("(built-in)" if via == "built-in" else via), row
    marker = tmp_path / "printed"
    script = f"echo printed before the stop\ntouch {marker}-%COMPUTERNAME%\nsleep 60"
    (tmp_path / "t.toml").write_text(task_doc("slow", script, timeout_s=120))
    assert (await fleet.cli("task", "add", str(tmp_path / "t.toml")))[0] == 0
    async with fleet.admin() as c:
        started = await c.call("run.start", task="slow", computers=["pc-1"])
        run_id = started["run_id"]

        async def printed() -> bool:
            return Path(f"{marker}-pc-1").exists()

        await until(printed, "the script printed its line", 30)
        code, _, err = await fleet.cli("stop", str(run_id))
        assert code == 0, err
        final = await wait_run(c, run_id)
        assert final["status"] == "stopped"

        async def kept() -> dict | None:
            (inst,) = (await c.call("run.show", run_id=run_id))["instances"]
            return inst if inst["output"] else None

        inst = await until(kept, "the stopped instance's output", 20)
    assert inst["status"] == "stopped" and inst["reason"] == "stopped by an administrator"
    code, out, err = await fleet.cli("runs", "show", str(run_id), "--computer", "pc-1")
    assert code == 0, err
    assert "printed before the stop" in out and "stopped" in out


async def test_a_stopped_job_keeps_the_output_of_the_step_that_ran(fleet: Fleet, tmp_path: Path):
    """A client job stopped while its second step's script sleeps: the first step keeps its
    output, the stopped step keeps the line it had printed, and the job ends `stopped`."""
    await fleet.server()
    await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])
    marker = tmp_path / "printed"
    (tmp_path / "a.toml").write_text(task_doc("quick", "echo quick step done"))
    (tmp_path / "b.toml").write_text(
        task_doc("slow", f"echo slow step started\ntouch {marker}\nsleep 60", timeout_s=120)
    )
    (tmp_path / "j.toml").write_text(
        'name = "j"\ntype = "client-job"\n[[steps]]\nid = "a"\ntask = "quick"\n'
        '[[steps]]\nid = "b"\ntask = "slow"\n[[steps]]\nid = "c"\ntask = "quick"\n'
    )
    for kind, name in (("task", "a"), ("task", "b"), ("job", "j")):
        assert (await fleet.cli(kind, "add", str(tmp_path / f"{name}.toml")))[0] == 0
    async with fleet.admin() as c:
        run_id = (await c.call("run.start", task="j", computers=["pc-1"]))["run_id"]

        async def printed() -> bool:
            return marker.exists()

        await until(printed, "the slow step printed its line", 30)
        assert (await fleet.cli("stop", str(run_id)))[0] == 0

        async def kept() -> dict | None:
            rows = (await c.call("run.show", run_id=run_id))["instances"]
            steps = {i["step"]: i for i in rows if i["parent_id"] is not None}
            return steps if steps.get("b", {}).get("output") else None

        steps = await until(kept, "the stopped step's output", 20)
    assert steps["a"]["status"] == "succeeded" and "quick step done" in steps["a"]["output"]
    assert steps["b"]["status"] == "stopped" and "slow step started" in steps["b"]["output"]
    assert "c" not in steps  # the job went no further
    code, out, err = await fleet.cli("runs", "show", str(run_id), "--computer", "pc-1")
    assert code == 0, err
    assert "job: stopped" in out and "step b: stopped" in out and "slow step started" in out
