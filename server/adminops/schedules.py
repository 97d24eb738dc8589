"""Admin operations on schedules and retention: ``schedule.add`` (validated, with problems at
their field paths, the task or job and targets checked against what is saved now),
``schedules.list``, ``schedule.show`` (with the next firings), ``schedule.enable``,
``schedule.disable``, ``schedule.delete``, and ``purge`` (a retention pass now, or with
``dry_run`` only what it would delete). Each change wakes the scheduler. Each registers itself
with :func:`server.adminops.base.op`."""

from __future__ import annotations

from typing import Any

from protocol.errors import Problem, ValidationError
from runtime.link import Link
from server.adminops.base import ApiError, _arg, _document, op
from server.adminops.runs import start_from_args
from server.interface import NS
from server.schedules import (
    NO_TIME_IN_WINDOW,
    When,
    iso,
    upcoming,
    validate_schedule,
)

NEXT_SHOWN = 5
"""How many next firings ``schedule show`` lists."""
_TARGET_PATHS = {
    "unknown_task": "run",
    "invalid_document": "run",
    "unknown_computer": "targets.computers",
    "unknown_group": "targets.groups",
    "unknown_filter": "targets.filters",
    "no_targets": "targets",
    "bad_request": "targets",
}


@op("schedule.add")
async def schedule_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Save a schedule document (replacing one of that name); its times count from now."""
    try:
        definition = validate_schedule(_document(args), now=ns.schedule_now())
    except ValidationError as exc:
        raise ApiError("invalid_document", str(exc)) from None
    targets = definition["targets"]
    try:
        # The same resolution a firing makes, without starting anything.
        await start_from_args(
            ns,
            {
                "task": definition["run"],
                "computers": targets.get("computers", []),
                "groups": targets.get("groups", []),
                "filters": targets.get("filters", []),
                "all": bool(targets.get("all", False)),
                "check": True,
            },
        )
    except ApiError as exc:
        problem = Problem(_TARGET_PATHS.get(exc.code, "(document)"), str(exc))
        raise ApiError(
            "invalid_document", str(ValidationError(f"schedule {definition['name']!r}", [problem]))
        ) from None
    replaced = await ns.db.save_schedule(definition, ns.schedule_now())
    ns.schedules_changed()
    return {**definition, "replaced": replaced}


async def _schedule_or_refuse(ns: NS, args: dict[str, Any]) -> dict[str, Any]:
    name = _arg(args, "name", str)
    row = await ns.db.schedule(name)
    if row is None:
        raise ApiError(
            "unknown_schedule", f"no schedule named {name!r}; `taskfleet schedules` lists them"
        )
    return row


def _next(row: dict[str, Any], now: float, count: int) -> list[float]:
    """The next ``count`` firing times of a schedule row (none while it is disabled). The
    first comes from the searches the scheduler already made (``server.schedules.next_time``),
    so listing many schedules costs no search per request."""
    if not row["enabled"]:
        return []
    try:
        return upcoming(row, now, count)
    except (ValueError, KeyError):  # a row this NS cannot read (its time zone is gone...)
        return []


def _when_text(definition: dict[str, Any]) -> str:
    """A schedule's times in a few words, for the list."""
    if "cron" in definition:
        return f"cron {definition['cron']} ({definition.get('timezone', 'UTC')})"
    if "every" in definition:
        return f"every {definition['every']}"
    return f"at {definition['at']}"


@op("schedules.list")
async def schedules_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Every schedule: what it runs, when, its next firing and its last one (ISO UTC)."""
    now = ns.schedule_now()
    out = []
    for row in await ns.db.schedules():
        upcoming = _next(row, now, 1)
        out.append(
            {
                "name": row["name"],
                "run": row["definition"]["run"],
                "when": _when_text(row["definition"]),
                "enabled": row["enabled"],
                "next_at": iso(upcoming[0]) if upcoming else None,
                "last_at": iso(row["last_due"]),
                "last_run_id": row["last_run_id"],
                "last_outcome": row["last_outcome"],
            }
        )
    return out


@op("schedule.show")
async def schedule_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """A schedule's document, its next firings and its last one."""
    row = await _schedule_or_refuse(ns, args)
    return {
        "document": row["definition"],
        "enabled": row["enabled"],
        "next": [at for at in map(iso, _next(row, ns.schedule_now(), NEXT_SHOWN)) if at],
        "last_at": iso(row["last_due"]),
        "last_run_id": row["last_run_id"],
        "last_outcome": row["last_outcome"],
    }


async def _switch(ns: NS, args: dict[str, Any], enabled: bool) -> dict[str, Any]:
    row = await _schedule_or_refuse(ns, args)
    if enabled and not row["enabled"]:
        _refuse_if_never(row, ns.schedule_now())
    if row["enabled"] != enabled:
        await ns.db.set_schedule_enabled(row["name"], enabled, ns.schedule_now())
        ns.schedules_changed()
    return {"schedule": row["name"], "enabled": enabled, "changed": row["enabled"] != enabled}


def _refuse_if_never(row: dict[str, Any], now: float) -> None:
    """Enabling counts an ``every`` from now: refuse when none of its times would then fall in
    its window (the save-time rule, :func:`server.schedules.validate_schedule`)."""
    when = When.of(row["definition"])
    if when.window is not None and when.at is None and when.next_after(now, now) is None:
        raise ApiError(
            "bad_request",
            f"schedule {row['name']!r}: counted from now, {NO_TIME_IN_WINDOW}; change its"
            " every or window and save it again (`taskfleet schedule add`)",
        )


@op("schedule.enable")
async def schedule_enable(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Enable a schedule; its times count from now (those while disabled are not missed)."""
    return await _switch(ns, args, True)


@op("schedule.disable")
async def schedule_disable(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Disable a schedule: it fires no more until enabled; runs it started go on."""
    return await _switch(ns, args, False)


@op("schedule.delete")
async def schedule_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Delete a schedule and its firings; runs it started stay, with its name."""
    row = await _schedule_or_refuse(ns, args)
    await ns.db.delete_schedule(row["name"])
    ns.schedules_changed()
    return {"deleted": row["name"]}


@op("purge")
async def purge(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """A retention pass now; ``dry_run``: only count what it would delete. Cut-offs in ISO UTC
    (None: that kind is kept for ever)."""
    done = await ns.purge(dry_run=_arg(args, "dry_run", bool, False))
    return {**done, "cutoffs": {k: iso(v) for k, v in done["cutoffs"].items()}}
