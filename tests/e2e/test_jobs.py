"""Jobs end to end: server jobs sequenced on the NS, client jobs run by each agent."""

from __future__ import annotations

import json
import signal

from tests.helpers import Fleet, free_port, task_doc, until, wait_run

FIVE = [f"a-{i}" for i in range(1, 6)]


async def fleet_of(
    fleet: Fleet, names: list[str], *, port: int = 0, taskserver: bool = True
) -> None:
    await fleet.server(port=port)
    if taskserver:
        await fleet.taskserver("ts-1")
    for n in names:
        await fleet.agent(n)
    await fleet.wait_online(names)


async def add(fleet: Fleet, tmp_path, kind: str, name: str, text: str) -> None:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    code, _, err = await fleet.cli(kind, "add", str(path))
    assert code == 0, err


def job_doc(name: str, type_: str, steps: str) -> str:
    return f'name = "{name}"\ntype = "{type_}"\n{steps}'


def by_step(run: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for i in run["instances"]:
        out.setdefault(i["step"], []).append(i)
    return out


async def test_server_job_barrier_holds_every_step(fleet: Fleet, tmp_path):
    """[server step, client step where one computer sleeps 2 s, TS step] on 5 agents: no TS step
    starts before the slow client step ended, and the job succeeds."""
    await fleet_of(fleet, FIVE)
    await add(
        fleet,
        tmp_path,
        "task",
        "hello-ns",
        task_doc("hello-ns", "echo ns", type="run-script-on-server"),
    )
    await add(
        fleet,
        tmp_path,
        "task",
        "maybe-slow",
        task_doc("maybe-slow", 'if [ "%COMPUTERNAME%" = a-3 ]; then sleep 2; fi\necho done'),
    )
    await add(
        fleet,
        tmp_path,
        "task",
        "on-ts",
        task_doc("on-ts", "echo ts for %COMPUTERNAME%", type="run-script-on-taskserver"),
    )
    steps = (
        '[[steps]]\ntask = "hello-ns"\n[[steps]]\ntask = "maybe-slow"\n[[steps]]\ntask = "on-ts"\n'
    )
    await add(fleet, tmp_path, "job", "barrier", job_doc("barrier", "server-job", steps))
    async with fleet.admin() as c:
        started = await c.call("run.start", task="barrier", all=True)
        final = await wait_run(c, started["run_id"], 60)
    assert final["status"] == "succeeded", final
    steps_ = by_step(final)
    assert (
        len(steps_["hello-ns"]) == 1
        and len(steps_["maybe-slow"]) == 5
        and len(steps_["on-ts"]) == 5
    )
    slow_end = max(i["ended_at"] for i in steps_["maybe-slow"])
    first_ts = min(i["started_at"] for i in steps_["on-ts"])
    assert slow_end <= first_ts, "a TS step started before the slow client step ended"
    assert steps_["hello-ns"][0]["ended_at"] <= min(i["started_at"] for i in steps_["maybe-slow"])
    slow = next(i for i in steps_["maybe-slow"] if i["computer"] == "a-3")
    assert slow["ended_at"] - slow["started_at"] >= 2


async def test_server_job_condition_sends_every_computer_down_one_branch(fleet: Fleet, tmp_path):
    """One of 5 computers fails a step; the condition is evaluated once on the rolled-up step and
    the `failed` branch runs on all 5 together; the other branch runs nowhere."""
    await fleet_of(fleet, FIVE)
    await add(
        fleet,
        tmp_path,
        "task",
        "log",
        '{"name": "log", "type": "write-server-log", "params": {"message": "go"}}',
    )
    await add(fleet, tmp_path, "task", "check", task_doc("check", '[ "%COMPUTERNAME%" != a-4 ]'))
    await add(fleet, tmp_path, "task", "fix", task_doc("fix", "echo fixing %COMPUTERNAME%"))
    await add(fleet, tmp_path, "task", "fine", task_doc("fine", "echo fine"))
    steps = (
        '[[steps]]\ntask = "log"\n[[steps]]\ntask = "check"\n'
        "[[steps]]\nif = \"check.status == 'failed' and check.failed == 1 and check.total == 5\"\n"
        'then = [ { task = "fix" } ]\nelse = [ { task = "fine" } ]\n'
    )
    await add(fleet, tmp_path, "job", "branchy", job_doc("branchy", "server-job", steps))
    code, out, err = await fleet.cli("run", "branchy", "--all", "--wait", "--json")
    run = json.loads(out)
    assert code == 0, out + err
    assert run["status"] == "succeeded"
    for comp in run["computers"]:
        if comp["computer"] == "(server)":
            continue
        ids = [s["step"] for s in comp["steps"]]
        assert ids == ["check", "fix"], comp
        assert comp["steps"][1]["output"].strip() == f"fixing {comp['computer']}"
        assert all(
            s["started"] and s["finished"] and s["started"].endswith("Z") for s in comp["steps"]
        )
    check = {
        c["computer"]: c["steps"][0]["status"]
        for c in run["computers"]
        if c["computer"] != "(server)"
    }
    assert check == {n: ("failed" if n == "a-4" else "succeeded") for n in FIVE}


async def test_client_jobs_run_independently_and_fix_and_retry_per_computer(fleet: Fleet, tmp_path):
    """Client job: one computer sleeps 3 s in step 1 while the others finish all three steps first.
    Fix-and-retry: only the computer whose install fails gets the fix and the retry."""
    names = ["c-1", "c-2", "c-3"]
    await fleet_of(fleet, names)
    marks = tmp_path / "marks"
    marks.mkdir()
    await add(
        fleet,
        tmp_path,
        "task",
        "one",
        task_doc("one", 'if [ "%COMPUTERNAME%" = c-1 ]; then sleep 3; fi'),
    )
    await add(fleet, tmp_path, "task", "two", task_doc("two", "true"))
    await add(fleet, tmp_path, "task", "three", task_doc("three", "echo three on %COMPUTERNAME%"))
    steps = '[[steps]]\ntask = "one"\n[[steps]]\ntask = "two"\n[[steps]]\ntask = "three"\n'
    await add(fleet, tmp_path, "job", "independent", job_doc("independent", "client-job", steps))
    install = (
        f'if [ "%COMPUTERNAME%" = c-2 ] && [ ! -e {marks}/fixed ]; then exit 5; fi\necho installed'
    )
    await add(fleet, tmp_path, "task", "install-app", task_doc("install-app", install))
    await add(
        fleet, tmp_path, "task", "registry-fix", task_doc("registry-fix", f"touch {marks}/fixed")
    )
    await add(fleet, tmp_path, "task", "report-ok", task_doc("report-ok", "echo ok"))
    fix_steps = (
        '[[steps]]\nid = "install"\ntask = "install-app"\n'
        "[[steps]]\nif = \"install.status == 'failed'\"\n"
        'then = [ { task = "registry-fix" }, { id = "install-again", task = "install-app" } ]\n'
        'else = [ { task = "report-ok" } ]\n'
    )
    await add(
        fleet,
        tmp_path,
        "job",
        "install-with-fix",
        job_doc("install-with-fix", "client-job", fix_steps),
    )

    async with fleet.admin() as c:
        started = await c.call("run.start", task="independent", all=True)
        final = await wait_run(c, started["run_id"], 60)
        assert final["status"] == "succeeded", final
        steps_of = {
            n: {i["step"]: i for i in final["instances"] if i["computer"] == n and i["step"]}
            for n in names
        }
        slow_one_end = steps_of["c-1"]["one"]["ended_at"]
        for n in ("c-2", "c-3"):
            assert set(steps_of[n]) == {"one", "two", "three"}
            assert steps_of[n]["three"]["ended_at"] < slow_one_end, f"{n} waited for c-1"

        started = await c.call("run.start", task="install-with-fix", all=True)
        final = await wait_run(c, started["run_id"], 60)
    assert final["status"] == "succeeded", final
    ran = {
        n: sorted(i["step"] for i in final["instances"] if i["computer"] == n and i["step"])
        for n in names
    }
    assert ran["c-2"] == ["install", "install-again", "registry-fix"]
    assert ran["c-1"] == ran["c-3"] == ["install", "report-ok"]
    first = next(i for i in final["instances"] if i["computer"] == "c-2" and i["step"] == "install")
    assert first["status"] == "failed" and first["return_code"] == 5


async def test_task_server_steps_in_client_jobs_and_devices(fleet: Fleet, tmp_path):
    """A TS step inside a client job is run by the agent's TS for it; a device with no agent runs a
    client job made only of TS steps (its TS drives the job); a device in a server job's client
    step fails that step at once with "no agent" and the job fails."""
    await fleet_of(fleet, ["d-1"])
    async with fleet.admin() as c:
        await c.call("computers.add", name="switch-1", address="192.0.2.1")
    await add(fleet, tmp_path, "task", "local", task_doc("local", "echo local"))
    await add(
        fleet,
        tmp_path,
        "task",
        "via-ts",
        task_doc("via-ts", "echo %TASKSERVER% for %COMPUTERNAME%", type="run-script-on-taskserver"),
    )
    await add(fleet, tmp_path, "task", "srv", task_doc("srv", "true", type="run-script-on-server"))
    await add(
        fleet,
        tmp_path,
        "job",
        "mixed",
        job_doc("mixed", "client-job", '[[steps]]\ntask = "local"\n[[steps]]\ntask = "via-ts"\n'),
    )
    await add(
        fleet,
        tmp_path,
        "job",
        "ts-only",
        job_doc("ts-only", "client-job", '[[steps]]\ntask = "via-ts"\n'),
    )
    await add(
        fleet,
        tmp_path,
        "job",
        "needs-agent",
        job_doc(
            "needs-agent", "server-job", '[[steps]]\ntask = "srv"\n[[steps]]\ntask = "local"\n'
        ),
    )
    async with fleet.admin() as c:
        final = await wait_run(
            c, (await c.call("run.start", task="mixed", computers=["d-1"]))["run_id"]
        )
        assert final["status"] == "succeeded", final
        (ts_step,) = [i for i in final["instances"] if i["step"] == "via-ts"]
        assert ts_step["output"].strip() == "ts-1 for d-1"

        final = await wait_run(
            c, (await c.call("run.start", task="ts-only", computers=["switch-1"]))["run_id"]
        )
        assert final["status"] == "succeeded", final
        (ts_step,) = [i for i in final["instances"] if i["step"] == "via-ts"]
        assert ts_step["output"].strip() == "ts-1 for switch-1"

    code, out, err = await fleet.cli("run", "needs-agent", "--all", "--wait", "--json")
    assert code == 1
    assert "switch-1" in err and "no agent" in err  # warned before it starts
    run = json.loads(out)
    assert run["status"] == "failed"
    switch = next(c for c in run["computers"] if c["computer"] == "switch-1")
    assert switch["steps"][0]["status"] == "failed" and switch["steps"][0]["reason"] == "no agent"


async def test_ns_killed_during_a_barrier_step_carries_on(fleet: Fleet, tmp_path):
    """SIGKILL the NS while a server job waits at a client step, start it again on the same data
    folder and port: the job finishes, each step ran once per computer, nothing was dispatched twice."""
    marks = tmp_path / "marks"
    marks.mkdir()
    port = free_port()
    names = ["n-1", "n-2", "n-3"]
    await fleet_of(fleet, names, port=port)
    await add(
        fleet, tmp_path, "task", "first", task_doc("first", "true", type="run-script-on-taskserver")
    )
    await add(
        fleet,
        tmp_path,
        "task",
        "slow",
        task_doc("slow", f"echo x >> {marks}/%COMPUTERNAME%\nsleep 3"),
    )
    await add(
        fleet,
        tmp_path,
        "task",
        "last",
        task_doc("last", f"echo y >> {marks}/%COMPUTERNAME%", type="run-script-on-taskserver"),
    )
    steps = '[[steps]]\ntask = "first"\n[[steps]]\ntask = "slow"\n[[steps]]\ntask = "last"\n'
    await add(fleet, tmp_path, "job", "survivor", job_doc("survivor", "server-job", steps))
    async with fleet.admin() as c:
        run_id = (await c.call("run.start", task="survivor", all=True))["run_id"]

        async def slow_running():
            view = await c.call("run.show", run_id=run_id)
            return (
                sum(
                    1 for i in view["instances"] if i["step"] == "slow" and i["status"] == "running"
                )
                == 3
            )

        await until(slow_running, "the slow step running on all three")
    assert fleet.ns is not None
    fleet.ns.kill(signal.SIGKILL)
    await fleet.ns.wait()
    await fleet.server(port=port)
    async with fleet.admin() as c:
        final = await wait_run(c, run_id, 60)
    assert final["status"] == "succeeded", final
    steps_ = by_step(final)
    assert sorted(i["computer"] for i in steps_["slow"]) == names
    assert sorted(i["computer"] for i in steps_["last"]) == names
    for n in names:
        assert (marks / n).read_text() == "x\ny\n", f"{n} ran a step twice or skipped one"


async def test_agent_killed_during_a_client_job_resumes(fleet: Fleet, tmp_path):
    """SIGKILL an agent in the middle of a client job's step, start it again: the step that was
    running is `failed` ("agent restarted"), the job goes on from there, finished steps do not
    run again."""
    marks = tmp_path / "marks"
    marks.mkdir()
    await fleet_of(fleet, ["k-1"])
    await add(fleet, tmp_path, "task", "s1", task_doc("s1", f"echo 1 >> {marks}/s1"))
    await add(fleet, tmp_path, "task", "s2", task_doc("s2", f"echo 2 >> {marks}/s2\nsleep 30"))
    await add(fleet, tmp_path, "task", "s3", task_doc("s3", f"echo 3 >> {marks}/s3"))
    steps = '[[steps]]\ntask = "s1"\n[[steps]]\ntask = "s2"\non_failure = "continue"\n[[steps]]\ntask = "s3"\n'
    await add(fleet, tmp_path, "job", "resumable", job_doc("resumable", "client-job", steps))
    agent = next(p for p in fleet.procs if p.name == "k-1")
    async with fleet.admin() as c:
        run_id = (await c.call("run.start", task="resumable", computers=["k-1"]))["run_id"]

        async def s2_running():
            return (marks / "s2").exists()

        await until(s2_running, "step s2 running")
        agent.kill(signal.SIGKILL)
        await agent.wait()
        await fleet.agent("k-1")
        final = await wait_run(c, run_id, 60)
    assert final["status"] == "succeeded", final
    steps_ = {i["step"]: i for i in final["instances"] if i["step"]}
    assert steps_["s1"]["status"] == "succeeded"
    assert (
        steps_["s2"]["status"] == "failed"
        and steps_["s2"]["reason"] == "agent restarted while this step ran"
    )
    assert steps_["s3"]["status"] == "succeeded"
    assert (marks / "s1").read_text() == "1\n" and (marks / "s2").read_text() == "2\n"


async def test_server_job_holding_a_client_job_is_one_barrier_step(fleet: Fleet, tmp_path):
    """A client job inside a server job is one barrier step: every computer runs the client job
    through (its steps recorded as `outer/inner`), and the next server step waits for all."""
    names = ["m-1", "m-2"]
    await fleet_of(fleet, names)
    await add(
        fleet,
        tmp_path,
        "task",
        "a",
        task_doc("a", 'if [ "%COMPUTERNAME%" = m-2 ]; then sleep 1; fi'),
    )
    await add(fleet, tmp_path, "task", "b", task_doc("b", "echo b on %COMPUTERNAME%"))
    await add(
        fleet,
        tmp_path,
        "task",
        "after",
        task_doc("after", "echo after", type="run-script-on-server"),
    )
    await add(
        fleet,
        tmp_path,
        "job",
        "inner",
        job_doc("inner", "client-job", '[[steps]]\ntask = "a"\n[[steps]]\ntask = "b"\n'),
    )
    await add(
        fleet,
        tmp_path,
        "job",
        "outer",
        job_doc(
            "outer",
            "server-job",
            '[[steps]]\nid = "sub"\njob = "inner"\n[[steps]]\ntask = "after"\n',
        ),
    )
    code, out, err = await fleet.cli("run", "outer", "--all", "--wait", "--json")
    assert code == 0, out + err
    run = json.loads(out)
    comps = {c["computer"]: c for c in run["computers"]}
    for n in names:
        assert [s["step"] for s in comps[n]["steps"]] == ["sub", "sub/a", "sub/b"]
        assert all(s["status"] == "succeeded" for s in comps[n]["steps"])
    sub_end = max(s["finished"] for n in names for s in comps[n]["steps"])
    (after,) = comps["(server)"]["steps"]
    assert after["step"] == "after" and after["started"] >= sub_end
