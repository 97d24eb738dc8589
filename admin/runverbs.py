"""Admin verbs on runs: ``run`` (start a saved task or job on its targets, ``--wait`` to follow
it), ``runs`` (list them, or ``runs show ID``, one computer's output with ``--computer``) and
``watch`` (follow a run live); ``run --wait`` and ``watch`` exit 1 when a target did not succeed,
130 on Ctrl-C (the run goes on: the message says how to follow or stop it). ``runs show --csv``
exports the results (:mod:`admin.schema`, docs/json.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from admin import schema
from admin.client import AdminClient
from admin.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _print_json
from admin.liveview import follow_output, print_ndjson
from admin.output import short_time, table
from admin.views import follow, print_computer, print_run, select


async def _follow(
    c: AdminClient, run_id: int, as_json: bool, output: bool = False
) -> dict[str, Any]:
    """Follow a run to its end. On Ctrl-C say that the run goes on and how to follow or stop
    it (stopping following stops nothing on the fleet), then let the interrupt end the command
    (``asyncio.run`` turns it into KeyboardInterrupt: exit 130)."""
    try:
        if output:  # ``watch --output``: what the scripts print, as they print it
            return await follow_output(c, run_id, as_json=as_json)
        return await follow(c, run_id, quiet=as_json)
    except asyncio.CancelledError:
        if not as_json and sys.stdout.isatty():
            print(file=sys.stderr)  # the progress line may be open on the terminal
        schema.print_error(
            as_json,
            "interrupted",
            f"run {run_id} goes on: `taskfleet watch {run_id}` follows it,"
            f" `taskfleet stop {run_id}` stops it",
            {"run_id": run_id},
        )
        raise


async def _run_on_child(c: AdminClient, args: argparse.Namespace) -> int:
    """``run ITEM --child NAME``: start a replicated, remote-startable task or job on a child
    NS's computers, through the child; print the child's run id."""
    if args.wait:
        schema.print_error(
            args.json,
            "usage",
            f"--wait does not follow a child's run: `taskfleet runs --child {args.child} ID`"
            " shows its results",
        )
        return EXIT_USAGE
    started = await c.call(
        "children.start",
        child=args.child,
        task=args.name,
        computers=args.computer or [],
        groups=args.group or [],
        filters=args.filter or [],
        all=args.all,
        online_only=args.online_only,
    )
    if args.json:
        _print_json(schema.child_started(started))
        return EXIT_OK
    if started.get("no_agent"):
        print(
            f"warning: {len(started['no_agent'])} target(s) on {args.child} have no agent and"
            " will fail their client steps with reason 'no agent': "
            + ", ".join(started["no_agent"]),
            file=sys.stderr,
        )
    print(
        f"started run {started['run_id']} on child {args.child} ({started['targets']} target(s));"
        f" `taskfleet runs --child {args.child} {started['run_id']}` shows its results"
    )
    return EXIT_OK


async def v_run(c: AdminClient, args: argparse.Namespace) -> int:
    if args.child is not None:
        return await _run_on_child(c, args)
    target = {
        "task": args.name,
        "computers": args.computer or [],
        "groups": args.group or [],
        "filters": args.filter or [],
        "all": args.all,
        "online_only": args.online_only,
    }
    plan = await c.call("run.start", check=True, **target)
    if plan.get("skipped_offline"):
        print(
            f"{plan['skipped_offline']} offline target(s) skipped (--online-only)", file=sys.stderr
        )
    elif plan.get("offline"):
        print(
            f"warning: {plan['offline']} of {plan['targets']} targets are offline: they run when"
            " they connect, until the time limit (--online-only skips them)",
            file=sys.stderr,
        )
    if plan["no_agent"]:
        print(
            f"warning: {len(plan['no_agent'])} target(s) have no agent and will fail their client steps "
            "with reason 'no agent': " + ", ".join(plan["no_agent"]),
            file=sys.stderr,
        )
    started = await c.call("run.start", **target)
    run_id = started["run_id"]
    if not args.wait:
        if args.json:
            _print_json(started)
        else:
            print(
                f"started run {run_id} on {started['targets']} target(s)"
                + (
                    f" ({started['skipped_offline']} offline skipped)"
                    if started.get("skipped_offline")
                    else ""
                )
                + f"; `taskfleet watch {run_id}` follows it"
            )
        return EXIT_OK
    if not args.json:
        print(f"run {run_id} started on {started['targets']} target(s)", file=sys.stderr)
    final = await _follow(c, run_id, args.json)
    if args.json:
        _print_json(schema.run_detail(final))
    else:
        print_run(final)
    return EXIT_OK if final["status"] == "succeeded" else EXIT_FAILED


class _ShowOrRunId:
    """The choices of ``runs``'s first word: ``show``, or a run id, so that ``runs --child NAME
    ID`` reads as written (v_runs refuses a bare id without ``--child``). Listed as ``show``
    alone (help, completion)."""

    def __contains__(self, value: object) -> bool:
        return value == "show" or (isinstance(value, str) and value.isdigit())

    def __iter__(self) -> Any:
        return iter(("show",))


def _child_run_id(args: argparse.Namespace) -> int | None:
    """The run id of ``runs --child NAME ID`` (or ``runs show ID --child NAME``); None: list."""
    if args.action is not None and args.action != "show":
        return int(args.action)
    return None if args.run_id is None else int(args.run_id)


async def _child_runs(c: AdminClient, args: argparse.Namespace) -> int:
    """``runs --child NAME``: the child's runs of this NS's items, from the summary it sent."""
    data = await c.call("children.runs", child=args.child)
    if args.json:
        _print_json(schema.child_runs(data))
        return EXIT_OK
    rows = [schema.child_run(r) for r in data["runs"]]
    for r, raw in zip(rows, data["runs"], strict=True):
        r["created"] = short_time(raw["started_at"]) if raw.get("started_at") else ""
        r["states"] = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()))
    when = short_time(data["at"]) if data.get("at") else "never"
    link = "connected" if data["connected"] else "not connected"
    print(f"child {data['child']} ({link}), summary of {when} (utc)")
    columns = [("run_id", "id"), ("task", "task"), ("kind", "kind"), ("status", "status")]
    columns += [("total", "targets"), ("succeeded", "ok"), ("failed", "not ok")]
    columns += [("pending", "open"), ("states", "states"), ("created", "created (utc)")]
    print(table(rows, columns))
    return EXIT_OK


async def v_runs(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action not in (None, "show") and args.child is None:
        schema.print_error(
            args.json,
            "usage",
            f"`runs {args.action}`: a run of this NS is `runs show {args.action}`; a child's is"
            f" `runs --child NAME {args.action}`",
        )
        return EXIT_USAGE
    if args.child is not None and _child_run_id(args) is None:
        if args.action == "show":
            schema.print_error(args.json, "usage", "runs show needs a run ID")
            return EXIT_USAGE
        if args.csv:
            schema.print_error(args.json, "usage", "--csv is for one run: `runs --child NAME ID`")
            return EXIT_USAGE
        return await _child_runs(c, args)
    if args.child is not None:
        args.action, args.run_id = "show", _child_run_id(args)
    if args.csv and (args.json or args.action != "show"):
        schema.print_error(
            args.json,
            "usage",
            "--csv and --json exclude each other: give one of them"
            if args.json
            else "--csv is for `runs show ID` (the list has no CSV form)",
        )
        return EXIT_USAGE
    if args.action == "show":
        if args.run_id is None:
            schema.print_error(args.json, "usage", "runs show needs a run ID")
            return EXIT_USAGE
        run = (
            await c.call("children.run", child=args.child, run_id=args.run_id)
            if args.child is not None
            else await c.call("run.show", run_id=args.run_id)
        )
        if args.computer is not None or args.failed:
            try:
                run = select(run, args.computer, args.failed)
            except LookupError as exc:
                schema.print_error(args.json, "unknown_computer", str(exc))
                return EXIT_USAGE
        if args.csv:
            schema.write_csv(run, sys.stdout)
        elif args.json:
            _print_json(
                schema.child_run_detail(run) if args.child is not None else schema.run_detail(run)
            )
        elif args.computer is not None:
            print_computer(run, args.computer)
        else:
            print_run(run)
        return EXIT_OK
    rows = await c.call("runs.list", limit=args.limit)
    if args.json:
        _print_json([schema.run(r) for r in rows])
        return EXIT_OK
    for r in rows:
        r["created"] = short_time(r["created_at"])
    print(
        table(
            rows,
            [
                ("id", "id"),
                ("task_name", "task"),
                ("kind", "kind"),
                ("status", "status"),
                ("total", "targets"),
                ("succeeded", "ok"),
                ("failed", "not ok"),
                ("pending", "open"),
                ("created", "created (utc)"),
            ],
        )
    )
    return EXIT_OK


async def v_watch(c: AdminClient, args: argparse.Namespace) -> int:
    final = await _follow(c, args.run_id, args.json, args.output)
    if args.json and args.output:  # ndjson to the end: the run is one line too
        print_ndjson({"event": "run", "run": schema.run_detail(final)})
    elif args.json:
        _print_json(schema.run_detail(final))
    else:
        print_run(final)
    return EXIT_OK if final["status"] == "succeeded" else EXIT_FAILED


def add_run_verbs(verb: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """Register the run verbs on the CLI."""
    v = verb("run", v_run, "run a saved task or job")
    v.add_argument("name", help="the saved task or job to run")
    v.add_argument("--computer", action="append", help="target computer (repeatable)")
    v.add_argument(
        "--group", action="append", help="computers of an organizational group (repeatable)"
    )
    v.add_argument("--filter", action="append", help="computers a filter holds (repeatable)")
    v.add_argument("--all", action="store_true", help="every known computer")
    v.add_argument(
        "--online-only",
        action="store_true",
        help="skip targets whose agent is offline now (devices stay); the run says how many",
    )
    v.add_argument(
        "--wait", action="store_true", help="follow the run; exit 0 only if all succeeded"
    )
    v.add_argument(
        "--child",
        metavar="NAME",
        help="run it on that child NS's computers, through the child (a replicated task or job"
        " with remote_start = true); prints the child's run id",
    )
    v = verb("runs", v_runs, "list runs, or `runs show ID`")
    v.add_argument(
        "action",
        nargs="?",
        choices=_ShowOrRunId(),
        help="show: one run (none: list runs); with --child, ID alone shows the child's run",
    )
    v.add_argument("run_id", nargs="?", type=int, metavar="ID", help="with show: the run's id")
    v.add_argument("--limit", type=int, default=50, help="list the newest N runs (default 50)")
    v.add_argument(
        "--computer",
        metavar="NAME",
        help="show: that computer's full output (each step's, for jobs), return code, times, reason",
    )
    v.add_argument("--failed", action="store_true", help="show: only what did not succeed")
    v.add_argument(
        "--child",
        metavar="NAME",
        help="a child NS's runs of this NS's items (from its last summary); with ID, that run's"
        " results per computer, asked of the child now",
    )
    v.add_argument(
        "--csv",
        action="store_true",
        help="show: one CSV row per computer (per step and computer for jobs), full output"
        " quoted; not with --json (docs/json.md)",
    )
    v = verb("watch", v_watch, "follow a run live")
    v.add_argument("run_id", type=int, metavar="ID", help="the run's id")
    v.add_argument(
        "--output",
        action="store_true",
        help="print what the scripts print while they run, each line after its computer"
        " (`pc-1 | line`); with --json one JSON object per line (ndjson)",
    )
