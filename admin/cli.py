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
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from websockets.exceptions import WebSocketException

from admin.client import AdminClient
from admin.docverbs import definition_verb
from admin.output import ago, iso, short_time, table
from admin.trustverbs import add_trust_verbs, duration_s
from admin.views import follow, print_computer, print_run, run_json, select
from protocol.errors import RemoteError
from runtime import logs
from runtime.gate import HANDSHAKES_AT_ONCE
from runtime.tls import ClientTrust

DEFAULT_SERVER = "wss://127.0.0.1:8470"
HANDSHAKES_HELP = (
    "handshakes (TLS, key proof, registration) worked on at once; more connections wait their"
    " turn before TLS, so a burst of agents drains instead of timing out"
)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_DATA = 4
"""A role could not start: listen address, data folder, database (the name predates the others)."""
EXIT_START = EXIT_DATA
EXIT_REFUSED = 5
EXIT_CLOSED_STDOUT = 128 + signal.SIGPIPE
DEMO_MAX_AGENTS = 500
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


# -- roles ------------------------------------------------------------------------------


def _trust(args: argparse.Namespace) -> ClientTrust:
    """How this client trusts the server: --ca, --server-fingerprint, or --insecure."""
    return ClientTrust(ca_file=args.ca, fingerprint=args.server_fingerprint, insecure=args.insecure)


async def _serve_forever(component: Any, ready: str) -> None:
    try:
        await component.start()
    except BaseException:
        # What it opened (a database's thread) would keep the process alive: close it.
        with contextlib.suppress(Exception):
            await component.stop()
        raise
    print(ready.format(c=component), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ended = getattr(component, "ended", None)  # a TS refused by the NS for good
    waits = [asyncio.create_task(stop.wait())]
    if ended is not None:
        waits.append(asyncio.create_task(ended.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    await component.stop()
    refusal = getattr(component, "refusal", None)
    if refusal is not None:
        from agent.agent import RefusedForGood

        raise RefusedForGood(component.name, component.server_url, refusal, role="task server")


def _smtp(args: argparse.Namespace) -> dict[str, Any]:
    """The NS's SMTP settings for send-email, from --smtp and friends."""
    if not args.smtp:
        return {}
    from runtime.link import split_hostport

    host, port = split_hostport(args.smtp, 25)
    return {
        "host": host,
        "port": port,
        "security": args.smtp_security,
        "user": args.smtp_user or "",
        "password": os.environ.get("TASKFLEET_SMTP_PASSWORD", ""),
        "sender": args.smtp_from or "",
    }


def _unusable(exc: Exception) -> int:
    print(f"taskfleet: {exc}", file=sys.stderr, flush=True)
    return EXIT_DATA


class CannotStart(Exception):
    """A role cannot start (exit 4); the message says what is wrong and what to do."""


def _run_role(role: str, main: Any) -> int:
    """Run a role's ``main()`` coroutine; a failure to start, or a refusal for good by the NS,
    ends the process with its own code and one line saying what to do (never a hung process)."""
    from agent.agent import RefusedForGood
    from runtime.db import DatabaseUnusable
    from runtime.link import ListenError

    try:
        asyncio.run(main())
    except (DatabaseUnusable, ListenError, CannotStart) as exc:
        return _unusable(exc)
    except RefusedForGood as exc:
        print(f"taskfleet: {exc}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    except OSError as exc:  # nothing a role's start does is reaching a server: a local problem
        return _unusable(CannotStart(f"the {role} cannot start: {exc}"))
    return EXIT_OK


def _made_in(data: str, role: Any, **kwargs: Any) -> Any:
    """``role(**kwargs)``: a role whose key cannot be made or read in ``data`` is CannotStart."""
    try:
        return role(**kwargs)
    except OSError as exc:
        raise CannotStart(
            f"cannot use the data folder {data}: {exc}; give --data a folder this user can write"
        ) from None


def _check_server_url(args: argparse.Namespace) -> str | None:
    """For a role that connects to the NS: a --server URL it can use and a way to trust it, or
    the problem (a usage error, found before anything is written or started)."""
    from admin.client import url_problem

    if (problem := url_problem(args.server)) is not None:
        return f"--server {problem}"
    if args.server.startswith("wss://") and not (args.ca or args.server_fingerprint):
        return (
            f"no way to trust the NS at {args.server}: pass --server-fingerprint SHA256:...,"
            " the fingerprint `taskfleet server` prints at its start (or TASKFLEET_SERVER_FINGERPRINT),"
            " or --ca FILE (its tls/ca.pem)"
        )
    if args.server.startswith("ws://") and not args.insecure:
        return f"--server {args.server} is plain ws://: use wss://{args.server[5:]} (--insecure allows ws:// for tests)"
    return None


def cmd_server(args: argparse.Namespace) -> int:
    from runtime import heap
    from runtime.link import split_hostport
    from server.core import NotificationServer

    if bool(args.tls_cert) != bool(args.tls_key):
        print("taskfleet: give both --tls-cert and --tls-key, or neither", file=sys.stderr)
        return EXIT_USAGE
    heap.tune_gc()
    private_data_folder(args.data)

    try:
        host, port = split_hostport(args.listen, 8470)
    except ValueError:
        print(
            f"taskfleet: --listen {args.listen}: give HOST:PORT (port 0: any free port)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    ns = NotificationServer(
        data_dir=args.data,
        host=host,
        port=port,
        name=args.name,
        compression=args.compression,
        flush_ms=args.flush_ms,
        insecure=args.insecure,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_connections_per_address=args.max_connections_per_address,
        max_handshakes=args.max_handshakes,
        max_pending_keys=args.max_pending_keys,
        smtp=_smtp(args),
        ts_grace_s=args.ts_grace_s,
        min_free_bytes=int(args.min_free_mb * (1 << 20)),
        admin_port=args.admin_port,
    )

    async def main() -> None:
        async def announce() -> None:
            if ns.first_admin_token:
                print(
                    f"taskfleet: first admin token (shown once, also in {args.data}/admin.token, mode 0600):\n"
                    f"  {ns.first_admin_token}",
                    flush=True,
                )
            if ns.tls_fingerprint:
                print(
                    f"taskfleet: TLS certificate fingerprint (agents pin it): {ns.tls_fingerprint}",
                    flush=True,
                )
                if ns.ca_file:
                    print(f"taskfleet: or trust the CA file {ns.ca_file} (--ca)", flush=True)

        try:
            await ns.start()
        except BaseException:
            # What it opened (a database's thread) would keep the process alive: close it.
            with contextlib.suppress(Exception):
                await ns.stop()
            raise
        await announce()
        print(
            f"taskfleet server ready url={ns.url} fingerprint={ns.tls_fingerprint or '-'}"
            + (f" admin_url={ns.admin_url}" if ns.admin_url else ""),
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await ns.stop()

    return _run_role("server", main)


def cmd_taskserver(args: argparse.Namespace) -> int:
    from runtime import heap
    from runtime.link import split_hostport
    from taskserver.service import TaskServer

    if (problem := _check_server_url(args)) is not None:
        print(f"taskfleet: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if bool(args.tls_cert) != bool(args.tls_key):
        print("taskfleet: give both --tls-cert and --tls-key, or neither", file=sys.stderr)
        return EXIT_USAGE
    heap.tune_gc()
    private_data_folder(args.data)

    try:
        host, port = split_hostport(args.listen, 8471)
    except ValueError:
        print(
            f"taskfleet: --listen {args.listen}: give HOST:PORT (port 0: any free port)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    ts = _made_in(
        args.data,
        TaskServer,
        server_url=args.server,
        data_dir=args.data,
        name=args.name,
        trust=_trust(args),
        enrol_token=args.enrol_token or "",
        host=host,
        port=port,
        advertise=args.advertise,
        compression=args.compression,
        flush_ms=args.flush_ms,
        insecure=args.insecure,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_handshakes=args.max_handshakes,
    )
    return _run_role(
        "taskserver",
        lambda: _serve_forever(
            ts, "taskfleet taskserver ready url={c.url} fingerprint={c.tls_fingerprint}"
        ),
    )


def cmd_agent(args: argparse.Namespace) -> int:
    from agent.agent import Agent
    from agent.commands import CommandTable

    if (problem := _check_server_url(args)) is not None:
        print(f"taskfleet: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        commands = CommandTable.load(args.commands)
    except (OSError, ValueError) as exc:
        print(f"taskfleet: cannot use the command table {args.commands}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    private_data_folder(args.data)
    agent = _made_in(
        args.data,
        Agent,
        server_url=args.server,
        name=args.name,
        commands=commands,
        trust=_trust(args),
        enrol_token=args.enrol_token or "",
        data_dir=args.data,
        concurrency=args.concurrency,
        compression=args.compression,
    )

    async def main() -> None:
        task = asyncio.create_task(agent.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return _run_role("agent", main)


def cmd_demo(args: argparse.Namespace) -> int:
    from admin.demo import demo
    from agent.agent import RefusedForGood

    try:
        return asyncio.run(demo(args.agents))
    except RefusedForGood as exc:
        print(f"taskfleet: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (TimeoutError, RuntimeError) as exc:  # a step of the demo did not happen in time
        print(f"taskfleet: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED


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


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


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


async def v_run(c: AdminClient, args: argparse.Namespace) -> int:
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
    final = await follow(c, run_id, quiet=args.json)
    if args.json:
        _print_json(run_json(final))
    else:
        print_run(final)
    return EXIT_OK if final["status"] == "succeeded" else EXIT_FAILED


async def v_runs(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "show":
        if args.run_id is None:
            print("taskfleet: runs show needs a run ID", file=sys.stderr)
            return EXIT_USAGE
        run = await c.call("run.show", run_id=args.run_id)
        if args.computer is not None or args.failed:
            try:
                run = select(run, args.computer, args.failed)
            except LookupError as exc:
                print(f"taskfleet: {exc}", file=sys.stderr)
                return EXIT_USAGE
        if args.json:
            _print_json(run_json(run))
        elif args.computer is not None:
            print_computer(run, args.computer)
        else:
            print_run(run)
        return EXIT_OK
    rows = await c.call("runs.list", limit=args.limit)
    if args.json:
        _print_json(rows)
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
    final = await follow(c, args.run_id, quiet=args.json)
    if args.json:
        _print_json(run_json(final))
    else:
        print_run(final)
    return EXIT_OK if final["status"] == "succeeded" else EXIT_FAILED


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


def private_data_folder(path: str) -> None:
    """Create a role's data folder 0700; warn (never change) one that exists with wider access.
    A folder that cannot be made or written is :class:`CannotStart` (exit 4)."""
    from runtime.db import make_private_dir

    try:
        warning = make_private_dir(path)
    except OSError as exc:
        raise CannotStart(
            f"cannot use the data folder {path}: {exc.strerror or exc}; give --data a folder"
            " this user can create and write"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CannotStart(
            f"cannot use the data folder {path}: this user may not write in it; give --data a"
            " folder this user can write, or fix its owner"
        )
    if warning is not None:
        print(f"taskfleet: warning: {warning}", file=sys.stderr, flush=True)


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

    s = sub.add_parser("server", parents=[token, tls], help="run the Notification Server")
    s.add_argument("--insecure", action="store_true", help="plain ws://, no TLS (tests only)")
    s.add_argument("--max-connections-per-address", type=int, default=20_000)
    s.add_argument("--max-pending-keys", type=int, default=1_000)
    s.add_argument("--max-handshakes", type=int, default=HANDSHAKES_AT_ONCE, help=HANDSHAKES_HELP)
    s.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="also listen on this port for administrators only, with its own handshake gate, so a "
        "reconnect storm of agents never keeps an admin out (0: any free port; default: none). "
        "Without it an admin is still served on the main port while one address floods it: an "
        "address keeps at most 16 handshake places once others are waiting",
    )
    s.add_argument(
        "--min-free-mb",
        type=float,
        default=16.0,
        help="refuse new runs when the data folder's disk has less free space",
    )
    s.add_argument(
        "--ts-grace-s",
        type=float,
        default=10.0,
        help="how long the agents of a TS that went away wait for it before they move to another "
        "TS or the built-in task service, their unfinished work with them (default 10 s: enough "
        "for a TS restarted by systemd; they run work again within 30 s of its death)",
    )
    s.add_argument("--smtp", help="HOST:PORT of the mail server for send-email")
    s.add_argument("--smtp-security", choices=["none", "starttls", "tls"], default="starttls")
    s.add_argument("--smtp-user", help="login (the password comes from TASKFLEET_SMTP_PASSWORD)")
    s.add_argument("--smtp-from", help="sender address")
    s.add_argument("--data", required=True, help="data folder (created on first start)")
    s.add_argument("--listen", default="127.0.0.1:8470", help="HOST:PORT (port 0: any free port)")
    s.add_argument("--name", default="ns")
    s.add_argument("--flush-ms", type=int, default=10)
    s.set_defaults(func=cmd_server)

    t = sub.add_parser("taskserver", parents=[token, tls, trust, enrol], help="run a Task Server")
    t.add_argument("--server", required=True, help="the NS URL, wss://HOST:PORT")
    t.add_argument("--data", required=True)
    t.add_argument("--listen", default="127.0.0.1:8471")
    t.add_argument("--name", default=os.uname().nodename)
    t.add_argument("--advertise", help="URL agents use to reach this TS (default: wss://LISTEN)")
    t.add_argument("--flush-ms", type=int, default=10)
    t.add_argument("--max-handshakes", type=int, default=HANDSHAKES_AT_ONCE, help=HANDSHAKES_HELP)
    t.set_defaults(func=cmd_taskserver)

    a = sub.add_parser("agent", parents=[token, trust, enrol], help="run an agent")
    a.add_argument("--server", required=True)
    a.add_argument("--data", required=True)
    a.add_argument("--name", default=os.uname().nodename)
    a.add_argument("--concurrency", type=int, default=4)
    a.add_argument(
        "--commands", help="TOML file overriding the platform command table (docs/tasks.md)"
    )
    a.set_defaults(func=cmd_agent)

    from admin.simulate import add_parser as add_simulate

    add_simulate(sub, [trust, enrol])

    d = sub.add_parser("demo", help="NS, one TS and N agents in one process: run a task on all")
    d.add_argument(
        "--agents",
        type=_agent_count,
        default=20,
        help=f"how many agents to start in this process, 1 to {DEMO_MAX_AGENTS} (default 20)",
    )
    d.set_defaults(func=cmd_demo)

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
    v = verb("run", v_run, "run a saved task or job")
    v.add_argument("name")
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
    v = verb("runs", v_runs, "list runs, or `runs show ID`")
    v.add_argument("action", nargs="?", choices=["show"])
    v.add_argument("run_id", nargs="?", type=int)
    v.add_argument("--limit", type=int, default=50)
    v.add_argument(
        "--computer",
        metavar="NAME",
        help="show: that computer's full output (each step's, for jobs), return code, times, reason",
    )
    v.add_argument("--failed", action="store_true", help="show: only what did not succeed")
    v = verb("watch", v_watch, "follow a run live")
    v.add_argument("run_id", type=int)
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


def _agent_count(text: str) -> int:
    """``demo --agents``: a whole number from 1 to DEMO_MAX_AGENTS, else a usage error."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= DEMO_MAX_AGENTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of agents: give 1 to {DEMO_MAX_AGENTS} (the demo runs them"
            " all in one process; for more, `taskfleet simulate`)"
        )
    return n


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
