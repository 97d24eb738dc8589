"""The hierarchy (issue 24, docs/hierarchy.md) with real NS processes: a child links to its
parent over TLS with its key and a child token, replicated items reach children and
grandchildren, read-only there, clashes are reported and never overwritten, a loop is refused,
and replicate-hierarchy reports each child."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from admin.client import AdminClient
from protocol.errors import RemoteError
from tests.helpers import Fleet, Proc, free_port, task_doc, until, wait_run

REPLICATION_BOUND_S = 20.0
"""How long a test waits for a change to reach a child: the claim is 5 s; this bound is generous
so that a loaded machine does not fail the test (the lag measured is printed, not asserted)."""


def replicated(name: str, script: str = "echo hi") -> str:
    """A task document marked ``replicate = true`` (top level, before its tables)."""
    return "replicate = true\n" + task_doc(name, script)


async def task_on(c: AdminClient, name: str) -> dict[str, Any] | None:
    """The task ``name`` as ``tasks.list`` shows it on that NS, or None."""
    return next((t for t in await c.call("tasks.list") if t["name"] == name), None)


async def wait_task(c: AdminClient, name: str, what: str, test: Any = None) -> tuple[dict, float]:
    """Poll until the task is there (and ``test(row)`` holds); return it and the seconds it took."""
    started = time.monotonic()

    async def there() -> dict[str, Any] | None:
        row = await task_on(c, name)
        return row if row is not None and (test is None or test(row)) else None

    row = await until(there, what, REPLICATION_BOUND_S)
    return row, time.monotonic() - started


async def hq(fleet: Fleet) -> Proc:
    return await fleet.server("hq", 0, "--name", "hq")


async def test_a_child_links_and_the_parent_lists_it(fleet):
    parent = await hq(fleet)
    await fleet.child_server("site-a", parent)
    await fleet.child_server("site-b", parent, token_via="env")
    rows = await fleet.cli_on(parent, "children", "--json")
    assert rows[0] == 0, rows[2]
    listed = {r["name"]: r for r in json.loads(rows[1])}
    assert set(listed) == {"site-a", "site-b"}
    assert all(r["connected"] for r in listed.values())
    assert listed["site-a"]["ns_id"].startswith("site-a:SHA256:")
    assert listed["site-a"]["linked"].endswith("Z")  # an ISO 8601 time, as every --json verb
    assert listed["site-a"]["lag_s"] == 0.0 and listed["site-a"]["clashes"] == []
    code, _, err = await fleet.cli_on(parent, "children", "show", "nowhere")
    assert code == 2 and "no child NS named 'nowhere'" in err
    code, out, err = await fleet.cli_on(parent, "children")
    assert code == 0, err
    assert "NAME" in out and "LAG" in out and "site-a" in out and "site-b" in out
    code, out, err = await fleet.cli_on(parent, "tokens", "create", "--for", "child")
    assert code == 0 and "enrolment token #" in out and " for child NS " in out, (out, err)
    # The child's key is a key of role child at the parent.
    async with fleet.admin_of(parent) as c:
        keys = {(k["role"], k["name"]) for k in await c.call("keys.list")}
    assert ("child", "site-a") in keys and ("child", "site-b") in keys


async def test_a_child_given_a_pair_of_addresses_links_to_the_one_that_answers(fleet):
    """A parent that is an active/standby pair is given as URL1,URL2: the child tries each in
    turn (a standby's port refuses), so it links through the second when the first is shut."""
    parent = await hq(fleet)
    shut = f"wss://127.0.0.1:{free_port()}"  # nothing listens there, as on a standby
    await fleet.child_server("site-a", parent, parent_url=f"{shut},{parent.url}")
    row = await fleet.wait_linked(parent, "site-a")
    assert row["connected"]


async def test_a_replicated_task_reaches_children_and_a_grandchild(fleet):
    parent = await hq(fleet)
    child = await fleet.child_server("site-a", parent)
    grandchild = await fleet.child_server("branch-1", child)
    async with (
        fleet.admin_of(parent) as top,
        fleet.admin_of(child) as mid,
        fleet.admin_of(grandchild) as low,
    ):
        await top.call("task.add", text=replicated("shared", "echo one"), filename="shared.toml")
        await top.call("task.add", text=task_doc("local-only", "echo no"), filename="l.toml")
        row, lag_child = await wait_task(mid, "shared", "the task on the child")
        _, lag_grandchild = await wait_task(low, "shared", "the task on the grandchild")
        print(f"replication lag: child {lag_child:.2f} s, grandchild {lag_grandchild:.2f} s")
        assert row.get("origin") == "hq"
        assert await task_on(mid, "local-only") is None  # not marked: stays on the parent

        # A change goes down too.
        await top.call("task.add", text=replicated("shared", "echo two"), filename="shared.toml")

        async def changed(c: AdminClient) -> bool:
            shown = await c.call("task.show", name="shared")
            return "echo two" in json.dumps(shown)

        await until(lambda: changed(mid), "the change on the child", REPLICATION_BOUND_S)
        await until(lambda: changed(low), "the change on the grandchild", REPLICATION_BOUND_S)

        # And a delete.
        await top.call("task.delete", name="shared")

        async def gone(c: AdminClient) -> bool:
            return await task_on(c, "shared") is None

        await until(lambda: gone(mid), "the delete on the child", REPLICATION_BOUND_S)
        await until(lambda: gone(low), "the delete on the grandchild", REPLICATION_BOUND_S)


async def test_items_from_the_parent_are_read_only_on_the_child(fleet):
    parent = await hq(fleet)
    child = await fleet.child_server("site-a", parent)
    async with fleet.admin_of(parent) as top, fleet.admin_of(child) as mid:
        await top.call("task.add", text=replicated("shared"), filename="shared.toml")
        await wait_task(mid, "shared", "the task on the child")
        with pytest.raises(RemoteError) as refused:
            await mid.call("task.add", text=replicated("shared", "echo mine"), filename="s.toml")
        assert refused.value.code == "read_only"
        assert "hq" in refused.value.message
    code, _, err = await fleet.cli_on(child, "task", "delete", "shared")
    assert code != 0
    assert "comes from the parent NS hq" in err
    async with fleet.admin_of(child) as mid:
        assert await task_on(mid, "shared") is not None
        trail = await mid.call("audit.list", who="parent:hq")
    assert any(r["action"] == "hier.changes" and "task shared" in r["detail"] for r in trail)


async def test_a_clash_with_a_childs_own_item_is_reported_and_not_overwritten(fleet):
    parent = await hq(fleet)
    child = await fleet.child_server("site-a", parent)
    async with fleet.admin_of(parent) as top, fleet.admin_of(child) as mid:
        await mid.call("task.add", text=task_doc("backup", "echo site-a's own"), filename="b.toml")
        await top.call("task.add", text=replicated("backup", "echo from hq"), filename="b.toml")
        await top.call("task.add", text=replicated("other"), filename="o.toml")
        await wait_task(mid, "other", "the next replicated task on the child")

        async def clash_shown() -> dict[str, Any] | None:
            row = await top.call("children.show", name="site-a")
            return row if row["clashes"] else None

        row = await until(clash_shown, "the clash at the parent", REPLICATION_BOUND_S)
        assert {"kind": "task", "name": "backup"} in row["clashes"]
        own = await mid.call("task.show", name="backup")
        assert "site-a's own" in json.dumps(own) and "from hq" not in json.dumps(own)
        assert (await task_on(mid, "backup") or {}).get("origin", "") == ""
    code, out, err = await fleet.cli_on(parent, "children", "show", "site-a")
    assert code == 0, err
    assert "task backup" in out
    code, out, _ = await fleet.cli_on(parent, "children", "show", "site-a", "--json")
    assert json.loads(out)["clashes"] == [{"kind": "task", "name": "backup"}]


async def test_a_loop_is_refused_at_the_handshake(fleet):
    top = await hq(fleet)
    child = await fleet.child_server("site-a", top)
    # hq now starts again as a child of its own child: refused, and it keeps serving.
    top.kill(15)
    await top.wait()
    token = await fleet.child_token(child)
    path = fleet.root / "loop.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    again = fleet._proc(
        "hq-again",
        [
            *top.args,  # its own data and store (PostgreSQL under --store=postgresql)
            "--parent",
            child.url,
            "--parent-fingerprint",
            child.fingerprint,
            "--enrol-token-file",
            str(path),
        ],
    )
    await again.start()
    again.admin_token = top.admin_token
    await until(
        lambda: _logged(again, "hierarchy_loop"), "hq logs the loop refusal", REPLICATION_BOUND_S
    )
    text = again.log()
    assert "parent_refused" in text and "site-a" in text and "hq" in text
    assert again.proc is not None and again.proc.returncode is None  # still serving
    async with fleet.admin_of(again) as c:
        assert await c.call("whoami")
    async with fleet.admin_of(child) as c:
        assert await c.call("children.list") == []
        tokens = {t["id"]: t for t in await c.call("tokens.list")}
    assert any(t["role"] == "child" and t["uses_left"] == 1 for t in tokens.values())


async def _logged(proc: Proc, text: str) -> bool:
    return text in proc.log()


async def test_an_agent_token_cannot_link_a_child(fleet):
    parent = await hq(fleet)
    agent_token = await fleet.child_token(parent, role="agent")
    child = await fleet.child_server("site-x", parent, token=agent_token, wait_linked=False)
    await until(
        lambda: _logged(child, "parent_refused"), "the child logs the refusal", REPLICATION_BOUND_S
    )
    assert "enrol_token_refused" in child.log()
    async with fleet.admin_of(parent) as c:
        assert await c.call("children.list") == []
        assert ("child", "site-x", "accepted") not in {
            (k["role"], k["name"], k["state"]) for k in await c.call("keys.list")
        }
    assert child.proc is not None and child.proc.returncode is None  # the NS goes on serving


async def test_replicate_hierarchy_reports_each_child_and_the_tier_below(fleet):
    parent = await hq(fleet)
    child = await fleet.child_server("site-a", parent)
    await fleet.child_server("branch-1", child)
    async with fleet.admin_of(parent) as top, fleet.admin_of(child) as mid:
        await top.call("task.add", text=replicated("shared"), filename="s.toml")
        await mid.call("task.add", text=task_doc("clash", "echo own"), filename="c.toml")
        await top.call("task.add", text=replicated("clash"), filename="c.toml")
        await top.call(
            "task.add",
            document={"name": "rep", "type": "replicate-hierarchy", "params": {}},
        )
        started = await top.call("run.start", task="rep", computers=[])
        final = await wait_run(top, started["run_id"], 60)
    inst = final["instances"][0]
    assert inst["status"] == "succeeded", inst
    lines = inst["output"].splitlines()
    assert lines[0].startswith("site-a: connected, sent 2 items")
    assert "clashes 1 (task clash)" in lines[0]
    assert lines[1].startswith("  branch-1: connected, sent 1 items")
    assert "lag" in lines[1]


async def test_replicate_hierarchy_with_no_children_says_so(fleet):
    parent = await hq(fleet)
    async with fleet.admin_of(parent) as c:
        await c.call("task.add", document={"name": "rep", "type": "replicate-hierarchy"})
        started = await c.call("run.start", task="rep", computers=[])
        final = await wait_run(c, started["run_id"], 60)
    inst = final["instances"][0]
    assert inst["status"] == "succeeded"
    assert inst["output"].strip() == "no children linked: nothing to replicate"


async def test_bad_parent_flags_are_usage_errors(fleet, tmp_path):
    cases = [
        (["--parent-fingerprint", "SHA256:" + "a" * 64], "give --parent URL"),
        (["--parent", "wss://127.0.0.1:1"], "--parent-fingerprint"),
        (["--parent", "https://127.0.0.1:1", "--parent-ca", "x"], "not a server URL"),
        (["--enrol-token-file", str(tmp_path / "none")], "cannot read"),
    ]
    token = tmp_path / "t"
    token.write_text("tfe_x\n")
    cases.append((["--enrol-token-file", str(token)], "give --parent URL"))
    for n, (args, said) in enumerate(cases):
        proc = await fleet._proc(
            f"bad-{n}",
            ["server", "--data", str(tmp_path / "bad"), "--listen", "127.0.0.1:0", *args],
        ).start(wait_ready=False)
        assert await proc.wait(30) == 2, (args, proc.log())
        assert said in proc.log(), (args, proc.log())
        assert not (tmp_path / "bad").exists()  # nothing written


async def test_groups_filters_jobs_and_policies_go_down_with_their_flag(fleet):
    parent = await hq(fleet)
    child = await fleet.child_server("site-a", parent)
    async with fleet.admin_of(parent) as top, fleet.admin_of(child) as mid:
        await top.call("groups.add", name="servers", replicate=True)
        await top.call("groups.add", name="desks")  # not flagged: stays
        await top.call(
            "filter.add",
            document={"name": "linux", "query": "computer.os == 'linux'", "replicate": True},
        )
        await top.call("task.add", text=replicated("step"), filename="step.toml")
        await top.call(
            "job.add",
            document={
                "name": "roll-out",
                "type": "client-job",
                "replicate": True,
                "steps": [{"id": "a", "task": "step"}],
            },
        )
        await top.call(
            "policy.add",
            document={
                "name": "nightly",
                "task": "step",
                "schedule": {"daily_at": "02:00"},
                "replicate": True,
            },
        )

        async def arrived() -> bool:
            groups = {g["name"] for g in await mid.call("groups.list")}
            filters = {f["name"]: f for f in await mid.call("filters.list")}
            jobs = {j["name"] for j in await mid.call("jobs.list")}
            policies = {p["name"]: p for p in await mid.call("policies.list")}
            return (
                "servers" in groups
                and "linux" in filters
                and "roll-out" in jobs
                and "nightly" in policies
                and filters["linux"]["origin"] == "hq"
                and policies["nightly"]["origin"] == "hq"
            )

        await until(arrived, "group, filter, job and policy on the child", REPLICATION_BOUND_S)
        assert "desks" not in {g["name"] for g in await mid.call("groups.list")}


async def test_a_child_back_from_a_restart_gets_what_changed_meanwhile_in_order(fleet):
    parent = await hq(fleet)
    child = await fleet.child_server("site-a", parent)
    async with fleet.admin_of(parent) as top:
        await top.call("task.add", text=replicated("a", "echo a1"), filename="a.toml")
        await top.call("task.add", text=replicated("b"), filename="b.toml")
        async with fleet.admin_of(child) as mid:
            await wait_task(mid, "b", "b on the child")
        child.kill(15)
        await child.wait()
        await until(lambda: _not_connected(top, "site-a"), "the parent sees the child go", 30)
        await top.call("task.add", text=replicated("a", "echo a2"), filename="a.toml")
        await top.call("task.delete", name="b")
        await top.call("task.add", text=replicated("c"), filename="c.toml")
    # The same data folder, key and token file: its key is accepted already.
    back = await fleet._proc("site-a-back", child.args).start()
    back.admin_token = child.admin_token
    await fleet.wait_linked(parent, "site-a")
    async with fleet.admin_of(back) as mid:
        await wait_task(mid, "c", "c on the child after its restart")

        async def caught_up() -> bool:
            shown = json.dumps(await mid.call("task.show", name="a"))
            return "echo a2" in shown and await task_on(mid, "b") is None

        await until(caught_up, "the change and the delete on the child", REPLICATION_BOUND_S)
    # The parent process had sent it everything before: it sent only what changed.
    assert "full=False" in parent.log() or '"full": false' in parent.log()


async def _not_connected(c: AdminClient, name: str) -> bool:
    rows = {r["name"]: r for r in await c.call("children.list")}
    return name in rows and not rows[name]["connected"]


async def test_rejecting_a_childs_key_cuts_its_link(fleet):
    parent = await hq(fleet)
    child = await fleet.child_server("site-a", parent)
    async with fleet.admin_of(parent) as top:
        await top.call("keys.reject", name="site-a")
        await until(lambda: _not_connected(top, "site-a"), "the link cut", REPLICATION_BOUND_S)
        await until(
            lambda: _logged(child, "parent_refused"), "the child told why", REPLICATION_BOUND_S
        )
        assert "rejected" in child.log()
        assert (await top.call("children.list"))[0]["connected"] is False


async def test_a_child_with_no_token_waits_for_keys_accept(fleet):
    parent = await hq(fleet)
    await fleet.child_server("site-p", parent, token_via="none", wait_linked=False)
    async with fleet.admin_of(parent) as top:

        async def pending() -> bool:
            keys = {(k["role"], k["name"], k["state"]) for k in await top.call("keys.list")}
            return ("child", "site-p", "pending") in keys

        await until(pending, "the child's key pending at the parent", REPLICATION_BOUND_S)
        assert await top.call("children.list") == []
        await top.call("keys.accept", names=["site-p"])
    await fleet.wait_linked(parent, "site-p")
