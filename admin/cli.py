"""The ``taskfleet`` command: every role and every admin verb.

Exit codes: 0 success; 1 a run had a target that did not succeed; 2 a usage error (bad
arguments, unknown task, computer or run, invalid document); 3 the server could not be
reached or refused the connection; 4 a role could not start on its data folder (a database
damaged or unusable: the message names the file and what to do).
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
from admin.output import ago, iso, short_time, table
from admin.trustverbs import add_trust_verbs
from admin.views import follow, print_run, run_json
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
    await stop.wait()
    await component.stop()


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


def cmd_server(args: argparse.Namespace) -> int:
    from runtime import heap
    from runtime.db import DatabaseUnusable
    from runtime.link import split_hostport
    from server.core import NotificationServer

    heap.tune_gc()
    private_data_folder(args.data)

    host, port = split_hostport(args.listen, 8470)
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

    try:
        asyncio.run(main())
    except DatabaseUnusable as exc:
        return _unusable(exc)
    return EXIT_OK


def cmd_taskserver(args: argparse.Namespace) -> int:
    from runtime import heap
    from runtime.db import DatabaseUnusable
    from runtime.link import split_hostport
    from taskserver.service import TaskServer

    heap.tune_gc()
    private_data_folder(args.data)

    host, port = split_hostport(args.listen, 8471)
    ts = TaskServer(
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
    try:
        asyncio.run(
            _serve_forever(
                ts, "taskfleet taskserver ready url={c.url} fingerprint={c.tls_fingerprint}"
            )
        )
    except DatabaseUnusable as exc:
        return _unusable(exc)
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    from agent.agent import Agent
    from agent.commands import CommandTable
    from runtime.db import DatabaseUnusable

    try:
        commands = CommandTable.load(args.commands)
    except (OSError, ValueError) as exc:
        print(f"taskfleet: cannot use the command table {args.commands}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    private_data_folder(args.data)
    agent = Agent(
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

    try:
        asyncio.run(main())
    except DatabaseUnusable as exc:
        return _unusable(exc)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from admin.demo import demo

    return asyncio.run(demo(args.agents))


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
    rows = await c.call("computers.list")
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
    }
    plan = await c.call("run.start", check=True, **target)
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
                f"started run {run_id} on {started['targets']} target(s); `taskfleet watch {run_id}` follows it"
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
        if args.json:
            _print_json(run_json(run))
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
    """Create a role's data folder 0700; warn (never change) one that exists with wider access."""
    from runtime.db import make_private_dir

    if (warning := make_private_dir(path)) is not None:
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
        default=120.0,
        help="how long agents wait for their TS to come back before they move",
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
    d.add_argument("--agents", type=int, default=20)
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
    v.add_argument("action", nargs="?", choices=["add"])
    v.add_argument("name", nargs="?")
    v.add_argument(
        "--address", default="", help="the device's IPv4 or IPv6 address, or its host name"
    )
    v.add_argument(
        "--mac",
        default="",
        help="the device's MAC address, six hex pairs (aa:bb:cc:dd:ee:ff or aa-bb-...), for wake-on-lan",
    )
    verb("taskservers", v_taskservers, "list task servers")
    v = verb("task", v_task, "`task add FILE`: save a task document (TOML or JSON)")
    v.add_argument("action", choices=["add"])
    v.add_argument("file")
    verb("tasks", v_tasks, "list saved tasks")
    v = verb("job", v_job, "`job add FILE`: save a job document (TOML or JSON)")
    v.add_argument("action", choices=["add"])
    v.add_argument("file")
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
        "--wait", action="store_true", help="follow the run; exit 0 only if all succeeded"
    )
    v = verb("runs", v_runs, "list runs, or `runs show ID`")
    v.add_argument("action", nargs="?", choices=["show"])
    v.add_argument("run_id", nargs="?", type=int)
    v.add_argument("--limit", type=int, default=50)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    if (problem := _read_secret_files(args)) is not None:
        print(f"taskfleet: {problem}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        code = int(args.func(args))
    except RemoteError as exc:
        print(f"taskfleet: {exc.message}", file=sys.stderr)
        code = EXIT_USAGE if exc.code in USAGE_CODES else EXIT_UNREACHABLE
    except (OSError, WebSocketException, TimeoutError) as exc:
        print(f"taskfleet: cannot reach the server: {exc or type(exc).__name__}", file=sys.stderr)
        code = EXIT_UNREACHABLE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
