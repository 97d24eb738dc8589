"""The ``taskfleet`` roles: ``server`` (the Notification Server), ``taskserver``, ``agent`` and
``demo`` (``simulate`` lives in :mod:`admin.simulate`): their start, their run until a signal
(or a refusal for good by the NS), their data folder, the check of the NS URL they connect to,
and their sub-commands on the parser (:func:`add_role_parsers`, called by
:func:`admin.cli.build_parser`). A role that cannot start ends with exit 4, one refused for good
with exit 5 (the exit-code table is in :mod:`admin.cli`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from admin.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CannotStart,
    _trust,
    _unusable,
)
from runtime.gate import HANDSHAKES_AT_ONCE

HANDSHAKES_HELP = (
    "handshakes (TLS, key proof, registration) worked on at once; more connections wait their"
    " turn before TLS, so a burst of agents drains instead of timing out"
)
DEMO_MAX_AGENTS = 500


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


def _listener(args: argparse.Namespace, default_port: int) -> tuple[str, int] | None:
    """A listening role's own checks before it starts, in order: TLS files given as a pair,
    then (with the heap tuned and the data folder made private) ``--listen`` read as HOST:PORT.
    None after saying on stderr what to fix (a usage error)."""
    from runtime import heap
    from runtime.link import split_hostport

    if bool(args.tls_cert) != bool(args.tls_key):
        print("taskfleet: give both --tls-cert and --tls-key, or neither", file=sys.stderr)
        return None
    heap.tune_gc()
    private_data_folder(args.data)
    try:
        return split_hostport(args.listen, default_port)
    except ValueError:
        print(
            f"taskfleet: --listen {args.listen}: give HOST:PORT (port 0: any free port)",
            file=sys.stderr,
        )
        return None


def cmd_server(args: argparse.Namespace) -> int:
    from server.core import NotificationServer

    address = _listener(args, 8470)
    if address is None:
        return EXIT_USAGE
    host, port = address
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
    from taskserver.service import TaskServer

    if (problem := _check_server_url(args)) is not None:
        print(f"taskfleet: {problem}", file=sys.stderr)
        return EXIT_USAGE
    address = _listener(args, 8471)
    if address is None:
        return EXIT_USAGE
    host, port = address
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


def add_role_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    token: argparse.ArgumentParser,
    tls: argparse.ArgumentParser,
    trust: argparse.ArgumentParser,
    enrol: argparse.ArgumentParser,
) -> None:
    """Register the roles (server, taskserver, agent, simulate, demo) on the CLI, with the
    option groups ``build_parser`` made: ``token`` (--compression), ``tls``, ``trust``, ``enrol``."""
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
