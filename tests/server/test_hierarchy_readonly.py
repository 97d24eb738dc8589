"""Items a child NS took from its parent are read-only there: every admin operation that would
save, change or delete one is refused (``read_only``, naming the parent) and changes nothing;
a group's members stay the child's own business. Listings show where each item came from, and
``groups add --replicate`` flags a group for the children. Against a real in-process NS and a
real admin connection."""

from __future__ import annotations

from typing import Any

import pytest

from admin.client import AdminClient
from protocol.errors import RemoteError
from protocol.tasks import parse_document, validate_task
from tests.helpers import INSECURE, task_doc, wait_run

PARENT = "top"


def task(name: str, **flags: bool) -> dict[str, Any]:
    doc = parse_document(task_doc(name, "echo hi"), filename=f"{name}.toml")
    return validate_task({**doc, **flags}).to_dict()


FROM_PARENT = [
    {"seq": 1, "kind": "group", "name": "zone", "doc": {"name": "zone", "replicate": True}},
    {"seq": 2, "kind": "task", "name": "t", "doc": task("t", replicate=True)},
    {
        "seq": 3,
        "kind": "job",
        "name": "j",
        "doc": {"name": "j", "type": "client-job", "description": "", "steps": [{"task": "t"}]},
    },
    {
        "seq": 4,
        "kind": "policy",
        "name": "p",
        "doc": {
            "name": "p",
            "task": "t",
            "enabled": True,
            "schedule": {"every_s": 60},
            "targets": {},
            "description": "",
        },
    },
    {
        "seq": 5,
        "kind": "filter",
        "name": "f",
        "doc": {"name": "f", "query": 'computer.os == "Linux"', "description": ""},
    },
]

_POLICY = 'name = "p"\ntask = "t"\n[schedule]\nevery_s = 30\n'
_FILTER = 'name = "f"\nquery = "computer.online == 1"\n'
_JOB = 'name = "j"\ntype = "client-job"\n[[steps]]\ntask = "t"\nid = "again"\n'

REFUSED = [
    ("task", "t", "task.add", {"text": task_doc("t", "echo mine"), "filename": "t.toml"}),
    ("task", "t", "task.delete", {"name": "t"}),
    ("job", "j", "job.add", {"text": _JOB, "filename": "j.toml"}),
    ("job", "j", "job.delete", {"name": "j"}),
    ("policy", "p", "policy.add", {"text": _POLICY, "filename": "p.toml"}),
    ("policy", "p", "policy.disable", {"name": "p"}),
    ("policy", "p", "policy.delete", {"name": "p"}),
    ("filter", "f", "filter.add", {"text": _FILTER, "filename": "f.toml"}),
    ("filter", "f", "filters.delete", {"name": "f"}),
    ("group", "zone", "groups.add", {"name": "zone"}),
    ("group", "zone", "groups.delete", {"group": "zone"}),
]


async def everything(c: AdminClient) -> dict[str, Any]:
    """What the admin can see of every item kind."""
    return {
        op: await c.call(op)
        for op in ("tasks.list", "jobs.list", "policies.list", "filters.list", "groups.list")
    }


@pytest.mark.parametrize(("kind", "name", "op", "args"), REFUSED, ids=[r[2] for r in REFUSED])
async def test_a_change_to_an_item_from_the_parent_is_refused_and_changes_nothing(
    ns, kind, name, op, args
):
    await ns.db.apply_from_parent(PARENT, FROM_PARENT, full=False, upto=5)
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        before = await everything(c)
        with pytest.raises(RemoteError) as refused:
            await c.call(op, **args)
        assert refused.value.code == "read_only"
        assert refused.value.message == (
            f"{kind} {name} comes from the parent NS {PARENT}: change it there"
        )
        assert await everything(c) == before


async def test_the_childs_own_items_and_the_members_of_a_parents_group_stay_editable(ns):
    await ns.db.apply_from_parent(PARENT, FROM_PARENT, full=False, upto=5)
    await ns.db.register_agent("pc-1", {"os": "Linux"})
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        added = await c.call("groups.add_member", group="zone", computers=["pc-1"])
        assert added["added"] == 1
        shown = await c.call("groups.show", group="zone")
        assert (shown["origin"], shown["replicate"]) == (PARENT, True)
        assert [m["name"] for m in shown["members"]] == ["pc-1"]
        mine = await c.call("task.add", text=task_doc("mine", "echo mine"), filename="m.toml")
        assert mine["version"] == 1
        assert (await c.call("task.delete", name="mine"))["deleted"] == "mine"


async def test_listings_show_where_each_item_came_from(ns):
    await ns.db.apply_from_parent(PARENT, FROM_PARENT, full=False, upto=5)
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        await c.call("task.add", text=task_doc("mine", "echo mine"), filename="m.toml")
        tasks = {t["name"]: t for t in await c.call("tasks.list")}
        assert (tasks["t"]["origin"], tasks["mine"]["origin"]) == (PARENT, "")
        assert tasks["t"]["replicate"] is True and "replicate" not in tasks["mine"]
        for op in ("jobs.list", "policies.list", "filters.list", "groups.list"):
            assert [r["origin"] for r in await c.call(op)] == [PARENT], op
        items = {i["id"]: i["origin"] for i in await c.call("items.list")}
        assert items == {
            "task:t": PARENT,
            "task:mine": "",
            "job:j": PARENT,
            "policy:p": PARENT,
            "filter:f": PARENT,
        }


async def test_groups_add_replicate_flags_the_group_for_the_children(ns):
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        await c.call("groups.add", name="sites", replicate=True)
        await c.call("groups.add", name="lab")
        groups = {g["name"]: g for g in await c.call("groups.list")}
        assert (groups["sites"]["replicate"], groups["lab"]["replicate"]) == (True, False)
        with pytest.raises(RemoteError) as bad:
            await c.call("groups.add", name="x", replicate="yes")
        assert bad.value.code == "bad_request" and "'replicate'" in bad.value.message
    assert [(ch["kind"], ch["name"], ch["doc"]) for ch in await ns.db.changes_after(0)] == [
        ("group", "sites", {"name": "sites", "parent": None, "replicate": True})
    ]


async def test_a_flag_that_is_not_a_boolean_is_refused_naming_it(ns):
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        text = task_doc("t", "echo hi").replace("[params]", 'replicate = "yes"\n[params]')
        with pytest.raises(RemoteError) as bad:
            await c.call("task.add", text=text, filename="t.toml")
        assert bad.value.code == "invalid_document"
        assert "replicate: must be true or false" in bad.value.message
        assert await c.call("tasks.list") == []


SERVER_TASKS = [
    ("rm", "delete-item", {"item": "task:t"}, "task t"),
    ("mv", "move-item", {"item": "filter:f", "folder": "/Elsewhere"}, "filter f"),
    ("off", "enable-disable-policy", {"policy": "p", "enabled": False}, "policy p"),
]


async def test_server_tasks_refuse_to_delete_move_or_switch_an_item_from_the_parent(ns):
    await ns.db.apply_from_parent(PARENT, FROM_PARENT, full=False, upto=5)
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        before = await everything(c)
        folders = [f["path"] for f in await c.call("folders.list")]
        for name, type_, params, what in SERVER_TASKS:
            await c.call("task.add", document={"name": name, "type": type_, "params": params})
            run = await wait_run(c, (await c.call("run.start", task=name))["run_id"])
            (inst,) = run["instances"]
            assert inst["status"] == "failed", name
            assert inst["reason"] == f"{what} comes from the parent NS {PARENT}: change it there"
        after = await everything(c)
        after["tasks.list"] = [t for t in after["tasks.list"] if t["origin"]]
        assert after == before
        assert [f["path"] for f in await c.call("folders.list")] == folders  # none made
