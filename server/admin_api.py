"""Admin requests: one function per ``op``, all reached through :func:`handle`.

Every error a user can meet is an :class:`ApiError` whose message says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.errors import ValidationError
from protocol.filters import validate_filter
from protocol.identity import hash_token
from protocol.jobs import (
    JobCompileError,
    JobType,
    compile_job,
    is_job_document,
    only_taskserver_steps,
    validate_job,
)
from protocol.messages import Report
from protocol.policies import validate_policy
from protocol.session import NAME
from protocol.states import InstanceState
from protocol.tasks import CATALOG, parse_document, validate_task
from runtime.link import Link
from server import auth
from server.interface import NS
from server.jobs import SERVER_JOB, job_needs_agents, no_agent_targets
from server.policies import targets as policy_targets
from server.store.backup import BackupError, write_backup
from server.store.runs import wire_id


class ApiError(Exception):
    """A refused admin request: ``code`` for scripts, the message for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


Handler = Callable[["NS", Link, dict[str, Any]], Awaitable[Any]]
_OPS: dict[str, Handler] = {}


def op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _OPS[name] = fn
        return fn

    return register


async def handle(ns: NS, link: Link, name: str, args: dict[str, Any], who: str = "") -> Any:
    """Run one admin operation for the admin ``who`` (their role was checked by the caller).

    A full disk refuses what would write (``disk_full``) and keeps serving reads.
    """
    link.who = who
    fn = _OPS.get(name)
    if fn is None:
        raise ApiError(
            "unknown_op", f"unknown operation {name!r}; known: {', '.join(sorted(_OPS))}"
        )
    if name == "run.start" and not args.get("check"):
        free = shutil.disk_usage(ns.data_dir).free
        if free < ns.min_free_bytes:
            raise ApiError(
                "disk_full",
                f"the server's disk is nearly full ({free // 1024} KiB free under {ns.data_dir}, "
                f"at least {ns.min_free_bytes // 1024} KiB needed): free some space; reads still work",
            )
    try:
        return await fn(ns, link, args)
    except sqlite3.OperationalError as exc:
        if "full" not in str(exc):
            raise
        with contextlib.suppress(Exception):
            await ns.db.db.rollback()
        raise ApiError(
            "disk_full",
            f"the server's disk is full ({exc}): free space under {ns.data_dir}; nothing stored was lost",
        ) from None


def _arg(args: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    value = args.get(key, default)
    if value is None and default is not ...:
        value = default
    if value is ... or value is None:
        raise ApiError("bad_request", f"argument {key!r} is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError("bad_request", f"argument {key!r} must be {kind.__name__}")
    return value


def _computer_view(row: dict[str, Any]) -> dict[str, Any]:
    import json

    return {
        "id": row["id"],
        "name": row["name"],
        "has_agent": bool(row["has_agent"]),
        "online": bool(row["online"]),
        "taskserver": row["taskserver"] or ("(built-in)" if row["has_agent"] else None),
        "last_seen": row["last_seen"],
        "os": row["os"],
        "agent_version": row["agent_version"],
        "addresses": json.loads(row["addresses"] or "[]"),
    }


@op("computers.list")
async def computers_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Every computer; ``offline_for_s`` (> 0): only those whose agent is offline and was last
    seen that many seconds ago or more (stale ones; devices are never listed then)."""
    offline_for_s = _arg(args, "offline_for_s", int, 0)
    if offline_for_s < 0:
        raise ApiError("bad_request", "argument 'offline_for_s' must be 0 or more seconds")
    if offline_for_s:
        return [_computer_view(r) for r in await ns.db.stale_computers(time.time() - offline_for_s)]
    return [_computer_view(r) for r in await ns.db.computers()]


_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def device_mac(text: str) -> str:
    """A device's MAC address as six hex pairs (``:`` or ``-`` between them), normalised to
    ``aa:bb:cc:dd:ee:ff``; empty for none. Anything else is a ``bad_request``."""
    if not text:
        return ""
    if not _MAC.fullmatch(text):
        raise ApiError(
            "bad_request",
            f"--mac {text!r} is not a MAC address: give six hex pairs separated by ':' or '-', "
            "for example aa:bb:cc:dd:ee:ff",
        )
    return text.replace("-", ":").lower()


def device_address(text: str) -> str:
    """A device's address: an IPv4 or IPv6 address, or a host name of RFC 1123 labels (letters,
    digits and '-', 1-63 characters each, not starting or ending with '-'; 253 characters at most;
    the last label not all digits); empty for none. Anything else is a ``bad_request``."""
    if not text:
        return ""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text))
    labels = text.split(".")
    if (
        len(text) > 253
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ApiError(
            "bad_request",
            f"--address {text!r} is neither an IP address nor a host name: give an IPv4 or IPv6 "
            "address (192.0.2.7, 2001:db8::7) or a host name of letters, digits, '-' and '.' "
            "(pc-7.example.org)",
        )
    return text


@op("computers.add")
async def computers_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    if not NAME.fullmatch(name):
        raise ApiError(
            "bad_request",
            "a computer name has 1-255 characters: letters, digits, '.', '_', '-', starting with a letter or digit",
        )
    address = device_address(_arg(args, "address", str, ""))
    mac = device_mac(_arg(args, "mac", str, ""))
    # A device is served by the connected TS with the fewest computers (or the built-in service).
    servers = [t for t in await ns.db.taskservers() if t["name"] in ns.routes]
    ts = min(servers, key=lambda t: (t["computers"], t["name"]))["name"] if servers else None
    try:
        row = await ns.db.add_device(name, address, ts, mac)
    except ValueError as exc:
        raise ApiError("exists", str(exc)) from None
    finally:
        ns.forget_taskserver_load()
    return _computer_view(row)


COMPUTER_DELETED = "the computer was deleted"
"""The reason its unfinished instances end ``stopped`` with when a computer is deleted."""


@op("computers.delete")
async def computers_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Forget computers that left the fleet (``names``), with their agent keys unless
    ``keep_key``. Their unfinished instances end ``stopped`` ("the computer was deleted")
    through the roll-up, as a result would (counts, barriers and runs' ends stay right), and
    their relays are told to drop the work; their history stays, by name
    (``Store.delete_computers``). A connected agent is closed and its tickets void
    (``auth.cut_off``). With ``keep_key`` an online computer is refused: its agent would
    register again at once."""
    names = _arg(args, "names", list)
    if not names or not all(isinstance(n, str) for n in names):
        raise ApiError("bad_request", "argument 'names' must list the computers to delete")
    keep_key = _arg(args, "keep_key", bool, False)
    names = list(dict.fromkeys(names))
    rows = await ns.db.computers(names)
    _refuse_unknown("computer", names, {r["name"] for r in rows})
    online = sorted(r["name"] for r in rows if r["online"])
    if keep_key and online:
        raise ApiError(
            "computer_online",
            f"{', '.join(online)} {'is' if len(online) == 1 else 'are'} online: with --keep-key"
            " its agent would register again at once; stop the agent first, or delete the"
            " computer with its key (without --keep-key)",
        )
    ids = [int(r["id"]) for r in rows]
    work = await ns.db.unfinished_work(ids)
    if work:
        now = time.time()
        await ns.on_reports(
            [
                Report(
                    instance_id=int(w["id"]),
                    state=InstanceState.STOPPED,
                    computer=str(w["computer"]),
                    reason=COMPUTER_DELETED,
                    ended_at=now,
                )
                for w in work
            ]
        )
        by_route: dict[str, list[int]] = {}
        for w in work:
            if w["route"]:
                by_route.setdefault(w["route"], []).append(wire_id(w["epoch"], w["id"]))
        for route, wire_ids in by_route.items():
            handle = ns.routes.get(route)
            try:
                if handle is None:
                    raise ConnectionError(f"{route} is not connected")
                await handle.cancel(wire_ids)
            except Exception:  # told when it connects (``pending_cancels``)
                ns.pending_cancels[route].extend(wire_ids)
    await ns.db.delete_computers(ids, COMPUTER_DELETED)
    ns.forget_taskserver_load()
    keys: list[str] = []
    if not keep_key:
        keys = await ns.db.delete_agent_keys([r["name"] for r in rows if r["has_agent"]])
        for name in keys:  # a connected agent is closed now; its tickets open no TS
            await auth.cut_off(ns, "agent", name, f"the computer {name} was deleted by an admin")
    return {"deleted": sorted(names), "keys_deleted": keys, "stopped": len(work)}


@op("taskservers.list")
async def taskservers_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return [
        {
            "name": t["name"],
            "url": t["url"],
            "online": t["name"] in ns.routes,
            "computers": t["computers"],
        }
        for t in await ns.db.taskservers()
    ]


def _document(args: dict[str, Any]) -> Any:
    if "text" in args:
        try:
            return parse_document(
                _arg(args, "text", str), filename=_arg(args, "filename", str, "") or ""
            )
        except ValidationError as exc:
            raise ApiError("invalid_document", str(exc)) from None
    return _arg(args, "document", dict)


@op("task.add")
async def task_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    doc = _document(args)
    if is_job_document(doc):
        raise ApiError(
            "invalid_document",
            "this document is a job (type ends in -job): use `taskfleet job add`",
        )
    try:
        definition = validate_task(doc)
    except ValidationError as exc:
        raise ApiError("invalid_document", str(exc)) from None
    catalog = await ns.db.catalog()
    if catalog.get(definition.name, ("task",))[0] == "job":
        raise ApiError(
            "exists",
            f"a job is already named {definition.name!r}; tasks and jobs share one namespace",
        )
    saved = await ns.db.save_task_version(definition.to_dict(), link.who)
    return {**definition.to_dict(), **saved}


@op("job.add")
async def job_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    doc = _document(args)
    catalog = await ns.db.catalog()
    try:
        definition = validate_job(doc, catalog.get)
    except ValidationError as exc:
        raise ApiError("invalid_document", str(exc)) from None
    if catalog.get(definition["name"], ("job",))[0] == "task":
        raise ApiError(
            "exists",
            f"a task is already named {definition['name']!r}; tasks and jobs share one namespace",
        )
    saved = await ns.db.save_job_version(definition, link.who)
    return {**definition, **saved}


def _document_of(kind: str, definition: dict[str, Any]) -> dict[str, Any]:
    """A saved task or job as a document ``task add`` / ``job add`` takes back: without what
    the server derives (a task's ``kind``)."""
    return {k: v for k, v in definition.items() if not (kind == "task" and k == "kind")}


async def _saved_or_refuse(ns: NS, kind: str, name: str, version: int | None) -> dict[str, Any]:
    found = await ns.db.saved(kind, name, version)
    if found is not None:
        return found
    if version is not None and await ns.db.history(kind, name):
        raise ApiError(
            f"unknown_{kind}",
            f"{kind} {name!r} has no version {version}; `taskfleet {kind} history {name}` lists them",
        )
    other = "job" if kind == "task" else "task"
    if version is None and await ns.db.saved(other, name) is not None:
        raise ApiError(
            f"unknown_{kind}", f"{name!r} is a {other}, not a {kind}: use `taskfleet {other} ...`"
        )
    raise ApiError(f"unknown_{kind}", f"no {kind} named {name!r}; `taskfleet {kind}s` lists them")


async def _definition_show(ns: NS, kind: str, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    version = args.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ApiError("bad_request", "argument 'version' must be int")
    found = await _saved_or_refuse(ns, kind, name, version)
    document = _document_of(kind, found.pop("definition"))
    return {**found, "kind": kind, "name": name, "document": document}


async def _definition_history(ns: NS, kind: str, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    rows = await ns.db.history(kind, name)
    if not rows:
        raise ApiError(
            f"unknown_{kind}", f"no {kind} named {name!r}; `taskfleet {kind}s` lists them"
        )
    current = await ns.db.saved(kind, name)
    for r in rows:
        r["current"] = current is not None and r["version"] == current["version"]
    return rows


def _uses(steps: Any, name: str) -> bool:
    """Whether a job's steps (nested conditions included) name the task or job ``name``."""
    if isinstance(steps, list):
        return any(_uses(s, name) for s in steps)
    if isinstance(steps, dict):
        if steps.get("task") == name or steps.get("job") == name:
            return True
        return any(_uses(v, name) for v in steps.values() if isinstance(v, list | dict))
    return False


async def _definition_delete(ns: NS, kind: str, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    found = (await ns.db.catalog()).get(name)
    if found is None:
        raise ApiError(
            f"unknown_{kind}", f"no {kind} named {name!r}; `taskfleet {kind}s` lists them"
        )
    if found[0] != kind:
        raise ApiError(
            f"unknown_{kind}",
            f"{name!r} is a {found[0]}, not a {kind}: use `taskfleet {found[0]} delete {name}`",
        )
    jobs = [j["name"] for j in await ns.db.jobs() if j["name"] != name and _uses(j["steps"], name)]
    policies = [p["name"] for p in await ns.db.policies() if p.get("task") == name]
    if jobs or policies:
        users = [f"job {j}" for j in jobs] + [f"policy {p}" for p in policies]
        raise ApiError(
            "in_use",
            f"{kind} {name!r} is used by {', '.join(users)}: change or delete "
            f"{'them' if len(users) > 1 else 'it'} first",
        )
    await ns.db.delete_definition(kind, name)
    return {"deleted": name, "kind": kind}


@op("task.show")
async def task_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """A task as saved (``version``: an earlier one): ``document``, ``version``, ``saved_at``,
    ``saved_by``, ``summary``."""
    return await _definition_show(ns, "task", args)


@op("job.show")
async def job_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await _definition_show(ns, "job", args)


@op("task.history")
async def task_history(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Every kept version of a task: version, saved_at, saved_by, summary, current."""
    return await _definition_history(ns, "task", args)


@op("job.history")
async def job_history(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await _definition_history(ns, "job", args)


@op("task.delete")
async def task_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Delete a task; refused (``in_use``) while a job's steps or a policy name it."""
    return await _definition_delete(ns, "task", args)


@op("job.delete")
async def job_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Delete a job; refused (``in_use``) while another job's steps name it."""
    return await _definition_delete(ns, "job", args)


@op("jobs.list")
async def jobs_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.jobs()


async def runnable(ns: NS, name: str) -> dict[str, Any]:
    """The definition a run of ``name`` uses: a task as saved, or a job compiled now."""
    catalog = await ns.db.catalog()
    found = catalog.get(name)
    if found is None:
        raise ApiError(
            "unknown_task",
            f"no task or job named {name!r}; `taskfleet tasks` and `taskfleet jobs` list them",
        )
    what, definition = found
    if what == "task":
        return definition
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


@op("tasks.list")
async def tasks_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.tasks()


@op("types.list")
async def types_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return [
        {"id": t.id, "kind": str(t.kind), "params": sorted(t.params), "doc": t.doc}
        for t in CATALOG.values()
    ]


def _refuse_unknown(kind: str, asked: list[str], known: set[str]) -> None:
    """Refuse a run whose targets name a computer, group or filter that does not exist."""
    missing = sorted(set(asked) - known)
    if missing:
        raise ApiError(
            f"unknown_{kind}",
            f"unknown {kind}(s): {', '.join(missing)}; `taskfleet {kind}s` lists them",
        )


@op("run.start")
async def run_start(ns: NS, link: Link, args: dict[str, Any]) -> Any:
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
    return {**await ns.start_run(definition, computers), "skipped_offline": skipped}


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


async def _run_view(ns: NS, run_id: int, instances: bool = True) -> dict[str, Any]:
    """A run with its steps and either every instance row or (``instances`` false, for runs
    too big to list) how many top-level instances are in each state."""
    run = await ns.db.run(run_id)
    if run is None:
        raise ApiError("unknown_run", f"no run with id {run_id}; `taskfleet runs` lists them")
    view = {**run, "steps": await ns.db.steps(run_id)}
    if instances:
        view["instances"] = await ns.db.instances(run_id)
    else:
        view["counts"] = await ns.db.instance_counts(run_id)
    return view


@op("run.show")
async def run_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await _run_view(
        ns, _arg(args, "run_id", int), _arg(args, "instances", bool, default=True)
    )


@op("run.watch")
async def run_watch(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Subscribe to a run's events; the answer is its current state (events follow).

    ``instances`` (default true): every instance in the snapshot and an ``instances`` event per
    roll-up listing each change. False: the snapshot holds ``counts`` (top-level instances per
    state) and each roll-up sends one ``counts`` event (``changes``: how many instances moved,
    ``states``: how many top-level ones reached each state), for runs on thousands of computers.
    """
    run_id = _arg(args, "run_id", int)
    detail = _arg(args, "instances", bool, default=True)
    # Subscribe before reading, so no event falls between the snapshot and the first event.
    if run_id in ns.active:
        ns.watchers[run_id][link] = detail
    return await _run_view(ns, run_id, detail)


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


# -- trust ------------------------------------------------------------------------------


@op("whoami")
async def whoami(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return {"admin": link.who}


@op("keys.list")
async def keys_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.keys()


@op("keys.accept")
async def keys_accept(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    names = _arg(args, "names", list, [])
    if not names and not args.get("all"):
        raise ApiError("bad_request", "name the keys to accept, or accept --all pending keys")
    decided = await ns.db.decide_keys(
        None if args.get("all") else [str(n) for n in names], "accepted"
    )
    accepted = sorted({k["name"] for k in decided})
    for k in decided:
        if k["role"] == "taskserver":
            await auth.taskserver_enrolled(
                ns, k["name"], k["fingerprint"], k["address"], f"by {link.who} (keys accept)"
            )
    missing = sorted(set(map(str, names)) - set(accepted))
    if missing and not args.get("all"):
        raise ApiError(
            "unknown_key", f"no pending key for: {', '.join(missing)}; `taskfleet keys` lists them"
        )
    return {"accepted": accepted}


@op("keys.reject")
async def keys_reject(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    decided = await ns.db.decide_keys([name], "rejected", only_pending=False)
    if not decided:
        raise ApiError("unknown_key", f"no key named {name!r}; `taskfleet keys` lists them")
    for k in decided:  # its connection ends now, and its tickets open no TS
        await auth.cut_off(ns, k["role"], name, f"the key of {name} was rejected by an admin")
    return {"rejected": sorted({k["name"] for k in decided})}


@op("keys.delete")
async def keys_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    roles = await ns.db.delete_keys(name)
    if not roles:
        raise ApiError("unknown_key", f"no key named {name!r}; `taskfleet keys` lists them")
    for role in roles:  # its connection ends now, and its tickets open no TS
        await auth.cut_off(ns, role, name, f"the key of {name} was deleted by an admin")
    return {"deleted": name}


@op("tokens.create")
async def tokens_create(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    ttl_s = _arg(args, "ttl_s", int, 3600)
    uses = _arg(args, "uses", int, 1)
    role = _arg(args, "role", str, "agent")
    if not 1 <= ttl_s <= 365 * 86400 or not 1 <= uses <= 1_000_000:
        raise ApiError("bad_request", "ttl must be 1 s to 365 days and uses 1 to 1,000,000")
    if role not in auth.ENROL_ROLES:
        raise ApiError(
            "bad_request",
            f"an enrolment token is for one of: {', '.join(auth.ENROL_ROLES)} (not {role!r})",
        )
    token = auth.new_token("tfe")
    expires_at = time.time() + ttl_s
    token_id = await ns.db.add_enrol_token(hash_token(token), uses, expires_at, link.who, role)
    return {"id": token_id, "token": token, "uses": uses, "expires_at": expires_at, "role": role}


@op("tokens.list")
async def tokens_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.enrol_tokens()


@op("tokens.revoke")
async def tokens_revoke(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    token_id = _arg(args, "id", int)
    if not await ns.db.revoke_enrol_token(token_id):
        raise ApiError(
            "unknown_token",
            f"no enrolment token #{token_id} that is not revoked already; `taskfleet tokens` lists them",
        )
    return {"revoked": token_id}


@op("admins.add")
async def admins_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    role = _arg(args, "role", str, "viewer")
    if role not in auth.ADMIN_ROLES:
        raise ApiError("bad_request", f"role must be one of {', '.join(auth.ADMIN_ROLES)}")
    if not auth.admin_name_ok(name):
        raise ApiError("bad_request", f"{name!r} is refused: {auth.ADMIN_NAME_RULE}")
    token = auth.new_token("tfa")
    await ns.db.add_admin(name, role, hash_token(token))
    # A name given again gets a new token (and maybe another role): the old token is void, and
    # so are the sessions it opened.
    ended = await auth.end_admin_sessions(
        ns, name, f"the admin token of {name} was replaced (role now {role})", link
    )
    return {"name": name, "role": role, "token": token, "sessions_ended": ended}


@op("admins.list")
async def admins_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.admins()


@op("admins.revoke")
async def admins_revoke(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    if not await ns.db.revoke_admin(name):
        raise ApiError(
            "unknown_admin", f"no active admin named {name!r}; `taskfleet admins list` lists them"
        )
    ended = await auth.end_admin_sessions(ns, name, f"the admin token of {name} was revoked", link)
    return {"revoked": name, "sessions_ended": ended}


@op("audit.list")
async def audit_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.audit_trail(max(1, min(_arg(args, "limit", int, 100), 10_000)))


@op("messages.list")
async def messages_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.messages(max(1, min(_arg(args, "limit", int, 100), 10_000)))


@op("stats")
async def stats(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Refusal counters (by code) since the server started, and the handshake gate's state."""
    relay = ns.relay.refused if ns.relay is not None else {}
    return {
        "refused": dict(ns.refused),
        "builtin_relay_refused": dict(relay),
        "handshake_gate": ns.gate.stats(),
        "admin_gate": ns.admin_gate.stats() if ns.admin_url else None,
    }


@op("inventory.show")
async def inventory_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """The latest basic inventory of a computer (``history``: every one, newest first); a name
    that is no computer is ``unknown_computer`` (a usage error), not an empty inventory."""
    computer = _arg(args, "computer", str)
    rows = await ns.db.inventory(computer, bool(args.get("history", False)))
    if not rows and not await ns.db.computers([computer]):
        raise ApiError(
            "unknown_computer", f"unknown computer {computer!r}: `taskfleet computers` lists them"
        )
    return rows


# -- groups, filters, reports ------------------------------------------------------------


@op("groups.list")
async def groups_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.groups()


@op("groups.add")
async def groups_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    if not NAME.fullmatch(name):
        raise ApiError(
            "bad_request",
            "a group name has letters, digits, '.', '_', '-', starting with a letter or digit",
        )
    try:
        group_id = await ns.db.add_group(name, _arg(args, "parent", str, "") or None)
    except ValueError as exc:
        raise ApiError("unknown_group", str(exc)) from None
    except Exception:
        raise ApiError("exists", f"a group named {name!r} exists") from None
    return {"id": group_id, "name": name}


async def _group_or_refuse(ns: NS, args: dict[str, Any]) -> dict[str, Any]:
    name = _arg(args, "group", str)
    group = await ns.db.group(name)
    if group is None:
        raise ApiError("unknown_group", f"no group named {name!r}; `taskfleet groups` lists them")
    return group


async def _member_rows(ns: NS, args: dict[str, Any]) -> list[dict[str, Any]]:
    names = _arg(args, "computers", list)
    if not names or not all(isinstance(n, str) for n in names):
        raise ApiError("bad_request", "argument 'computers' must list computer names")
    names = list(dict.fromkeys(names))
    rows = await ns.db.computers(names)
    _refuse_unknown("computer", names, {r["name"] for r in rows})
    return rows


@op("groups.add_member")
async def groups_add_member(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Put computers (``computers``, every one must exist) in group ``group``."""
    group = await _group_or_refuse(ns, args)
    rows = await _member_rows(ns, args)
    added = await ns.db.add_to_group(group["id"], [r["id"] for r in rows])
    return {"group": group["name"], "added": added, "already": len(rows) - added}


@op("groups.remove_member")
async def groups_remove_member(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Take computers out of group ``group`` (the computers stay, and in their other groups)."""
    group = await _group_or_refuse(ns, args)
    rows = await _member_rows(ns, args)
    removed = await ns.db.remove_from_group(group["id"], [r["id"] for r in rows])
    return {"group": group["name"], "removed": removed, "not_members": len(rows) - removed}


@op("groups.show")
async def groups_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """A group: its parent, the groups nested in it, its own members, and how many computers
    a run on it reaches (its members and those of every group below it)."""
    group = await _group_or_refuse(ns, args)
    members = await ns.db.group_members(group["id"])
    return {
        "name": group["name"],
        "parent": group["parent"],
        "groups": await ns.db.nested_groups(group["id"]),
        "members": [
            {"name": m["name"], "online": bool(m["online"]), "has_agent": bool(m["has_agent"])}
            for m in members
        ],
        "computers": len(await ns.db.group_computers([group["name"]])),
    }


@op("groups.delete")
async def groups_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Delete a group (its computers stay). Refused (``in_use``) while groups are nested in it,
    a policy targets it, or an assign-to-group task fills it without creating it."""
    group = await _group_or_refuse(ns, args)
    name = group["name"]
    users = [f"group {g} (nested in it)" for g in await ns.db.nested_groups(group["id"])]
    users += [
        f"policy {p['name']}"
        for p in await ns.db.policies()
        if name in (p.get("targets") or {}).get("groups", [])
    ]
    users += [
        f"task {t['name']} (assign-to-group)"
        for t in await ns.db.tasks()
        if t.get("type") == "assign-to-group"
        and (t.get("params") or {}).get("group") == name
        and not (t.get("params") or {}).get("create")
    ]
    if users:
        raise ApiError(
            "in_use",
            f"group {name!r} is named by {', '.join(users)}: change or delete "
            f"{'them' if len(users) > 1 else 'it'} first",
        )
    held = await ns.db.delete_group(group["id"])
    return {"deleted": name, "members": held}


@op("filter.add")
async def filter_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    from server.tasktypes.filters import recompute_filters

    try:
        definition, _ = validate_filter(_document(args))
    except ValidationError as exc:
        raise ApiError("invalid_document", str(exc)) from None
    replaced = await ns.db.save_filter(definition)
    changes = await recompute_filters(ns, definition["name"])
    return {**definition, "replaced": replaced, "members": changes[definition["name"]]["added"]}


@op("filters.list")
async def filters_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.filters()


async def _filter_or_refuse(ns: NS, args: dict[str, Any]) -> dict[str, Any]:
    name = _arg(args, "name", str)
    found = await ns.db.filter_definition(name)
    if found is None:
        raise ApiError(
            "unknown_filter", f"no filter named {name!r}; `taskfleet filters` lists them"
        )
    return found


@op("filters.show")
async def filters_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """A filter as saved and its cached members (as computed at ``members_at``)."""
    found = await _filter_or_refuse(ns, args)
    members = await ns.db.filter_member_names(found["name"])
    return {
        **found,
        "members": [
            {"name": m["name"], "online": bool(m["online"]), "has_agent": bool(m["has_agent"])}
            for m in members
        ],
    }


@op("filters.delete")
async def filters_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Delete a filter and its cached membership; refused (``in_use``) while a policy targets
    it."""
    found = await _filter_or_refuse(ns, args)
    name = found["name"]
    users = [
        p["name"]
        for p in await ns.db.policies()
        if name in (p.get("targets") or {}).get("filters", [])
    ]
    if users:
        raise ApiError(
            "in_use",
            f"filter {name!r} is targeted by policy {', '.join(users)}: change or delete "
            f"{'them' if len(users) > 1 else 'it'} first",
        )
    await ns.db.delete_item("filter", name)
    return {"deleted": name}


@op("report.add")
async def report_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    doc = _document(args)
    name, query = doc.get("name"), doc.get("query")
    problems = []
    if not isinstance(name, str) or not name:
        problems.append("name: required")
    if not isinstance(query, str) or not query.strip():
        problems.append("query: required, one read-only SQL statement")
    if problems:
        raise ApiError("invalid_document", "report is invalid:\n  - " + "\n  - ".join(problems))
    replaced = await ns.db.save_report(str(name), str(query), str(doc.get("description", "")))
    return {"name": name, "query": query, "replaced": replaced}


@op("reports.list")
async def reports_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.reports()


@op("items.list")
async def items_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.items(_arg(args, "folder", str, "") or None)


@op("folders.list")
async def folders_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.folders()


async def _tell_policy_agents(ns: NS, *policies: dict[str, Any]) -> dict[str, int]:
    """A policy changed: its connected agents (of every version given, old and new) are
    tickled, so they register again and get their new set of policies now; offline ones get it
    when they connect. Returns ``{tickled, offline}`` counts."""
    chosen: dict[int, dict[str, Any]] = {}
    for policy in policies:
        for c in await policy_targets(ns, policy):
            if c["has_agent"]:
                chosen[int(c["id"])] = c
    if not chosen:
        return {"tickled": 0, "offline": 0}
    reached, offline = await ns.tickle(list(chosen.values()))
    return {"tickled": len(reached), "offline": len(offline)}


async def _policy_or_refuse(ns: NS, args: dict[str, Any]) -> dict[str, Any]:
    name = _arg(args, "name", str)
    found = next((p for p in await ns.db.policies() if p["name"] == name), None)
    if found is None:
        raise ApiError(
            "unknown_policy", f"no policy named {name!r}; `taskfleet policies` lists them"
        )
    return found


@op("policy.add")
async def policy_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    doc = _document(args)
    task = await ns.db.task(str(doc.get("task"))) if isinstance(doc, dict) else None
    try:
        definition = validate_policy(doc, task["kind"] if task else None)
    except ValidationError as exc:
        raise ApiError("invalid_document", str(exc)) from None
    old = next((p for p in await ns.db.policies() if p["name"] == definition["name"]), None)
    replaced = await ns.db.save_policy(definition)
    reach = [p for p in (old, definition) if p is not None and p["enabled"]]
    return {**definition, "replaced": replaced, **await _tell_policy_agents(ns, *reach)}


async def _policy_switch(ns: NS, args: dict[str, Any], enabled: bool) -> dict[str, Any]:
    policy = await _policy_or_refuse(ns, args)
    told = {"tickled": 0, "offline": 0}
    if policy["enabled"] != enabled:
        await ns.db.set_policy_enabled(policy["name"], enabled)
        told = await _tell_policy_agents(ns, policy)
    return {
        "policy": policy["name"],
        "enabled": enabled,
        "changed": policy["enabled"] != enabled,
        **told,
    }


@op("policy.enable")
async def policy_enable(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Enable a policy; its connected agents get it now (``_tell_policy_agents``)."""
    return await _policy_switch(ns, args, True)


@op("policy.disable")
async def policy_disable(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Disable a policy; its connected agents stop running it now."""
    return await _policy_switch(ns, args, False)


@op("policy.delete")
async def policy_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Delete a policy; if it was enabled, its connected agents stop running it now."""
    policy = await _policy_or_refuse(ns, args)
    await ns.db.delete_item("policy", policy["name"])
    told = (
        await _tell_policy_agents(ns, policy) if policy["enabled"] else {"tickled": 0, "offline": 0}
    )
    return {"deleted": policy["name"], **told}


@op("policies.list")
async def policies_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.policies()


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
