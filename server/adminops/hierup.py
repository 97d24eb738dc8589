"""Admin operations on a child NS's runs (issue 24, "up"): ``children.runs`` (its runs of this
NS's items, from the summary it last sent), ``children.start`` (start a replicated,
remote-startable task or job on the child's computers, through the child) and ``children.run``
(one such run with each computer's result, asked of the child now). Each registers itself with
:func:`server.adminops.base.op`; the child's side is ``server.hierarchy.up``."""

from __future__ import annotations

from typing import Any

from runtime.link import Link
from server.adminops.base import ApiError, _arg, op
from server.interface import NS

TARGET_KEYS = ("computers", "groups", "filters", "all", "online_only")
"""What ``children.start`` passes on to the child: the targets as ``run.start`` takes them."""


async def _child(ns: NS, args: dict[str, Any]) -> dict[str, Any]:
    """The child named in ``args`` (its stored row); unknown_child when there is none."""
    name = _arg(args, "child", str)
    row = await ns.db.child(name)
    if row is None:
        raise ApiError(
            "unknown_child", f"no child NS named {name!r}; `taskfleet children` lists them"
        )
    return row


@op("children.runs")
async def children_runs(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """The child's runs of this NS's items, as its last summary told them (no round trip:
    also when the child is away, with ``at`` saying how old that is)."""
    row = await _child(ns, args)
    summary = row["summary"] or {}
    return {
        "child": row["name"],
        "connected": row["name"] in ns.hierarchy.connected_children(),
        "at": summary.get("at"),
        "runs": summary.get("runs", []),
    }


@op("children.start")
async def children_start(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Start ``task`` (a task or job of this NS, replicated with ``remote_start = true``) on
        the child's computers; the child checks it again against what it holds and answers with
        its own run id. A refusal of the child comes back with its code and message
    (``ns.hierarchy.ask_child``: ``not_connected`` when it is not linked now)."""
    row = await _child(ns, args)
    name = _arg(args, "task", str)
    found = await ns.db.catalog_entry(name)
    if found is None:
        raise ApiError(
            "unknown_task",
            f"no task or job named {name!r}; `taskfleet tasks` and `taskfleet jobs` list them",
        )
    kind, definition = found
    if definition.get("replicate") is not True or definition.get("remote_start") is not True:
        raise ApiError(
            "not_remote_startable",
            f"{kind} {name!r} is not remote-startable: a child runs it for this NS only with"
            " replicate = true and remote_start = true in it",
        )
    asked = {k: args[k] for k in TARGET_KEYS if args.get(k) not in (None, [], False)}
    started = await ns.hierarchy.ask_child(
        row["name"], "hier.start", {"kind": kind, "name": name, **asked}
    )
    return {**started, "child": row["name"], "task": name, "kind": kind}


@op("children.run")
async def children_run(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """One run on the child, asked of it now: the shape of ``run.show`` (each computer's
    status, return code and output as the child stored them) plus ``child``."""
    row = await _child(ns, args)
    run_id = _arg(args, "run_id", int)
    got = await ns.hierarchy.ask_child(row["name"], "hier.run", {"run_id": run_id})
    return {**got["run"], "instances": got["instances"], "child": row["name"]}
