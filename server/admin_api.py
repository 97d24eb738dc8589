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
from protocol.jobs import JobCompileError, JobType, compile_job, is_job_document, validate_job
from protocol.policies import validate_policy
from protocol.session import NAME
from protocol.states import InstanceState
from protocol.tasks import CATALOG, parse_document, validate_task
from runtime.link import Link
from server import auth
from server.interface import NS
from server.jobs import no_agent_targets
from server.store.backup import BackupError, write_backup


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
    replaced = await ns.db.save_task(definition.to_dict())
    return {**definition.to_dict(), "replaced": replaced}


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
    replaced = await ns.db.save_job(definition)
    return {**definition, "replaced": replaced}


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
    only_server_steps = definition["kind"] == "server" or (
        definition["kind"] == "server-job"
        and all(i["kind"] == "server" for i in definition["job"]["program"] if i["op"] == "run")
    )
    if not computers and not only_server_steps:
        what = "server job" if definition["kind"] == "server-job" else f"{definition['kind']} task"
        if definition.get("type") == "client-job":
            what = "client job"
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
        }
    return await ns.start_run(definition, computers)


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
    """The latest basic inventory of a computer (``history``: every one, newest first)."""
    return await ns.db.inventory(_arg(args, "computer", str), bool(args.get("history", False)))


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


@op("policy.add")
async def policy_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    doc = _document(args)
    task = await ns.db.task(str(doc.get("task"))) if isinstance(doc, dict) else None
    try:
        definition = validate_policy(doc, task["kind"] if task else None)
    except ValidationError as exc:
        raise ApiError("invalid_document", str(exc)) from None
    replaced = await ns.db.save_policy(definition)
    return {**definition, "replaced": replaced}


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
