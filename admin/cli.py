"""The ``taskfleet`` command: every role and every admin verb.

Exit codes (also in the README):

===  =====================================================================================
0    success
1    a run had a target that did not succeed
2    a usage error: bad arguments, a server URL not of the form wss://HOST:PORT (or ws:// to a
     TLS server), no --server-fingerprint/--ca for a wss:// server, unknown task, computer or
     run, invalid document, a verb your role may not use
3    the server could not be reached or refused the connection
4    a role (server, taskserver, agent) could not start: its listen address is taken, its data
     folder cannot be used, a database is damaged; the message names what and what to do
5    an agent or task server was refused by the NS for good (an enrolment token used up,
     expired or revoked, a rejected key, its name enrolled with another key, a wrong pin, an
     incompatible version): retrying cannot help, the message says what a person must do
141  stdout was closed early (``taskfleet runs | head -1``): nothing more is written, as with
     any command killed by SIGPIPE (128 + 13)
130  Ctrl-C on ``run --wait`` or ``watch``: the run goes on (the message says how to follow or
     stop it)
70   an internal error (a bug in taskfleet): one line ``taskfleet: internal error: ...; please
     report it`` on stderr (with ``--json``, code ``internal``), no traceback
===  =====================================================================================

Roles exit within a second on 4 and 5 (a supervisor sees a dead process, never a hung one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from websockets.exceptions import WebSocketException

from admin import schema
from admin.client import AdminClient
from admin.common import (
    EXIT_CLOSED_STDOUT,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CannotStart,
    _print_json,
    _trust,
    _unusable,
)
from admin.common import EXIT_DATA as EXIT_DATA
from admin.common import EXIT_FAILED as EXIT_FAILED
from admin.common import EXIT_REFUSED as EXIT_REFUSED
from admin.common import EXIT_START as EXIT_START
from admin.completion import add_parsers as add_completion_parsers
from admin.docverbs import definition_verb
from admin.globalflags import (
    DEFAULT_SERVER,
    ROLES,
    TopParser,
    VisibleSecret,
    add_admin_flags,
    add_log_flags,
    add_trust_flags,
    read_secret_files,
    version,
)
from admin.globalflags import LOG_LEVELS as LOG_LEVELS
from admin.hierverbs import add_children_verb
from admin.hierview import hierarchy_columns
from admin.migrateverb import add_migrate_parser
from admin.output import ago, table
from admin.profile import ProfileError
from admin.profile import add_parser as add_profiles_parser
from admin.profile import apply as apply_profile
from admin.roles import DEMO_MAX_AGENTS as DEMO_MAX_AGENTS
from admin.roles import HANDSHAKES_HELP as HANDSHAKES_HELP
from admin.roles import add_role_parsers
from admin.roles import cmd_agent as cmd_agent
from admin.roles import cmd_demo as cmd_demo
from admin.roles import cmd_server as cmd_server
from admin.roles import cmd_taskserver as cmd_taskserver
from admin.roles import private_data_folder as private_data_folder
from admin.runverbs import add_run_verbs
from admin.runverbs import v_run as v_run
from admin.runverbs import v_runs as v_runs
from admin.runverbs import v_watch as v_watch
from admin.schedverbs import add_schedule_verbs
from admin.trustverbs import add_trust_verbs, duration_s
from protocol.errors import RemoteError
from runtime import logs

USAGE_CODES = {
    "bad_request",
    "unknown_task",
    "unknown_computer",
    "unknown_run",
    "no_targets",
    "invalid_document",
    "exists",
    "unknown_op",
    "unknown_key",
    "unknown_admin",
    "forbidden",
    "unknown_group",
    "unknown_filter",
    "disk_full",
    "bad_url",
    "speaks_tls",
    "unknown_job",
    "in_use",
    "computer_online",
    "unknown_policy",
    "unknown_child",
    "not_remote_startable",
    "read_only",
}


# -- admin verbs ------------------------------------------------------------------------


async def _admin(args: argparse.Namespace) -> int:
    try:
        apply_profile(args, DEFAULT_SERVER)
    except ProfileError as exc:
        schema.print_error(args.json, "usage", str(exc))
        return EXIT_USAGE
    if not args.token:
        elsewhere = getattr(args, "profile_elsewhere", None)
        schema.print_error(
            args.json,
            "usage",
            (
                f"no admin token for {args.server}: the profile {elsewhere!r} names another"
                " server, and its token goes only there; pass --token-file FILE, set"
                " TASKFLEET_TOKEN, or use --profile with a profile for this server (docs/cli.md)"
            )
            if elsewhere
            else "an admin token is required: pass --token-file FILE, set TASKFLEET_TOKEN,"
            " or use a profile with a token_file (docs/cli.md)",
        )
        return EXIT_USAGE
    async with AdminClient(args.server, args.token, _trust(args)) as client:
        return int(await args.verb(client, args))


async def v_computers(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "add":
        if not args.name:
            schema.print_error(args.json, "usage", "computers add needs a NAME")
            return EXIT_USAGE
        row = await c.call(
            "computers.add", name=args.name, address=args.address or "", mac=args.mac or ""
        )
        if args.json:
            _print_json(schema.computer(row))
        else:
            print(
                f"added device {row['name']} (id {row['id']}, task server {row['taskserver'] or 'built-in'})"
            )
        return EXIT_OK
    if args.action == "delete":
        names = [n for n in [args.name, *args.names] if n]
        if not names:
            schema.print_error(args.json, "usage", "computers delete needs a NAME (one or more)")
            return EXIT_USAGE
        result = await c.call("computers.delete", names=names, keep_key=args.keep_key)
        if args.json:
            _print_json(result)
        else:
            keys = result["keys_deleted"]
            print(
                f"deleted {', '.join(result['deleted'])}"
                + (
                    f"; {result['stopped']} unfinished instance(s) stopped"
                    if result["stopped"]
                    else ""
                )
                + (f"; key(s) deleted: {', '.join(keys)}" if keys else "")
            )
        return EXIT_OK
    if args.name or args.names:
        schema.print_error(args.json, "usage", "computers takes a NAME only with add or delete")
        return EXIT_USAGE
    rows = await c.call("computers.list", offline_for_s=args.offline_for or 0)
    if args.json:
        _print_json([schema.computer(r) for r in rows])
        return EXIT_OK
    now = time.time()
    for r in rows:
        r["agent"] = "yes" if r["has_agent"] else "no (device)"
        r["state"] = "online" if r["online"] else "offline"
        r["seen"] = ago(r["last_seen"], now)
    print(
        table(
            rows,
            [
                ("name", "name"),
                ("agent", "agent"),
                ("state", "state"),
                ("taskserver", "task server"),
                ("seen", "last seen"),
                ("os", "os"),
            ],
        )
    )
    return EXIT_OK


async def v_taskservers(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("taskservers.list")
    if args.json:
        _print_json([schema.taskserver(r) for r in rows])
    else:
        print(
            table(
                rows,
                [
                    ("name", "name"),
                    ("url", "url"),
                    ("online", "online"),
                    ("computers", "computers"),
                ],
            )
        )
    return EXIT_OK


async def v_task(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action != "add":
        return await definition_verb(c, args, "task")
    saved = await c.add_document("task.add", args.file)
    if args.json:
        _print_json(schema.record(saved))
    else:
        verb = "replaced" if saved["replaced"] else "added"
        print(
            f"{verb} task {saved['name']} ({saved['type']}, {saved['kind']} task, timeout {saved['timeout_s']} s)"
        )
    return EXIT_OK


async def v_job(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action != "add":
        return await definition_verb(c, args, "job")
    saved = await c.add_document("job.add", args.file)
    if args.json:
        _print_json(schema.record(saved))
    else:
        verb = "replaced" if saved["replaced"] else "added"
        print(f"{verb} {saved['type']} {saved['name']} ({len(saved['steps'])} top-level steps)")
    return EXIT_OK


async def v_jobs(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("jobs.list")
    if args.json:
        _print_json(schema.records(rows))
    else:
        for r in rows:
            r["steps"] = len(r["steps"])
        print(
            table(
                rows,
                hierarchy_columns(
                    rows,
                    [
                        ("name", "name"),
                        ("type", "type"),
                        ("steps", "steps"),
                        ("description", "description"),
                    ],
                ),
            )
        )
    return EXIT_OK


async def v_tasks(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("tasks.list")
    if args.json:
        _print_json(schema.records(rows))
    else:
        print(
            table(
                rows,
                hierarchy_columns(
                    rows,
                    [
                        ("name", "name"),
                        ("type", "type"),
                        ("kind", "kind"),
                        ("timeout_s", "timeout s"),
                        ("description", "description"),
                    ],
                ),
            )
        )
    return EXIT_OK


async def v_types(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("types.list")
    if args.name is not None:
        return _type_show(rows, args)
    if args.json:
        _print_json(schema.records(rows, id_name="type"))
    else:
        for r in rows:
            r["params"] = ", ".join(r["params"])
        print(table(rows, [("id", "type"), ("kind", "kind"), ("params", "parameters")]))
    return EXIT_OK


def _type_show(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """``taskfleet types NAME``: one task type, each parameter with its type, whether it is
    required or its default, its allowed values and what it is for."""
    found = [r for r in rows if r["id"] == args.name]
    if not found:
        known = ", ".join(sorted(r["id"] for r in rows))
        schema.print_error(args.json, "usage", f"no task type {args.name!r}; known: {known}")
        return EXIT_USAGE
    ttype = found[0]
    if args.json:
        _print_json(schema.record(ttype, id_name="type"))
        return EXIT_OK
    print(f"{ttype['id']} ({ttype['kind']} task): {ttype['doc']}")
    params = []
    for p in ttype["parameters"]:
        limits = [f"one of {', '.join(map(str, p['choices']))}"] if p["choices"] else []
        if p["minimum"] is not None or p["maximum"] is not None:
            limits.append(f"{p['minimum']}..{p['maximum']}".replace("None", ""))
        if p["pattern"]:
            limits.append(f"matches {p['pattern']}")
        params.append(
            {
                **p,
                "needed": "required" if p["required"] else f"default {p['default']!r}",
                "about": "; ".join([p["description"], *limits] if p["description"] else limits),
            }
        )
    print(
        table(
            params,
            [("name", "parameter"), ("type", "type"), ("needed", "required"), ("about", "about")],
        )
    )
    return EXIT_OK


async def v_stop(c: AdminClient, args: argparse.Namespace) -> int:
    result = await c.call("run.stop", run_id=args.run_id)
    if args.json:
        _print_json(result)
    elif result.get("note"):
        print(f"run {args.run_id}: {result['note']}")
    else:
        print(f"run {args.run_id} stopped ({result['stopped']} instance(s) stopped)")
    return EXIT_OK


async def v_backup(c: AdminClient, args: argparse.Namespace) -> int:
    result = await c.call("backup", path=args.file, force=args.force)
    if args.json:
        _print_json(result)
    else:
        print(
            f"backup written on the server's machine: {result['path']} "
            f"({result['bytes']} bytes, {result['seconds']} s); to restore: docs/operations.md"
        )
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = TopParser(
        prog="taskfleet",
        description="taskfleet: run tasks and jobs across fleets. The global flags below may"
        " also come after the verb (docs/cli.md).",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=version())
    add_log_flags(p, top=True)
    add_admin_flags(p, top=True)
    add_trust_flags(p, top=True)
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser
    )

    env = os.environ.get
    trust = argparse.ArgumentParser(add_help=False)
    add_trust_flags(trust)
    token = argparse.ArgumentParser(add_help=False)
    token.add_argument(
        "--compression", action="store_true", help="per-message deflate (for slow links)"
    )
    tls = argparse.ArgumentParser(add_help=False)
    tls.add_argument("--tls-cert", help="PEM certificate (default: one made in the data folder)")
    tls.add_argument("--tls-key", help="PEM key of --tls-cert")
    enrol = argparse.ArgumentParser(add_help=False)
    enrol_given = enrol.add_mutually_exclusive_group()
    enrol_given.add_argument(
        "--enrol-token",
        default=env("TASKFLEET_ENROL_TOKEN"),
        action=VisibleSecret,
        help="enrolment token from `taskfleet tokens create` (else the key waits for an admin);"
        " visible in `ps`: prefer --enrol-token-file or TASKFLEET_ENROL_TOKEN",
    )
    enrol_given.add_argument(
        "--enrol-token-file", metavar="FILE", help="read the enrolment token from FILE"
    )

    add_role_parsers(sub, token, tls, trust, enrol)

    admin = argparse.ArgumentParser(add_help=False, parents=[trust])
    add_admin_flags(admin)

    def verb(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        v = sub.add_parser(name, parents=[admin], help=help)
        v.set_defaults(func=lambda args: asyncio.run(_admin(args)), verb=fn)
        return v

    v = verb("computers", v_computers, "list computers, or `computers add NAME` a device")
    v.add_argument(
        "action",
        nargs="?",
        choices=["add", "delete"],
        help="add a device, or delete computers (none: list computers)",
    )
    v.add_argument("name", nargs="?", help="with add, delete: the computer")
    v.add_argument("names", nargs="*", metavar="NAME", help="with delete: more computers")
    v.add_argument(
        "--keep-key",
        action="store_true",
        help="with delete: keep the agent's key, so the computer comes back when it registers"
        " (refused for an online computer)",
    )
    v.add_argument(
        "--offline-for",
        type=duration_s,
        metavar="DURATION",
        help="list only computers whose agent has been offline that long: 30m, 12h, 7d",
    )
    v.add_argument(
        "--address", default="", help="the device's IPv4 or IPv6 address, or its host name"
    )
    v.add_argument(
        "--mac",
        default="",
        help="the device's MAC address, six hex pairs (aa:bb:cc:dd:ee:ff or aa-bb-...), for wake-on-lan",
    )
    verb("taskservers", v_taskservers, "list task servers")
    for kind, fn in (("task", v_task), ("job", v_job)):
        v = verb(
            kind,
            fn,
            f"`{kind} add FILE`: save a {kind} document (TOML or JSON); `{kind} show NAME`,"
            f" `{kind} history NAME`, `{kind} delete NAME`",
        )
        v.add_argument(
            "action",
            choices=["add", "show", "history", "delete"],
            help=f"save a {kind}, show one, list its versions, or delete it",
        )
        v.add_argument("file", metavar="FILE|NAME", help=f"add: a document file; else the {kind}")
        v.add_argument(
            "--version",
            dest="doc_version",
            type=int,
            metavar="N",
            help=f"show: version N (`{kind} history NAME` lists them); default: the current one",
        )
        v.add_argument(
            "--toml", action="store_true", help="show: the document as TOML (the default)"
        )
        if kind == "task":
            verb("tasks", v_tasks, "list saved tasks")
    verb("jobs", v_jobs, "list saved jobs")
    v = verb("types", v_types, "list task types; `types NAME`: one type's parameters in full")
    v.add_argument("name", nargs="?", metavar="NAME", help="a task type: show its parameters")
    add_run_verbs(verb)
    from admin.statsverbs import add_stats_verbs

    add_stats_verbs(verb)
    add_schedule_verbs(verb)
    add_trust_verbs(verb)
    add_children_verb(verb)
    v = verb("stop", v_stop, "stop a run: pending and running instances end `stopped`")
    v.add_argument("run_id", type=int, metavar="ID", help="the run's id")
    v = verb(
        "backup",
        v_backup,
        "`backup FILE`: copy the NS database, while it runs, to FILE on the NS's machine",
    )
    v.add_argument("file", help="absolute path on the NS's machine; a new file (mode 0600)")
    v.add_argument("--force", action="store_true", help="replace FILE if it is an earlier backup")
    shown = argparse.ArgumentParser(add_help=False)
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    shown.add_argument(
        "--profile", metavar="NAME", help="mark this profile as the one in use (as a verb would)"
    )
    add_profiles_parser(sub, [shown])
    add_migrate_parser(sub)
    add_completion_parsers(sub, [admin], p, DEFAULT_SERVER)
    for command in sub.choices.values():  # last: every verb and role, whoever registered it
        add_log_flags(command)
    return p


class StdoutClosed(Exception):
    """Whoever read our output is gone (``taskfleet runs | head -1``): not a server failure."""


class _GuardedStdout:
    """``sys.stdout``, with a write to a closed pipe raised as :class:`StdoutClosed` (so it is
    never taken for a lost connection to the server, which is also an OSError)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            raise StdoutClosed from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise StdoutClosed from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _quiet_stdout() -> int:
    """Stdout was closed early: point it at /dev/null (so the flush at exit fails no more, as
    Python's documentation on SIGPIPE recommends) and end as a command killed by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ is not None else 1)
    os.close(devnull)
    return EXIT_CLOSED_STDOUT


def _configure_logs(args: argparse.Namespace) -> None:
    """Set up logging from the log flags; a log file that cannot be opened ends the command
    (a role cannot start: exit 4; an admin verb was given a bad argument: exit 2)."""
    try:
        logs.configure(args.log_level, fmt=args.log_format, file=args.log_file)
    except logs.LogFileError as exc:
        print(f"taskfleet: {exc}", file=sys.stderr)
        sys.exit(EXIT_START if args.command in ROLES else EXIT_USAGE)


EXIT_INTERNAL = 70
"""An unexpected error (a bug): EX_SOFTWARE of sysexits.h."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logs(args)
    if (problem := read_secret_files(args)) is not None:
        print(f"taskfleet: {problem}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if sys.stdout is not None and not isinstance(sys.stdout, _GuardedStdout):
        sys.stdout = _GuardedStdout(sys.stdout)
    try:
        code = int(args.func(args))
        if sys.stdout is not None:
            sys.stdout.flush()  # here, not at exit: a closed pipe is then seen as what it is
    except StdoutClosed:
        code = _quiet_stdout()
    except CannotStart as exc:
        code = _unusable(exc)
    except RemoteError as exc:
        schema.print_error(getattr(args, "json", False), exc.code, exc.message)
        code = EXIT_USAGE if exc.code in USAGE_CODES else EXIT_UNREACHABLE
    except (OSError, WebSocketException, TimeoutError) as exc:
        schema.print_error(
            getattr(args, "json", False),
            "unreachable",
            f"cannot reach the server: {exc or type(exc).__name__}",
        )
        code = EXIT_UNREACHABLE
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # a bug of ours: one line and an exit code, not a traceback
        schema.print_error(
            getattr(args, "json", False),
            "internal",
            f"internal error: {type(exc).__name__}: {exc}; please report it",
        )
        code = EXIT_INTERNAL
    sys.exit(code)
