"""Admin verbs for schedules and retention: ``schedule add FILE`` (a TOML or JSON document,
``docs/schedules.md``), ``schedule show|enable|disable|delete NAME``, ``schedules`` (the list,
with each one's next and last firing), and ``purge`` (a retention pass now; ``--dry-run``: what
it would delete, per kind, and the cut-off times)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from admin import schema
from admin.client import AdminClient
from admin.common import EXIT_OK, EXIT_USAGE, _print_json
from admin.output import table
from admin.tomlout import TomlError, dumps
from protocol.errors import RemoteError


async def v_schedule(c: AdminClient, args: argparse.Namespace) -> int:
    """``schedule add FILE`` / ``schedule show|enable|disable|delete NAME``."""
    try:
        if args.action == "add":
            return _added(await c.add_document("schedule.add", args.target), args.json)
        result = await c.call(f"schedule.{args.action}", name=args.target)
    except RemoteError as exc:
        if exc.code != "unknown_schedule":
            raise
        # An unknown name is a usage error (exit 2), which admin/cli.py's common handler gives
        # only to the codes it lists; the error's shape (JSON with --json) is the shared one.
        schema.print_error(args.json, exc.code, exc.message)
        return EXIT_USAGE
    if args.json:
        _print_json(schema.record(result))
    elif args.action == "show":
        return _show(result)
    elif args.action == "delete":
        print(f"deleted schedule {result['deleted']} (the runs it started stay)")
    else:
        state = "enabled" if result["enabled"] else "disabled"
        print(f"schedule {result['schedule']} {state}" + ("" if result["changed"] else " already"))
    return EXIT_OK


def _added(saved: dict[str, Any], as_json: bool) -> int:
    if as_json:
        _print_json(schema.record(saved))
        return EXIT_OK
    verb = "replaced" if saved["replaced"] else "added"
    state = "" if saved["enabled"] else " (disabled)"
    print(f"{verb} schedule {saved['name']}: runs {saved['run']}{state}")
    return EXIT_OK


def _show(shown: dict[str, Any]) -> int:
    """The document as TOML, then the next firings and the last one as comments."""
    try:
        text = dumps(shown["document"])
    except TomlError as exc:
        print(
            f"taskfleet: this schedule cannot be written as TOML ({exc}): use --json",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(text, end="")
    print("# next firings (UTC):" + ("" if shown["next"] else " none"))
    for at in shown["next"]:
        print(f"#   {at}")
    if shown["last_at"]:
        run = shown["last_run_id"]
        print(
            f"# last firing: {shown['last_at']}, "
            + (f"run {run}" if run is not None else f"no run ({shown['last_outcome']})")
        )
    return EXIT_OK


async def v_schedules(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("schedules.list")
    if args.json:
        _print_json(schema.records(rows))
        return EXIT_OK
    for r in rows:
        r["state"] = "enabled" if r["enabled"] else "disabled"
        r["next"] = r["next_at"] or "-"
        r["last"] = r["last_at"] or "-"
        r["run_id"] = "-" if r["last_run_id"] is None else r["last_run_id"]
    print(
        table(
            rows,
            [
                ("name", "name"),
                ("run", "runs"),
                ("when", "when"),
                ("state", "state"),
                ("next", "next (utc)"),
                ("last", "last (utc)"),
                ("run_id", "last run"),
            ],
        )
    )
    return EXIT_OK


PURGE_KINDS = ("runs", "instances", "steps", "schedule_firings", "audit", "log", "messages")
_CUT_OF = {"instances": "runs", "steps": "runs", "schedule_firings": "runs"}


async def v_purge(c: AdminClient, args: argparse.Namespace) -> int:
    done = await c.call("purge", dry_run=args.dry_run)
    if args.json:
        cutoffs = {k: schema.when(v) for k, v in done["cutoffs"].items()}
        _print_json({**done, "cutoffs": cutoffs})
        return EXIT_OK
    rows = [
        {
            "kind": kind,
            "rows": done[kind],
            "cut": done["cutoffs"][_CUT_OF.get(kind, kind)] or "kept for ever",
        }
        for kind in PURGE_KINDS
    ]
    head = "would delete (dry run)" if done["dry_run"] else "deleted"
    print(table(rows, [("kind", "kind"), ("rows", head), ("cut", "older than (utc)")]))
    return EXIT_OK


def add_schedule_verbs(verb: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """Register ``schedule``, ``schedules`` and ``purge`` on the CLI."""
    v = verb(
        "schedule",
        v_schedule,
        "`schedule add FILE`: save a schedule (TOML or JSON); `schedule show|enable|disable|delete NAME`",
    )
    v.add_argument(
        "action",
        choices=["add", "show", "enable", "disable", "delete"],
        help="add a document, or show, enable, disable or delete a schedule",
    )
    v.add_argument("target", metavar="FILE|NAME", help="add: a document file; else the schedule")
    verb("schedules", v_schedules, "list schedules with their next and last firing")
    v = verb(
        "purge", v_purge, "delete what is older than its retention time now (admin); see --dry-run"
    )
    v.add_argument(
        "--dry-run", action="store_true", help="only count what would go, and show the cut-offs"
    )
