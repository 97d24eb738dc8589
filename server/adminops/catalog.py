"""Admin operations on what the server keeps to run: tasks and jobs (add, show, history, delete,
list; tasks and jobs share one namespace), the task types, reports, items and folders, and
policies (a change reaches the connected agents at once). Each registers itself with
:func:`server.adminops.base.op`."""

from __future__ import annotations

from typing import Any

from protocol.errors import ValidationError
from protocol.jobs import (
    is_job_document,
    validate_job,
)
from protocol.policies import validate_policy
from protocol.tasks import CATALOG, Param, validate_task
from runtime.link import Link
from server.adminops.base import ApiError, _arg, _document, op, refuse_read_only
from server.interface import NS
from server.policies import targets as policy_targets


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
    await refuse_read_only(ns, "task", definition.name)
    if ((await ns.db.catalog_entry(definition.name)) or ("task",))[0] == "job":
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
    await refuse_read_only(ns, "job", definition["name"])
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
    found = await ns.db.catalog_entry(name)
    if found is None:
        raise ApiError(
            f"unknown_{kind}", f"no {kind} named {name!r}; `taskfleet {kind}s` lists them"
        )
    if found[0] != kind:
        raise ApiError(
            f"unknown_{kind}",
            f"{name!r} is a {found[0]}, not a {kind}: use `taskfleet {found[0]} delete {name}`",
        )
    await refuse_read_only(ns, kind, name)
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


@op("tasks.list")
async def tasks_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.tasks()


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_TYPE_NAMES.update({dict: "table", list: "list"})


def _type_name(t: type | tuple[type, ...], item: type | None) -> str:
    """A parameter's type as a document writes it: ``integer``, ``list of integer``."""
    names = [_TYPE_NAMES.get(x, x.__name__) for x in (t if isinstance(t, tuple) else (t,))]
    of = f" of {_TYPE_NAMES.get(item, item.__name__)}" if item is not None else ""
    return " or ".join(names) + of


def _param_view(name: str, p: Param) -> dict[str, Any]:
    """One parameter's schema in full, for ``taskfleet types NAME``."""
    return {
        "name": name,
        "type": _type_name(p.type, p.item_type),
        "required": p.required,
        "default": None if p.required else p.default,
        "choices": list(p.choices),
        "minimum": p.minimum,
        "maximum": p.maximum,
        "pattern": p.pattern,
        "description": p.doc,
    }


@op("types.list")
async def types_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Every task type with its parameters: ``params`` (their names) for the list, and
    ``parameters`` (each one's schema in full) for ``taskfleet types NAME``."""
    return [
        {
            "id": t.id,
            "kind": str(t.kind),
            "params": sorted(t.params),
            "parameters": [_param_view(name, p) for name, p in t.params.items()],
            "doc": t.doc,
        }
        for t in CATALOG.values()
    ]


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
    await refuse_read_only(ns, "policy", definition["name"])
    old = next((p for p in await ns.db.policies() if p["name"] == definition["name"]), None)
    replaced = await ns.db.save_policy(definition)
    reach = [p for p in (old, definition) if p is not None and p["enabled"]]
    return {**definition, "replaced": replaced, **await _tell_policy_agents(ns, *reach)}


async def _policy_switch(ns: NS, args: dict[str, Any], enabled: bool) -> dict[str, Any]:
    policy = await _policy_or_refuse(ns, args)
    await refuse_read_only(ns, "policy", policy["name"])
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
    await refuse_read_only(ns, "policy", policy["name"])
    await ns.db.delete_item("policy", policy["name"])
    told = (
        await _tell_policy_agents(ns, policy) if policy["enabled"] else {"tickled": 0, "offline": 0}
    )
    return {"deleted": policy["name"], **told}


@op("policies.list")
async def policies_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.policies()
