"""Fleet lifecycle through the real ``taskfleet`` CLI on a real site (NS and agents as
processes): deleting computers, finding stale ones, runs that skip offline targets, groups,
filters and policies by verb (issue 19, "Fleet lifecycle")."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import Fleet, task_doc, until, wait_run


async def _offline(fleet: Fleet, name: str) -> None:
    """Start agent ``name``, wait until it is online, kill it, wait until the NS sees it gone."""
    proc = await fleet.agent(name)
    await fleet.wait_online([name])
    proc.kill()
    await proc.wait()
    async with fleet.admin() as c:

        async def gone() -> bool:
            rows = await c.call("computers.list")
            return any(r["name"] == name and not r["online"] for r in rows)

        await until(gone, f"{name} offline")


async def test_computers_delete_ends_its_work_closes_its_agent_keeps_history(
    fleet: Fleet, tmp_path: Path
):
    """A computer that left the fleet used to stay listed for ever, and `run --all` waited the
    whole time limit on it. `computers delete` must: end the computer's unfinished instances
    `stopped` ("the computer was deleted") so a run on it ends as soon as the others are done
    (not at its 60 s limit); drop it from `computers`; delete its key (the agent, cut off,
    comes back only as a pending key); keep the run's history by name; be audited; refuse an
    unknown name (exit 2) and `--keep-key` on an online computer (exit 2)."""
    await fleet.server()
    # pc-1 is accepted by an admin (no enrolment token): once its key is deleted it cannot
    # come back by itself. pc-2 stays; pc-3 is offline.
    busy = await fleet.agent("pc-1", enrol=False)
    async with fleet.admin() as c:

        async def pending() -> bool:
            return any(k["name"] == "pc-1" for k in await c.call("keys.list"))

        await until(pending, "pc-1's key pending")
        await c.call("keys.accept", names=["pc-1"])
    await fleet.agent("pc-2")
    await _offline(fleet, "pc-3")
    await fleet.wait_online(["pc-1", "pc-2"])

    doc = tmp_path / "work.toml"
    doc.write_text(
        task_doc(
            "work",
            'if [ "%COMPUTERNAME%" = pc-2 ]; then echo done; else sleep 50; fi',
            timeout_s=60,
        )
    )
    assert (await fleet.cli("task", "add", str(doc)))[0] == 0
    code, out, err = await fleet.cli("run", "work", "--all", "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    async with fleet.admin() as c:

        async def pc1_running() -> bool:
            run = await c.call("run.show", run_id=run_id)
            states = {i["computer"]: i["status"] for i in run["instances"]}
            return states.get("pc-1") == "running" and states.get("pc-2") == "succeeded"

        await until(pc1_running, "pc-1 running its task and pc-2 done")

        code, _, err = await fleet.cli("computers", "delete", "pc-1", "nope")
        assert code == 2 and "nope" in err, err
        code, _, err = await fleet.cli("computers", "delete", "pc-1", "--keep-key")
        assert code == 2 and "online" in err and "pc-1" in err, err

        code, out, err = await fleet.cli("computers", "delete", "pc-1", "pc-3")
        assert code == 0, err
        assert "deleted pc-1, pc-3" in out and "2 unfinished instance(s) stopped" in out, out

        final = await wait_run(c, run_id, timeout_s=20)
        assert final["status"] != "running"
        by_name = {i["computer"]: i for i in final["instances"]}
        assert sorted(by_name) == ["pc-1", "pc-2", "pc-3"]  # the history keeps their names
        for name in ("pc-1", "pc-3"):
            assert by_name[name]["status"] == "stopped"
            assert by_name[name]["reason"] == "the computer was deleted"
            assert by_name[name]["computer_id"] is None
        assert by_name["pc-2"]["status"] == "succeeded"

        names = [r["name"] for r in await fleet.cli_json("computers")]
        assert names == ["pc-2"]

        # pc-1's agent was closed; its key is gone, so it comes back only as a pending key.
        async def pc1_pending_again() -> bool:
            keys = {k["name"]: k["state"] for k in await c.call("keys.list")}
            return keys.get("pc-1") == "pending"

        await until(pc1_pending_again, "pc-1 cut off and pending again")
        assert "pc-1" not in [r["name"] for r in await c.call("computers.list")]
        assert busy.proc is not None and busy.proc.returncode is None  # it waits, not crashed

        audit = await c.call("audit.list")
        assert any(a["action"] == "computers.delete" and a["outcome"] == "ok" for a in audit)

        code, out, err = await fleet.cli("runs", "show", str(run_id), "--json")
        assert code == 0 and "pc-1" in out, err


async def test_computers_offline_for_lists_stale_agents_only(fleet: Fleet):
    """`computers --offline-for DURATION` must list computers whose agent has been offline at
    least that long, and neither online ones nor devices (never seen, having no agent); the
    7d, 12h, 30m forms are taken, a malformed one is a usage error (exit 2)."""
    await fleet.server()
    await fleet.agent("pc-1")
    await _offline(fleet, "pc-old")
    await fleet.wait_online(["pc-1"])
    code, _, err = await fleet.cli("computers", "add", "printer-1", "--address", "192.0.2.9")
    assert code == 0, err

    for form in ("7d", "12h", "30m"):
        assert await fleet.cli_json("computers", "--offline-for", form) == []

    async def stale() -> bool:
        rows = await fleet.cli_json("computers", "--offline-for", "1s")
        return [r["name"] for r in rows] == ["pc-old"]

    await until(stale, "pc-old offline for a second", timeout_s=20, every_s=0.3)
    code, out, _ = await fleet.cli("computers", "--offline-for", "1s")
    assert code == 0 and "pc-old" in out and "pc-1" not in out and "printer-1" not in out
    code, _, err = await fleet.cli("computers", "--offline-for", "7x")
    assert code == 2 and "7x" in err, err


async def test_run_warns_of_offline_targets_and_online_only_skips_them(
    fleet: Fleet, tmp_path: Path
):
    """`run` must say at its start how many targets are offline (they would hold the run until
    its time limit), and `--online-only` must start the run on the online ones only, saying
    how many it skipped, so the run ends as soon as they are done. A task-server or server
    task gets no such warning; with every target offline, `--online-only` is a usage error."""
    await fleet.server()
    await fleet.agent("pc-1")
    await _offline(fleet, "pc-2")
    await fleet.wait_online(["pc-1"])
    doc = tmp_path / "hello.toml"
    doc.write_text(task_doc("hello", "echo hello", timeout_s=60))
    assert (await fleet.cli("task", "add", str(doc)))[0] == 0

    code, out, err = await fleet.cli("run", "hello", "--all")
    assert code == 0, err
    assert "1 of 2 targets are offline: they run when they connect, until the time limit" in err, (
        err
    )

    code, out, err = await fleet.cli("run", "hello", "--all", "--online-only", "--json")
    assert code == 0, err
    started = json.loads(out)
    assert started["targets"] == 1 and started["skipped_offline"] == 1, started
    assert "1 offline target(s) skipped" in err and "are offline:" not in err, err
    async with fleet.admin() as c:
        final = await wait_run(c, started["run_id"], timeout_s=20)
    assert final["status"] == "succeeded"
    assert [i["computer"] for i in final["instances"]] == ["pc-1"]

    code, out, err = await fleet.cli("run", "hello", "--computer", "pc-2", "--online-only")
    assert code == 2 and "offline" in err, err

    (tmp_path / "ts.toml").write_text(
        task_doc("on-ts", "echo ts", type="run-script-on-taskserver", timeout_s=60)
    )
    assert (await fleet.cli("task", "add", str(tmp_path / "ts.toml")))[0] == 0
    code, _, err = await fleet.cli("run", "on-ts", "--all")
    assert code == 0 and "offline" not in err, err


async def test_groups_and_filters_by_verb_and_the_readme_sequence(fleet: Fleet, tmp_path: Path):
    """The README's `taskfleet groups add web; taskfleet run hello --group web` failed: the
    group stayed empty, no verb filled it. Now `groups add-member` fills it and the README's
    run reaches its members; `groups show` gives members and nested groups; `remove-member`
    takes one out; `groups delete` and `filters delete` are refused while a policy (or a
    nested group) names them, naming it, and work once it is gone; `filters show` gives a
    filter's members. Unknown computers are refused (exit 2) and nothing is added."""
    await fleet.server()
    await fleet.agent("pc-1")
    await fleet.agent("pc-2")
    await fleet.wait_online(["pc-1", "pc-2"])
    async with fleet.admin() as c:  # what is not under test goes through one connection
        await c.call("task.add", text=task_doc("hello", "echo hello from %COMPUTERNAME%"))

    # As the README prints it.
    assert (await fleet.cli("groups", "add", "web"))[0] == 0
    code, _, err = await fleet.cli("run", "hello", "--group", "web")
    assert code == 2 and "hold no computers" in err, err  # empty: the step the README shows
    code, _, err = await fleet.cli("groups", "add-member", "web", "pc-1", "ghost")
    assert code == 2 and "ghost" in err, err
    code, out, err = await fleet.cli("groups", "add-member", "web", "pc-1", "pc-2")
    assert code == 0 and "2 computer(s) added" in out, out + err
    code, out, err = await fleet.cli("run", "hello", "--group", "web")
    assert code == 0, err
    found = re.search(r"started run (\d+) on 2 target", out)
    assert found, out
    async with fleet.admin() as c:
        final = await wait_run(c, int(found.group(1)))
    assert final["status"] == "succeeded"
    assert sorted(i["computer"] for i in final["instances"]) == ["pc-1", "pc-2"]

    async with fleet.admin() as c:
        await c.call("groups.add", name="api", parent="web")
        await c.call("computers.add", name="printer-1")
    assert (await fleet.cli("groups", "add-member", "api", "printer-1"))[0] == 0
    shown = await fleet.cli_json("groups", "show", "web")
    assert shown["groups"] == ["api"] and shown["parent"] is None
    assert [m["name"] for m in shown["members"]] == ["pc-1", "pc-2"]
    assert shown["computers"] == 3  # a run on web reaches api's printer too
    code, out, _ = await fleet.cli("groups", "show", "web")
    assert code == 0 and "nested groups: api" in out and "pc-2" in out

    code, out, err = await fleet.cli("groups", "remove-member", "web", "pc-2")
    assert code == 0 and "1 computer(s) removed" in out, out + err
    async with fleet.admin() as c:
        shown = await c.call("groups.show", group="web")
    assert [m["name"] for m in shown["members"]] == ["pc-1"]

    # A filter and a policy that names group api and the filter.
    async with fleet.admin() as c:
        await c.call("filter.add", text='name = "first"\nquery = "computer.name == \'pc-1\'"\n')
        await c.call(
            "policy.add",
            text='name = "keep"\ntask = "hello"\nenabled = false\n[schedule]\nevery_s = 3600\n'
            '[targets]\ngroups = ["api"]\nfilters = ["first"]\n',
        )
    shown = await fleet.cli_json("filters", "show", "first")
    assert [m["name"] for m in shown["members"]] == ["pc-1"] and shown["query"]

    code, _, err = await fleet.cli("groups", "delete", "web")
    assert code == 2 and "group api" in err, err
    code, _, err = await fleet.cli("groups", "delete", "api")
    assert code == 2 and "policy keep" in err, err
    code, _, err = await fleet.cli("filters", "delete", "first")
    assert code == 2 and "keep" in err, err
    async with fleet.admin() as c:
        await c.call("policy.delete", name="keep")
    code, out, err = await fleet.cli("groups", "delete", "api")
    assert code == 0 and "deleted group api" in out, out + err
    assert (await fleet.cli("groups", "delete", "web"))[0] == 0
    assert (await fleet.cli("filters", "delete", "first"))[0] == 0
    code, _, err = await fleet.cli("filters", "show", "first")
    assert code == 2 and "no filter named 'first'" in err, err
    async with fleet.admin() as c:
        assert await c.call("groups.list") == [] and await c.call("filters.list") == []
        names = sorted(r["name"] for r in await c.call("computers.list"))
    assert names == ["pc-1", "pc-2", "printer-1"]  # the computers stayed


async def test_policy_enable_disable_delete_reach_agents_without_a_tickle(
    fleet: Fleet, tmp_path: Path
):
    """`policy enable|disable|delete NAME` are verbs, audited, and a change reaches the
    connected agents the policy targets at once, with no separate tickle: enabling starts the
    policy's runs on the agent, disabling stops them (while another policy, enabled after it,
    keeps running: the agent has its new set), deleting removes it. Unknown names: exit 2."""
    await fleet.server()
    await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])
    marks = {name: tmp_path / f"{name}.marks" for name in ("a", "b")}
    async with fleet.admin() as c:
        for name, path in marks.items():
            await c.call("task.add", text=task_doc(f"mark-{name}", f"echo x >> {path}"))
            await c.call(
                "policy.add",
                text=f'name = "{name}"\ntask = "mark-{name}"\nenabled = false\n'
                '[schedule]\nevery_s = 1\n[targets]\ncomputers = ["pc-1"]\n',
            )

    def lines(name: str) -> int:
        path = marks[name]
        return len(path.read_text().splitlines()) if path.exists() else 0

    async def runs_of(name: str, at_least: int) -> bool:
        return lines(name) >= at_least

    code, out, err = await fleet.cli("policy", "enable", "a")
    assert code == 0 and "policy a enabled; 1 connected agent(s) get it now" in out, out + err
    await until(lambda: runs_of("a", 2), "policy a running on pc-1", timeout_s=20)

    code, out, err = await fleet.cli("policy", "disable", "a")
    assert code == 0 and "policy a disabled" in out, out + err
    code, out, err = await fleet.cli("policy", "enable", "b")
    assert code == 0, err
    # b's runs are the clock: once b ran three times, a's set (without a) had long arrived.
    await until(lambda: runs_of("b", 1), "policy b running on pc-1", timeout_s=20)
    after = lines("a")
    await until(lambda: runs_of("b", 4), "policy b ran three more times", timeout_s=20)
    assert lines("a") <= after + 1, "policy a still runs after `policy disable a`"

    code, out, err = await fleet.cli("policy", "delete", "b")
    assert code == 0 and "deleted policy b; 1 connected agent(s) get it now" in out, out + err
    code, out, _ = await fleet.cli("policy", "disable", "a")
    assert code == 0 and "already disabled" in out
    code, _, err = await fleet.cli("policy", "enable", "nope")
    assert code == 2 and "no policy named 'nope'" in err, err
    async with fleet.admin() as c:
        assert [p["name"] for p in await c.call("policies.list")] == ["a"]
        actions = [a["action"] for a in await c.call("audit.list")]
    assert {"policy.enable", "policy.disable", "policy.delete"} <= set(actions)
