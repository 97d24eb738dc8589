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
from admin.docverbs import definition_verb
from admin.output import ago, iso, table
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
from admin.trustverbs import add_trust_verbs, duration_s
from protocol.errors import RemoteError
from runtime import logs

DEFAULT_SERVER = "wss://127.0.0.1:8470"
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
}


# -- admin verbs ------------------------------------------------------------------------


async def _admin(args: argparse.Namespace) -> int:
    if not args.token:
        print(
            "taskfleet: an admin token is required: pass --token or set TASKFLEET_TOKEN",
            file=sys.stderr,
        )
        return EXIT_USAGE
    async with AdminClient(args.server, args.token, _trust(args)) as client:
        return int(await args.verb(client, args))


async def v_computers(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "add":
        if not args.name:
            print("taskfleet: computers add needs a NAME", file=sys.stderr)
            return EXIT_USAGE
        row = await c.call(
            "computers.add", name=args.name, address=args.address or "", mac=args.mac or ""
        )
        if args.json:
            _print_json(row)
        else:
            print(
                f"added device {row['name']} (id {row['id']}, task server {row['taskserver'] or 'built-in'})"
            )
        return EXIT_OK
    if args.action == "delete":
        names = [n for n in [args.name, *args.names] if n]
        if not names:
            print("taskfleet: computers delete needs a NAME (one or more)", file=sys.stderr)
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
        print("taskfleet: computers takes a NAME only with add or delete", file=sys.stderr)
        return EXIT_USAGE
    rows = await c.call("computers.list", offline_for_s=args.offline_for or 0)
    if args.json:
        _print_json(
            [
                {
                    "name": r["name"],
                    "id": r["id"],
                    "has_agent": r["has_agent"],
                    "online": r["online"],
                    "taskserver": r["taskserver"],
                    "last_seen": iso(r["last_seen"]),
                    "os": r["os"],
                    "agent_version": r["agent_version"],
                    "addresses": r["addresses"],
                }
                for r in rows
            ]
        )
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
        _print_json(rows)
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
        _print_json(saved)
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
        _print_json(saved)
    else:
        verb = "replaced" if saved["replaced"] else "added"
        print(f"{verb} {saved['type']} {saved['name']} ({len(saved['steps'])} top-level steps)")
    return EXIT_OK


async def v_jobs(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("jobs.list")
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            r["steps"] = len(r["steps"])
        print(
            table(
                rows,
                [
                    ("name", "name"),
                    ("type", "type"),
                    ("steps", "steps"),
                    ("description", "description"),
                ],
            )
        )
    return EXIT_OK


async def v_tasks(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("tasks.list")
    if args.json:
        _print_json(rows)
    else:
        print(
            table(
                rows,
                [
                    ("name", "name"),
                    ("type", "type"),
                    ("kind", "kind"),
                    ("timeout_s", "timeout s"),
                    ("description", "description"),
                ],
            )
        )
    return EXIT_OK


async def v_types(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("types.list")
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            r["params"] = ", ".join(r["params"])
        print(table(rows, [("id", "type"), ("kind", "kind"), ("params", "parameters")]))
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


class _VisibleSecret(argparse.Action):
    """A token given on the command line: kept, with a one-line warning that every user of the
    machine can read it (``ps``, ``/proc/PID/cmdline``), naming the file option to use instead."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        flag = self.option_strings[0]
        print(
            f"taskfleet: warning: {flag} is visible to every user of this machine (ps);"
            f" use {flag}-file FILE or TASKFLEET_{self.dest.upper()} instead",
            file=sys.stderr,
        )


_SECRET_FILES = (
    ("token_file", "token", "--token-file"),
    ("enrol_token_file", "enrol_token", "--enrol-token-file"),
)


def _read_secret_files(args: argparse.Namespace) -> str | None:
    """Read ``--token-file`` / ``--enrol-token-file`` into the token they stand for (a file
    given wins over the environment variable); a problem, as a message, or None."""
    for file_dest, dest, flag in _SECRET_FILES:
        path = getattr(args, file_dest, None)
        if not path:
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            return f"cannot read {flag} {path}: {getattr(exc, 'strerror', None) or exc}"
        if not value or any(c.isspace() for c in value):
            return (
                f"{flag} {path} must hold one token (from `taskfleet tokens create`), nothing else"
            )
        setattr(args, dest, value)
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="taskfleet", description="taskfleet: run tasks and jobs across fleets."
    )
    p.add_argument("--log-level", default=os.environ.get("TASKFLEET_LOG_LEVEL", "info"))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    env = os.environ.get
    trust = argparse.ArgumentParser(add_help=False)
    trust.add_argument(
        "--server-fingerprint",
        default=env("TASKFLEET_SERVER_FINGERPRINT"),
        help="pin the server's TLS certificate (printed at its start)",
    )
    trust.add_argument(
        "--ca", default=env("TASKFLEET_CA"), help="trust this CA file instead of a pin"
    )
    trust.add_argument(
        "--insecure",
        action="store_true",
        default=env("TASKFLEET_INSECURE") == "1",
        help="allow plain ws:// (tests only; logged at every start)",
    )
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
        action=_VisibleSecret,
        help="enrolment token from `taskfleet tokens create` (else the key waits for an admin);"
        " visible in `ps`: prefer --enrol-token-file or TASKFLEET_ENROL_TOKEN",
    )
    enrol_given.add_argument(
        "--enrol-token-file", metavar="FILE", help="read the enrolment token from FILE"
    )

    add_role_parsers(sub, token, tls, trust, enrol)

    admin = argparse.ArgumentParser(add_help=False, parents=[trust])
    admin.add_argument("--server", default=os.environ.get("TASKFLEET_SERVER", DEFAULT_SERVER))
    token_given = admin.add_mutually_exclusive_group()
    token_given.add_argument(
        "--token",
        default=os.environ.get("TASKFLEET_TOKEN"),
        action=_VisibleSecret,
        help="admin token; visible in `ps`: prefer --token-file or TASKFLEET_TOKEN",
    )
    token_given.add_argument("--token-file", metavar="FILE", help="read the admin token from FILE")
    admin.add_argument("--json", action="store_true", help="machine-readable output")

    def verb(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        v = sub.add_parser(name, parents=[admin], help=help)
        v.set_defaults(func=lambda args: asyncio.run(_admin(args)), verb=fn)
        return v

    v = verb("computers", v_computers, "list computers, or `computers add NAME` a device")
    v.add_argument("action", nargs="?", choices=["add", "delete"])
    v.add_argument("name", nargs="?")
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
        v.add_argument("action", choices=["add", "show", "history", "delete"])
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
    verb("types", v_types, "list task types")
    add_run_verbs(verb)
    add_trust_verbs(verb)
    v = verb("stop", v_stop, "stop a run: pending and running instances end `stopped`")
    v.add_argument("run_id", type=int)
    v = verb(
        "backup",
        v_backup,
        "`backup FILE`: copy the NS database, while it runs, to FILE on the NS's machine",
    )
    v.add_argument("file", help="absolute path on the NS's machine; a new file (mode 0600)")
    v.add_argument("--force", action="store_true", help="replace FILE if it is an earlier backup")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    if (problem := _read_secret_files(args)) is not None:
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
        print(f"taskfleet: {exc.message}", file=sys.stderr)
        code = EXIT_USAGE if exc.code in USAGE_CODES else EXIT_UNREACHABLE
    except (OSError, WebSocketException, TimeoutError) as exc:
        print(f"taskfleet: cannot reach the server: {exc or type(exc).__name__}", file=sys.stderr)
        code = EXIT_UNREACHABLE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
