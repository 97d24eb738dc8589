"""Up the hierarchy (issue 24): what a child NS tells its parent, and what the parent may do
through it.

Child side:

- the **summary** (:func:`build_summary`): computers in all, online and by OS; runs of the
  items that came from the parent (running, or ended in the last 24 h; the newest 200) with
  their instances counted per state; and ``below``, each of the child's own children with the
  summary it last sent, so a grandchild's summary reaches the top.
- the **summary loop** (:func:`summary_loop`, started with the parent link by
  :func:`install`): a summary at once when the link comes up, then one every 2 s while
  something changed, and at least one every 30 s as a heartbeat.
- ``hier.start``: start a task or job from that parent, flagged ``remote_start = true``,
  on the child's computers, through the same path as ``run.start``; audited as
  ``parent:NAME``.
- ``hier.run``: one run of the parent's items and each computer's result, as stored.

Parent side: ``hier.summary`` stores a child's summary and the NS ids below it (the loop check
at the next handshake needs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Collection
from typing import Any

from server.adminops.base import ApiError, _arg
from server.adminops.runs import start_from_args
from server.hierarchy.ops import child_op, parent_op
from server.interface import NS
from server.store import Store

SUMMARY_EVERY_S = 2.0
"""How often a child looks for a change to send up."""
HEARTBEAT_S = 30.0
"""A summary goes up at least this often, changed or not: the parent sees the child alive."""
RUNS_WINDOW_S = 24 * 3600.0
"""Ended runs stay in the summary this long."""
RUNS_MAX = 200
"""At most this many runs in a summary (the newest)."""
TARGETS = ("computers", "groups", "filters", "all", "online_only")
"""What a parent may say about the targets of ``hier.start``: as ``run.start`` takes them."""
BELOW_DEPTH_MAX = 32
"""Tiers below a child that a parent reads ids from (a deeper summary is cut there)."""


# -- child side: the summary ------------------------------------------------------------


async def build_summary(
    db: Store, parent: str, connected: Collection[str], now: float | None = None
) -> dict[str, Any]:
    """This NS's summary for ``parent`` (``connected``: the names of this NS's children
    linked now). The ``SUMMARY`` of docs/hierarchy.md."""
    now = time.time() if now is None else now
    return {
        "at": now,
        "computers": await db.computer_counts(),
        "runs": await db.parent_runs(parent, now - RUNS_WINDOW_S, RUNS_MAX) if parent else [],
        "below": [
            {
                "name": row["name"],
                "ns_id": row["ns_id"],
                "connected": row["name"] in connected,
                "lag_s": await db.child_lag_s(row["acked_seq"], now),
                "summary": row["summary"],
            }
            for row in await db.children()
        ],
    }


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without its own time: two of these equal means nothing changed."""
    return {k: v for k, v in summary.items() if k != "at"}


def due(summary: dict[str, Any], last: dict[str, Any] | None, sent_at: float, now: float) -> bool:
    """Whether ``summary`` goes up: it differs (its time aside) from ``last``, the one sent at
    ``sent_at`` (None: none yet), or the heartbeat is due (``now``: the same monotonic clock)."""
    return _comparable(summary) != last or now - sent_at >= HEARTBEAT_S


async def summary_loop(ns: NS) -> None:
    """Send this NS's summary to its parent while the link is up (cancelled when it goes
    down): at once, then every ``SUMMARY_EVERY_S`` when it changed, and at least every
    ``HEARTBEAT_S``. A turn that fails (the parent refuses or does not answer, the database
    is busy) is logged and the next turn tries again: the loop ends only with the link."""
    last: dict[str, Any] | None = None
    sent_at = 0.0
    while True:
        try:
            summary = await build_summary(
                ns.db, ns.hierarchy.parent_name or "", ns.hierarchy.connected_children()
            )
            if due(summary, last, sent_at, time.monotonic()):
                await ns.hierarchy.ask_parent("hier.summary", {"summary": summary})
                last, sent_at = _comparable(summary), time.monotonic()
        except Exception as exc:
            ns.log.warning("summary_not_sent", parent=ns.hierarchy.parent_name, error=str(exc))
        await asyncio.sleep(SUMMARY_EVERY_S)


def install(ns: NS) -> None:
    """Start the summary loop with every link to a parent (``ns.hierarchy.on_parent_link``)."""

    async def summaries() -> None:
        await summary_loop(ns)

    ns.hierarchy.on_parent_link.append(summaries)


# -- parent side: a child's summary -------------------------------------------------------


def below_ids(summary: dict[str, Any], depth: int = 0) -> list[str]:
    """Every NS id under a child, from its summary's ``below``, transitively."""
    ids: list[str] = []
    below = summary.get("below")
    if depth >= BELOW_DEPTH_MAX or not isinstance(below, list):
        return ids
    for entry in below:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("ns_id"), str):
            ids.append(entry["ns_id"])
        if isinstance(entry.get("summary"), dict):
            ids.extend(below_ids(entry["summary"], depth + 1))
    return list(dict.fromkeys(ids))


@parent_op("hier.summary")
async def receive_summary(ns: NS, peer: str, args: dict[str, Any]) -> dict[str, Any]:
    """Keep a child's latest summary, and the NS ids below it for later loop checks."""
    summary = _arg(args, "summary", dict)
    if not isinstance(summary.get("computers"), dict) or not isinstance(summary.get("runs"), list):
        raise ApiError("bad_request", "a summary needs its 'computers' (a map) and 'runs' (a list)")
    await ns.db.set_child_summary(peer, summary)
    row = await ns.db.child(peer)
    if row is not None:
        await ns.db.upsert_child(peer, row["ns_id"], True, below=below_ids(summary))
    return {}


# -- child side: the parent starts and reads runs ------------------------------------------


def _who(peer: str) -> str:
    return f"parent:{peer}"


async def _audit(ns: NS, peer: str, detail: str, outcome: str) -> None:
    """The audit row of a start asked by a parent (a full disk logs it instead)."""
    try:
        await ns.db.audit(_who(peer), "hier.start", detail, outcome)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await ns.db.db.rollback()
        ns.log.error("audit_write_failed", who=_who(peer), action="hier.start", error=str(exc))


async def _startable(ns: NS, peer: str, kind: str, name: str) -> None:
    """Refuse unless ``name`` is a ``kind`` that came from ``peer`` with ``remote_start``."""
    item = await ns.db.parent_item(kind, name)
    if item is None:
        raise ApiError(
            "unknown_task", f"no {kind} named {name!r} on {ns.name}: replicate it there first"
        )
    if item["origin"] != peer:
        raise ApiError(
            "not_remote_startable",
            f"{kind} {name!r} on {ns.name} is not from {peer}: a parent starts only its own"
            " replicated items",
        )
    if item["definition"].get("remote_start") is not True:
        raise ApiError(
            "not_remote_startable",
            f"{kind} {name!r} is not remote-startable on {ns.name}: set remote_start = true"
            f" (with replicate = true) in it on {peer}",
        )


@child_op("hier.start")
async def start_for_parent(ns: NS, peer: str, args: dict[str, Any]) -> dict[str, Any]:
    """Start a replicated, remote-startable task or job of ``peer`` on this NS's computers
    (``computers``, ``groups``, ``filters`` or ``all``), as ``run.start`` would."""
    kind = _arg(args, "kind", str, "task")
    name = _arg(args, "name", str)
    targets: dict[str, Any] = {k: args[k] for k in TARGETS if k in args}
    detail = ", ".join(f"{k}={v!r}" for k, v in {"kind": kind, "name": name, **targets}.items())
    try:
        if kind not in ("task", "job"):
            raise ApiError("bad_request", f"kind must be 'task' or 'job', not {kind!r}")
        await _startable(ns, peer, kind, name)
        free = shutil.disk_usage(ns.data_dir).free
        if free < ns.min_free_bytes:  # as run.start refuses (server.admin_api.handle)
            raise ApiError(
                "disk_full",
                f"{ns.name}'s disk is nearly full ({free // 1024} KiB free): its admin must"
                " free some space before it starts runs",
            )
        started = await start_from_args(ns, {**targets, "task": name})
    except ApiError as exc:
        await _audit(ns, peer, detail, f"error: {exc.code}")
        raise
    await _audit(ns, peer, f"{detail}, run_id={started['run_id']}", "ok")
    ns.log.info("run_started_by_parent", parent=peer, run_id=started["run_id"], item=name)
    return {k: started[k] for k in ("run_id", "targets", "no_agent")}


@child_op("hier.run")
async def run_for_parent(ns: NS, peer: str, args: dict[str, Any]) -> dict[str, Any]:
    """One run of ``peer``'s items with each computer's result as stored (status, return
    code, output, reason, times; a job's step rows too): the shape of ``run.show``, split
    in ``run`` and ``instances``."""
    run_id = _arg(args, "run_id", int)
    origin = await ns.db.run_origin(run_id)
    if origin is None:
        raise ApiError("unknown_run", f"no run with id {run_id} on {ns.name}")
    if origin != peer:
        raise ApiError(
            "forbidden", f"run {run_id} on {ns.name} is not of a task or job from {peer}"
        )
    run = await ns.db.run(run_id)
    if run is None:  # purged in between
        raise ApiError("unknown_run", f"no run with id {run_id} on {ns.name}")
    shown = {k: v for k, v in run.items() if k not in ("machine", "targets")}
    instances = await ns.db.instances(run_id)
    return {
        "run": {**shown, "steps": await ns.db.steps(run_id)},
        "instances": [{**i, "exit_code": i["return_code"]} for i in instances],
    }
