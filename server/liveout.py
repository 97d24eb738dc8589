"""Live output at the NS: pieces of what running scripts print, passed on to the admins who
asked for them (``run.watch`` with ``output: true``), never stored (docs/protocol.md, "Live
output").

Relays send live output in ``reports`` batches of its own. ``forward`` hands each piece to the
watchers of its run as one ``output`` event per run and batch; with nobody watching output the
batch is dropped at once (one lookup). A piece passes only for an instance of a watched run that
has not ended, from the computer that instance is for, through the route that instance is on:
a relay speaks for its own computers only, as with results; its step, if any, must be one of
the client job's steps, and its time is made sane as a result's is. The watched runs' instances are read
once, when the watch starts (``watch``), and kept up to date from the roll-up's changes
(``note``: a server job's later steps, instances that ended), so a piece costs no database read.

The registry lives beside the NS (a weak map keyed by it) rather than in it: only the watchers of
output need it, and an NS nobody asked for output pays one dictionary lookup per batch.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from protocol import codec
from protocol.messages import Event, Report
from protocol.states import is_terminal
from runtime.link import Link
from server.interface import NS
from server.store import Change
from server.store.runs import ROW_ID_MASK, _job_step_names, sane_time


class _Instance(NamedTuple):
    run_id: int
    computer: str
    route: str | None
    step: str


@dataclass
class _Watches:
    """One NS's output watchers: the links per run, and the instances of those runs by row id."""

    links: dict[int, set[Link]] = field(default_factory=dict)
    instances: dict[int, _Instance] = field(default_factory=dict)
    of_run: dict[int, set[int]] = field(default_factory=dict)
    steps: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    """The step names a piece may carry, by (run id, instance step): the client job's program
    (read once per watched step) and the step rows seen (``watch``, ``note``)."""
    loading: set[asyncio.Task[None]] = field(default_factory=set)

    def drop_run(self, run_id: int) -> None:
        self.links.pop(run_id, None)
        for iid in self.of_run.pop(run_id, ()):
            self.instances.pop(iid, None)
        for key in [k for k in self.steps if k[0] == run_id]:
            del self.steps[key]


_WATCHES: weakref.WeakKeyDictionary[Any, _Watches] = weakref.WeakKeyDictionary()


def watch(ns: NS, run_id: int, link: Link, rows: Iterable[dict[str, Any]]) -> None:
    """``link`` (which watches ``run_id`` already) also gets the run's live output from now on.
    ``rows``: the run's instance rows as ``Store.instances`` reads them."""
    watches = _WATCHES.setdefault(ns, _Watches())
    for other in [r for r in watches.links if r not in ns.watchers]:
        watches.drop_run(other)  # runs that ended, or whose watchers all left
    watches.links.setdefault(run_id, set()).add(link)
    for row in rows:
        if row.get("parent_id") is None and not is_terminal(str(row["status"])):
            _add(
                ns, watches, run_id, int(row["id"]), str(row["computer"]), row["route"], row["step"]
            )
    for row in rows:
        if row.get("parent_id") is not None:
            _seen_step(watches, run_id, str(row["step"]))


def unwatch(ns: NS, run_id: int, link: Link) -> None:
    """``link`` no longer gets ``run_id``'s live output (``run.unwatch``); with no link left the
    run's instances are forgotten."""
    watches = _WATCHES.get(ns)
    if watches is None:
        return
    links = watches.links.get(run_id)
    if links is not None:
        links.discard(link)
        if not links:
            watches.drop_run(run_id)


def _add(
    ns: NS,
    watches: _Watches,
    run_id: int,
    iid: int,
    computer: str,
    route: str | None,
    step: str | None,
) -> None:
    watches.instances[iid] = _Instance(run_id, computer, route, step or "")
    watches.of_run.setdefault(run_id, set()).add(iid)
    if (run_id, step or "") not in watches.steps:
        watches.steps[(run_id, step or "")] = set()
        _load_steps(ns, watches, run_id, step or "")


def _seen_step(watches: _Watches, run_id: int, row_step: str) -> None:
    """A client job's step row (``outer/inner`` under a server job's step ``outer``): the NS
    made it for a step of that job's program, so a piece may name it."""
    for (run, step), names in watches.steps.items():
        if run != run_id:
            continue
        if not step:
            names.add(row_step)
        elif row_step.startswith(step + "/"):
            names.add(row_step[len(step) + 1 :])


def _load_steps(ns: NS, watches: _Watches, run_id: int, step: str) -> None:
    """Read the step names of the client job that ``step`` of ``run_id`` runs, in the
    background: until then only the step rows seen pass (a piece a moment early is lost)."""

    async def load() -> None:
        found = await ns.db.step_task(run_id, step)
        if found is not None and (run_id, step) in watches.steps:
            watches.steps[(run_id, step)].update(_job_step_names(found[0]))

    task = asyncio.get_running_loop().create_task(load())
    watches.loading.add(task)
    task.add_done_callback(watches.loading.discard)


def note(ns: NS, changes: list[Change]) -> None:
    """Keep the watched runs' instances current: new top-level ones (a server job's next step)
    join, ended ones leave (a piece that comes after its instance's end is not shown)."""
    watches = _WATCHES.get(ns)
    if not watches or not watches.links:
        return
    for c in changes:
        if c.run_id not in watches.links:
            continue
        if c.parent_id is not None:
            _seen_step(watches, c.run_id, c.step)
            continue
        if is_terminal(c.state):
            watches.instances.pop(c.instance_id, None)
        elif c.instance_id not in watches.instances:
            _add(ns, watches, c.run_id, c.instance_id, c.computer, c.route, c.step)


def forward(ns: NS, reports: list[Report], route: str | None) -> int:
    """Pass a batch of live output to the watchers of its runs; return how many pieces went."""
    watches = _WATCHES.get(ns)
    if not watches or not watches.links:
        return 0
    by_run: dict[int, list[dict[str, Any]]] = {}
    now = time.time()
    for r in reports:
        live = r.live
        if live is None:
            continue
        inst = watches.instances.get(r.instance_id & ROW_ID_MASK)
        if (
            inst is None
            or r.computer != inst.computer
            or (route is not None and inst.route != route)
            or (r.step and r.step not in watches.steps.get((inst.run_id, inst.step), ()))
        ):
            continue  # a step the job does not have could fake another computer's lines
        try:
            at = sane_time(live.at, now)
        except ValueError:
            continue
        step = f"{inst.step}/{r.step}" if inst.step and r.step else inst.step or r.step
        by_run.setdefault(inst.run_id, []).append(
            {
                "instance_id": r.instance_id & ROW_ID_MASK,
                "computer": inst.computer,
                "step": step,
                "text": live.text,
                "skipped": live.skipped,
                "at": at,
            }
        )
    sent = 0
    for run_id, items in by_run.items():
        subscribed = ns.watchers.get(run_id) or {}
        links = [link for link in watches.links.get(run_id, ()) if link in subscribed]
        if not links:
            watches.drop_run(run_id)
            continue
        for link in links:
            event = Event(id=link.next_id(), run_id=run_id, kind="output", data={"items": items})
            # Written now if the admin's connection can take it, else dropped: live output
            # never queues up for a slow reader.
            if link.send_now(codec.encode(event)):
                sent += len(items)
    return sent
