"""The hierarchy under faults (issue 24): nothing lost across link cuts or restarts of either
side, changes applied in order. Four real NS processes: ``hq`` (the parent), ``c1`` and ``c2``
(its children; ``c1`` reaches ``hq`` through a TCP forwarder the test can cut, tests/netcut.py)
and ``g1`` (``c1``'s child). Every comparison is of full sets (names and definitions), never
of counts alone."""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Callable
from typing import Any

from admin.client import AdminClient
from tests.helpers import Fleet, Proc, free_port, until
from tests.netcut import Forwarder

PER_CONNECTION = 150
"""Requests sent on one admin connection: the NS allows a burst of 200 per connection (then 50
a second), so a burst of changes is spread over connections of at most this many and is never
slowed or refused by the limiter."""
WINDOW = 10
"""Requests unanswered at once on one connection. The NS answers a connection's requests one
after another and stops reading it while more wait; a keepalive pong stuck behind 150 of them
on a busy NS could arrive after the keepalive gave up (it did for a bench's 10,000)."""
LISTING_ONLY = {"updated_at", "version", "origin", "saved_at", "saved_by"}
"""Keys ``tasks.list`` adds to a task's definition: what the NS knows of its row, not the task."""
CONVERGE_S = 90.0
"""Bound on a hierarchy catching up after a fault (on a busy 2-CPU machine; it takes seconds)."""

Op = tuple[str, dict[str, Any]]


# -- changes made through the admin client --------------------------------------------------


def task(name: str, version: str, *, replicate: bool = True) -> dict[str, Any]:
    """A run-script task whose script says which version it is."""
    return {
        "name": name,
        "type": "run-script",
        "timeout_s": 60,
        "replicate": replicate,
        "params": {"interpreter": "sh", "script": f"echo {name} {version}"},
    }


def save(name: str, version: str, *, replicate: bool = True) -> Op:
    return ("task.add", {"document": task(name, version, replicate=replicate)})


def delete(name: str) -> Op:
    return ("task.delete", {"name": name})


def group(name: str) -> Op:
    return ("groups.add", {"name": name, "replicate": True})


def job(name: str, step_task: str) -> Op:
    """A replicated client job of one step (saved again: a change of that step)."""
    steps = [{"id": "only", "task": step_task}]
    doc = {"name": name, "type": "client-job", "replicate": True, "steps": steps}
    return ("job.add", {"document": doc})


async def apply_rounds(
    connect: Callable[[], AdminClient],
    rounds: list[list[Op]],
    done: Callable[[], None] = lambda: None,
) -> None:
    """Send each round's changes together, over as many admin connections as it takes, and wait
    for every answer before the next round: the changes to one item go in successive rounds,
    so they are made in order while the items of a round are made side by side. ``done`` is
    called after each answer (a test counts them to act in the middle)."""
    for ops in rounds:
        chunks = [ops[i : i + PER_CONNECTION] for i in range(0, len(ops), PER_CONNECTION)]

        async def send(chunk: list[Op]) -> None:
            window = asyncio.Semaphore(WINDOW)
            async with connect() as c:

                async def one(op: str, args: dict[str, Any]) -> None:
                    async with window:
                        await c.call(op, **args)
                    done()

                await asyncio.gather(*(one(op, args) for op, args in chunk))

        await asyncio.gather(*(send(chunk) for chunk in chunks))


def definition(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in LISTING_ONLY}


async def task_set(c: AdminClient, *, replicated_only: bool = False) -> dict[str, dict[str, Any]]:
    """Every task of one NS (or only its replicated ones), by name, as its definition."""
    rows = await c.call("tasks.list", timeout_s=120)
    return {
        r["name"]: definition(r) for r in rows if not replicated_only or r.get("replicate") is True
    }


# -- the hierarchy: hq, c1 (through a forwarder), c2, g1 below c1 ---------------------------


class Tree:
    """hq, c1 (reaching hq through a forwarder), c2 and g1 (below c1): four NS processes of one
    fleet (``Fleet.server``, ``Fleet.child_server``), each on a fixed port so that one started
    again is where its children look for it."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.procs: dict[str, Proc] = {}
        self.forwarder: Forwarder | None = None

    def admin(self, name: str) -> AdminClient:
        return self.fleet.admin_of(self.procs[name])

    async def build(self) -> None:
        hq = await self.fleet.server("hq", free_port(), "--name", "hq")
        self.procs["hq"] = hq
        self.forwarder = fwd = await Forwarder.for_url(hq.url).start()
        self.procs["c1"] = await self._child("c1", hq, parent_url=fwd.url(hq.url))
        self.procs["c2"] = await self._child("c2", hq)
        self.procs["g1"] = await self._child("g1", self.procs["c1"])

    async def _child(self, name: str, parent: Proc, parent_url: str | None = None) -> Proc:
        return await self.fleet.child_server(name, parent, port=free_port(), parent_url=parent_url)

    async def restart(self, name: str) -> None:
        """Start ``name`` again, same data folder, same port, same parent (its key is known
        there now: the token file it still names is not used again)."""
        await self.procs[name].start()

    async def linked(self, parent: str, child: str) -> None:
        await self.fleet.wait_linked(self.procs[parent], child, timeout_s=CONVERGE_S)

    async def close(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.close()

    async def converged(self, below: tuple[str, ...] = ("c1", "c2", "g1")) -> dict[str, Any]:
        """Until every NS in ``below`` holds exactly hq's replicated tasks; return that set."""
        async with self.admin("hq") as top:
            want = await task_set(top, replicated_only=True)
        for name in below:
            await self.holds(name, want)
        return want

    async def holds_groups_and_jobs(self, name: str) -> None:
        """Until NS ``name`` holds exactly hq's replicated groups (by name) and jobs (by
        name and definition)."""

        async def both(c: AdminClient, replicated_only: bool) -> tuple[Any, Any]:
            groups = {
                g["name"]
                for g in await c.call("groups.list")
                if not replicated_only or g.get("replicate") is True
            }
            jobs = {
                j["name"]: definition(j)
                for j in await c.call("jobs.list")
                if not replicated_only or j.get("replicate") is True
            }
            return groups, jobs

        async with self.admin("hq") as top:
            want = await both(top, True)
        assert want[0] == {"zone-kept", "zone-new"} and set(want[1]) == {"deploy", "rollout"}
        async with self.admin(name) as c:

            async def same() -> bool:
                return await both(c, False) == want

            await until(same, f"{name} holding hq's groups and jobs", CONVERGE_S, 0.5)

    async def holds(self, name: str, want: dict[str, Any]) -> None:
        """Until NS ``name`` holds exactly the tasks ``want`` (what differs, on time-out)."""
        last: dict[str, Any] = {}
        async with self.admin(name) as c:

            async def same() -> bool:
                have = last["have"] = await task_set(c)
                return have == want

            try:
                await until(same, f"{name} holding {len(want)} tasks", CONVERGE_S, 0.5)
            except AssertionError:
                have = last.get("have", {})
                missing = sorted(set(want) - set(have))[:5]
                extra = sorted(set(have) - set(want))[:5]
                stale = sorted(n for n in set(want) & set(have) if want[n] != have[n])[:3]
                raise AssertionError(
                    f"{name} has {len(have)} tasks, hq replicates {len(want)}: missing {missing},"
                    f" extra {extra}, different {[(have[n], want[n]) for n in stale]}"
                ) from None


def burst_of_1000() -> tuple[list[list[Op]], dict[str, str | None]]:
    """1,000 changes in three rounds, and the version each task must end at (None: absent
    everywhere below hq): 300 saved once, 100 saved v1, v2, v3, 100 saved then deleted, 100
    saved and then no longer replicated (un-flagged: gone below hq, kept on hq)."""
    once = [f"once-{i:03d}" for i in range(300)]
    thrice = [f"thrice-{i:03d}" for i in range(100)]
    dropped = [f"dropped-{i:03d}" for i in range(100)]
    unflagged = [f"unflagged-{i:03d}" for i in range(100)]
    rounds = [
        [save(n, "v1") for n in once + thrice + dropped + unflagged],
        [save(n, "v2") for n in thrice]
        + [delete(n) for n in dropped]
        + [save(n, "v2", replicate=False) for n in unflagged],
        [save(n, "v3") for n in thrice],
    ]
    assert sum(map(len, rounds)) == 1000
    final: dict[str, str | None] = {n: "v1" for n in once}
    final |= {n: "v3" for n in thrice} | {n: None for n in dropped + unflagged}
    return rounds, final


def assert_ends(tasks: dict[str, dict[str, Any]], final: dict[str, str | None]) -> None:
    """Each task of the burst is at the version it ended at on hq, or absent."""
    for name, version in final.items():
        if version is None:
            assert name not in tasks, f"{name} is still there below hq"
        else:
            assert tasks[name]["params"]["script"] == f"echo {name} {version}", tasks[name]


async def versions(c: AdminClient, name: str) -> list[str]:
    """The versions an NS kept of task ``name``, oldest first, each as the label its script
    says (``v1``...): a change applied twice or out of order shows here."""
    out = []
    for row in await c.call("task.history", name=name):
        shown = await c.call("task.show", name=name, version=row["version"])
        out.append(shown["document"]["params"]["script"].rsplit(" ", 1)[-1])
    return out


async def assert_versions(tree: Tree, names: list[str], want: list[str]) -> None:
    """On c1, c2 and g1, each task in ``names`` went through ``want`` exactly, in order."""
    for ns in ("c1", "c2", "g1"):
        async with tree.admin(ns) as c:
            for name in names:
                assert await versions(c, name) == want, f"{name} on {ns}"


# -- the tests --------------------------------------------------------------------------------


async def test_a_link_cut_in_a_burst_of_1000_changes_loses_nothing_and_keeps_order(
    fleet: Fleet,
) -> None:
    """Attack: 1,000 changes on hq (saves, saves twice more, deletes, un-flags) and, once 300 of
    them are made, c1's link to hq is cut and every reconnection refused until the burst is over
    and c1 has tried again at least once. What must hold: after the link is let through, c1, c2
    and g1 each hold exactly hq's replicated tasks (names and definitions), each at its last
    version (a task saved v1, v2, v3 is at v3; a deleted or un-flagged one is absent), and each
    kept every version once, in order (v1, v2, v3)."""
    tree = Tree(fleet)
    try:
        await tree.build()
        fwd = tree.forwarder
        assert fwd is not None
        rounds, final = burst_of_1000()
        made = [0]
        cut_at = asyncio.Event()

        def one_done() -> None:
            made[0] += 1
            if made[0] == 300:
                cut_at.set()

        async def cutter() -> None:
            await cut_at.wait()
            fwd.block()
            assert fwd.cut() >= 1, "c1's link did not pass through the forwarder"

        cutting = asyncio.create_task(cutter())
        await apply_rounds(lambda: tree.admin("hq"), rounds, one_done)
        await cutting
        # c1 tries to come back while the burst's last changes are made without it.

        async def refused() -> bool:
            return fwd.refused >= 1

        await until(refused, "c1 trying to reconnect while blocked", 60)
        async with tree.admin("hq") as c:
            rows = {r["name"]: r for r in await c.call("children.list")}
        assert rows["c1"]["connected"] is False, rows["c1"]
        fwd.unblock()
        await tree.linked("hq", "c1")
        want = await tree.converged()
        assert len(want) == 400
        assert_ends(want, final)
        # c1 came back to the same hq process with its cursor: change by change, so every
        # version went down once and in order (never v3 before v2, never one twice).
        await assert_versions(
            tree, [f"thrice-{i:03d}" for i in range(0, 100, 10)], ["v1", "v2", "v3"]
        )
    finally:
        await tree.close()


async def test_changes_made_while_a_child_is_stopped_reach_it_and_its_child(fleet: Fleet) -> None:
    """Attack: c1 stopped (SIGTERM) while hq saves, changes and deletes replicated tasks (and
    adds and deletes a group, changes and adds a job), then started again on the same data
    folder. What must hold: c1 and g1 (whose link to c1 went down with it) end with exactly
    hq's replicated tasks, groups and jobs, the changes made meanwhile included."""
    tree = Tree(fleet)
    try:
        await tree.build()
        before = [
            [save(f"t-{i:02d}", "v1") for i in range(40)]
            + [group("zone-old"), group("zone-kept"), job("deploy", "t-20")]
        ]
        await apply_rounds(lambda: tree.admin("hq"), before)
        await tree.converged()
        c1 = tree.procs["c1"]
        c1.kill(signal.SIGTERM)
        assert await c1.wait() == 0
        meanwhile = [
            [save(f"t-{i:02d}", "v2") for i in range(10)]
            + [delete(f"t-{i:02d}") for i in range(10, 20)]
            + [save(f"new-{i:02d}", "v1") for i in range(20)]
            + [("groups.delete", {"group": "zone-old"}), group("zone-new")]
            + [job("deploy", "t-30"), job("rollout", "new-00")]
        ]
        await apply_rounds(lambda: tree.admin("hq"), meanwhile)
        await tree.converged(("c2",))
        await tree.restart("c1")
        await tree.linked("hq", "c1")
        await tree.linked("c1", "g1")
        want = await tree.converged()
        # Groups and jobs changed meanwhile went down the same way.
        for ns in ("c1", "g1"):
            await tree.holds_groups_and_jobs(ns)
        final: dict[str, str | None] = {f"t-{i:02d}": "v2" for i in range(10)}
        final |= {f"t-{i:02d}": None for i in range(10, 20)}
        final |= {f"t-{i:02d}": "v1" for i in range(20, 40)} | {
            f"new-{i:02d}": "v1" for i in range(20)
        }
        assert_ends(want, final)
        # Changed once while c1 was away: two versions below hq; untouched: one (the full set
        # the restarted c1 sent g1 saved nothing again).
        await assert_versions(tree, ["t-00", "t-05", "t-09"], ["v1", "v2"])
        await assert_versions(tree, ["t-20", "t-30", "t-39"], ["v1"])
    finally:
        await tree.close()


async def test_children_relink_to_a_restarted_parent_and_get_what_it_saved(fleet: Fleet) -> None:
    """Attack: hq killed (SIGKILL) right after a batch of changes was acknowledged to the
    admin (the children may not have had them yet), and started again on the same data folder
    and port. What must hold: the children relink on their own; the changes made before the
    kill and those made after the restart reach c1, c2 and g1; nothing is duplicated (each
    child listed once on hq; the full set hq sends after its restart saves no task again)."""
    tree = Tree(fleet)
    try:
        await tree.build()
        hq_admin = functools.partial(tree.admin, "hq")
        await apply_rounds(hq_admin, [[save(f"k-{i:03d}", "v1") for i in range(200)]])
        await tree.converged()
        await apply_rounds(hq_admin, [[save(f"late-{i:02d}", "v1") for i in range(50)]])
        hq = tree.procs["hq"]
        hq.kill(signal.SIGKILL)
        await hq.wait()
        await tree.restart("hq")
        await tree.linked("hq", "c1")
        await tree.linked("hq", "c2")
        after = [
            [save(f"k-{i:03d}", "v2") for i in range(50)]
            + [delete(f"k-{i:03d}") for i in range(50, 100)]
            + [save(f"after-{i:02d}", "v1") for i in range(50)]
        ]
        await apply_rounds(hq_admin, after)
        want = await tree.converged()
        final: dict[str, str | None] = {f"k-{i:03d}": "v2" for i in range(50)}
        final |= {f"k-{i:03d}": None for i in range(50, 100)}
        final |= {f"k-{i:03d}": "v1" for i in range(100, 200)}
        final |= {f"late-{i:02d}": "v1" for i in range(50)}
        final |= {f"after-{i:02d}": "v1" for i in range(50)}
        assert_ends(want, final)
        assert len(want) == 250
        async with tree.admin("hq") as c:
            names = [r["name"] for r in await c.call("children.list")]
        assert sorted(names) == ["c1", "c2"], names
        await assert_versions(tree, ["k-000", "k-049"], ["v1", "v2"])
        await assert_versions(tree, ["k-100", "k-199", "late-00", "late-49"], ["v1"])
    finally:
        await tree.close()
