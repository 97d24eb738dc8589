"""Admin operations on runs and what the server reports: start a run (``runnable`` resolves a task
or compiles a job; ``check`` only looks), list, show, watch and stop runs, the server log,
messages (listed or watched), refusal counters (``stats``) and ``backup``. Each registers itself
with :func:`server.adminops.base.op`."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from protocol.errors import ValidationError
from protocol.jobs import (
    JobCompileError,
    JobType,
    compile_job,
    only_taskserver_steps,
    validate_job,
)
from protocol.states import InstanceState
from runtime.link import Link
from server import liveout
from server.adminops.base import ApiError, _arg, _refuse_unknown, op
from server.interface import NS
from server.jobs import SERVER_JOB, job_needs_agents, no_agent_targets
from server.metrics import refreshed
from server.metrics import stats as ns_stats
from server.store.backup import BackupError, write_backup


async def runnable(ns: NS, name: str) -> dict[str, Any]:
    """The definition a run of ``name`` uses: a task as saved, or a job compiled now."""
    found = await ns.db.catalog_entry(name)
    if found is None:
        raise ApiError(
            "unknown_task",
            f"no task or job named {name!r}; `taskfleet tasks` and `taskfleet jobs` list them",
        )
    what, definition = found
    if what == "task":
        return definition
    catalog = await ns.db.catalog()  # a job: its steps name other tasks and jobs
    try:
        validate_job(definition, catalog.get)
        compiled = compile_job(definition, catalog.get)
    except ValidationError as exc:
        raise ApiError(
            "invalid_document", f"job {name!r} is no longer valid with the saved tasks: {exc}"
        ) from None
    except JobCompileError as exc:
        raise ApiError("invalid_document", str(exc)) from None
    kind = "server-job" if definition["type"] == JobType.SERVER else "client"
    return {
        "name": name,
        "type": str(definition["type"]),
        "kind": kind,
        "timeout_s": compiled["timeout_s"],
        "params": {},
        "job": compiled,
    }


@op("run.start")
async def run_start(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await start_from_args(ns, args)


async def start_from_args(
    ns: NS, args: dict[str, Any], schedule: str | None = None
) -> dict[str, Any]:
    """Resolve a run's task or job and targets (``computers``, ``groups``, ``filters``,
    ``all``) and start it: the one path for ``run.start`` and for a schedule's firing
    (``schedule``: its name, kept on the run)."""
    name = _arg(args, "task", str)
    definition = await runnable(ns, name)
    names = _arg(args, "computers", list, [])
    groups = _arg(args, "groups", list, [])
    filters = _arg(args, "filters", list, [])
    every = bool(args.get("all", False))
    computers: list[dict[str, Any]] = []
    # A server task takes targets too: it may act on them (assign-to-group, tickle-client).
    if every and (names or groups or filters):
        raise ApiError("bad_request", "give either computers, groups and filters, or all, not both")
    if not all(isinstance(n, str) for n in [*names, *groups, *filters]):
        raise ApiError("bad_request", "computer, group and filter names must be strings")
    if every:
        computers = await ns.db.targets()
    chosen: dict[int, dict[str, Any]] = {}
    if names:
        found = await ns.db.computers(list(dict.fromkeys(names)))
        _refuse_unknown("computer", names, {c["name"] for c in found})
        chosen.update((c["id"], c) for c in found)
    if groups:
        _refuse_unknown("group", groups, {g["name"] for g in await ns.db.groups()})
        chosen.update((c["id"], c) for c in await ns.db.group_computers(groups))
    if filters:
        _refuse_unknown("filter", filters, {f["name"] for f in await ns.db.filters()})
        chosen.update((c["id"], c) for c in await ns.db.filter_computers(filters))
    if not every:
        computers = sorted(chosen.values(), key=lambda c: c["name"])
    skipped = 0
    if _arg(args, "online_only", bool, False):
        # Skip computers whose agent is not connected now; devices (no agent) stay.
        kept = [c for c in computers if c["online"] or not c["has_agent"]]
        skipped, computers = len(computers) - len(kept), kept
    only_server_steps = definition["kind"] == "server" or (
        definition["kind"] == "server-job"
        and all(i["kind"] == "server" for i in definition["job"]["program"] if i["op"] == "run")
    )
    if not computers and not only_server_steps:
        what = "server job" if definition["kind"] == "server-job" else f"{definition['kind']} task"
        if definition.get("type") == "client-job":
            what = "client job"
        if skipped:
            raise ApiError(
                "no_targets",
                f"every one of the {skipped} target(s) is offline and --online-only skipped it:"
                " nothing to run; without --online-only they run when they connect",
            )
        if every:
            raise ApiError(
                "no_targets",
                f"{name!r} is a {what} and {ns.name} has no computers yet: nothing to run"
                " (agents appear once they register)",
            )
        raise ApiError(
            "no_targets",
            f"{name!r} is a {what}: give --computer, --group or --filter NAME (repeatable), or --all"
            + ("; the groups and filters given hold no computers" if groups or filters else ""),
        )
    if args.get("check"):
        # Look before leaping: what would fail at once, without starting anything.
        return {
            "run_id": None,
            "targets": len(computers),
            "no_agent": no_agent_targets(definition, computers),
            "offline": _offline_agents(definition, computers),
            "skipped_offline": skipped,
        }
    started = await ns.start_run(definition, computers, schedule=schedule)
    return {**started, "skipped_offline": skipped}


def _offline_agents(definition: dict[str, Any], computers: list[dict[str, Any]]) -> int:
    """How many targets would wait for their agent to connect: offline computers with an agent,
    when the definition has work for agents (0 for server and task-server tasks)."""
    if definition["kind"] == SERVER_JOB:
        needs = job_needs_agents(definition["job"])
    elif definition.get("type") == "client-job":
        needs = not only_taskserver_steps(definition["job"]["program"])
    else:
        needs = definition["kind"] == "client"
    return sum(1 for c in computers if c["has_agent"] and not c["online"]) if needs else 0


@op("runs.list")
async def runs_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    limit = _arg(args, "limit", int, 50)
    return await ns.db.runs(max(1, min(limit, 1000)))


async def _run_view(
    ns: NS,
    run_id: int,
    instances: bool = True,
    computer: str | None = None,
    brief: bool = False,
) -> dict[str, Any]:
    """A run with its steps and either every instance row or (``instances`` false, for runs
    too big to list) how many top-level instances are in each state.

    ``computer``: only that computer's rows (its instances and their step rows), so a console
    opening one cell of a 10,000-computer grid reads one output, not all. ``brief``: rows
    without their ``output``, so the grid's snapshot stays small; the output is read per
    computer when someone looks."""
    run = await ns.db.run(run_id)
    if run is None:
        raise ApiError("unknown_run", f"no run with id {run_id}; `taskfleet runs` lists them")
    view = {**run, "steps": await ns.db.steps(run_id)}
    if instances:
        view["instances"] = await ns.db.instances(run_id, computer, output=not brief)
    else:
        view["counts"] = await ns.db.instance_counts(run_id)
    return view


@op("run.show")
async def run_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await _run_view(
        ns,
        _arg(args, "run_id", int),
        _arg(args, "instances", bool, default=True),
        computer=_arg(args, "computer", str, "") or None,
        brief=_arg(args, "brief", bool, default=False),
    )


@op("run.watch")
async def run_watch(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Subscribe to a run's events; the answer is its current state (events follow).

    ``instances`` (default true): every instance in the snapshot and an ``instances`` event per
    roll-up listing each change. False: the snapshot holds ``counts`` (top-level instances per
    state) and each roll-up sends one ``counts`` event (``changes``: how many instances moved,
    ``states``: how many top-level ones reached each state), for runs on thousands of computers.

    ``output`` (default false): also ``output`` events, pieces of what the run's scripts print
    while they run (``server.liveout``); asking without it later does not stop them.
    """
    run_id = _arg(args, "run_id", int)
    detail = _arg(args, "instances", bool, default=True)
    output = _arg(args, "output", bool, default=False)
    brief = _arg(args, "brief", bool, default=False)
    # Subscribe before reading, so no event falls between the snapshot and the first event. Not
    # only while the run is in ``ns.active``: ``finish`` leaves that before it stores the run's
    # status, and a watcher arriving in between would read "running" and never hear the end.
    # ``finish`` takes the watchers (and tells them) only after the status is stored, so a view
    # read as "running" is always followed by the end; one read as ended needs no subscription.
    watchers = ns.watchers[run_id]
    watchers[link] = detail
    view: dict[str, Any] | None = None
    try:
        view = await _run_view(ns, run_id, detail, brief=brief)
        if output and view["status"] == "running":
            rows = view["instances"] if detail else await ns.db.instances(run_id)
            liveout.watch(ns, run_id, link, rows)
        return view
    finally:
        if view is None or view["status"] != "running":
            watchers.pop(link, None)
            if not watchers and ns.watchers.get(run_id) is watchers:
                del ns.watchers[run_id]


@op("run.unwatch")
async def run_unwatch(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """End this connection's subscription to a run (``run.watch``): no more events for it, live
    output included. The web console calls it when a run's page closes, so a tab that opened a
    long run does not keep receiving its changes. Unwatching a run not watched is not an error
    (the run may have ended, which ends every subscription): ``unwatched`` says whether one ended."""
    run_id = _arg(args, "run_id", int)
    watchers = ns.watchers.get(run_id)
    unwatched = watchers is not None and watchers.pop(link, None) is not None
    if watchers is not None and not watchers:
        del ns.watchers[run_id]
    liveout.unwatch(ns, run_id, link)
    return {"run_id": run_id, "unwatched": unwatched}


@op("run.stop")
async def run_stop(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    run_id = _arg(args, "run_id", int)
    await _run_view(ns, run_id)
    if run_id not in ns.active:
        return {"run_id": run_id, "stopped": 0, "note": "the run had already ended"}
    stopped = await ns.end_run(run_id, InstanceState.STOPPED, "stopped by an administrator")
    return {"run_id": run_id, "stopped": stopped}


@op("log.list")
async def log_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.server_log(max(1, min(_arg(args, "limit", int, 100), 10_000)))


@op("messages.list")
async def messages_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.messages(max(1, min(_arg(args, "limit", int, 100), 10_000)))


@op("stats")
async def stats(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """What the NS knows about itself (``server.metrics.stats``: connections, runs in flight,
    database size, TS links), refusal counters (by code) since it started, and the handshake
    gates' state."""
    relay = ns.relay.refused if ns.relay is not None else {}
    await refreshed(ns)
    return {
        **ns_stats(ns),
        "refused": dict(ns.refused),
        "builtin_relay_refused": dict(relay),
        "handshake_gate": ns.gate.stats(),
        "admin_gate": ns.admin_gate.stats() if ns.admin_url else None,
    }


@op("messages.watch")
async def messages_watch(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Push every new message to this admin (as ``event`` kind ``message``) until it disconnects."""
    ns.message_watchers.add(link)
    return {"watching": True}


@op("backup")
async def backup(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Copy the database, while the NS runs, to a new file on the NS's machine (mode 0600)."""
    path = _arg(args, "path", str)
    force = bool(_arg(args, "force", bool, False))
    try:
        return await asyncio.to_thread(write_backup, ns.db_path, path, force)
    except BackupError as exc:
        raise ApiError("backup_refused", str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise ApiError(
            "backup_failed",
            f"the backup to {path} failed ({getattr(exc, 'strerror', None) or exc}); "
            "nothing was written there: check the folder and its free space, then try again",
        ) from None
