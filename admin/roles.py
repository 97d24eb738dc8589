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
import urllib.parse
from collections.abc import Callable
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
from admin.config import DATABASE_ENV, print_config, role_parser
from admin.hierverbs import add_parent_flags, parent_settings
from runtime.gate import HANDSHAKES_AT_ONCE
from runtime.sdnotify import Notifier

HANDSHAKES_HELP = (
    "handshakes (TLS, key proof, registration) worked on at once; more connections wait their"
    " turn before TLS, so a burst of agents drains instead of timing out"
)
FLUSH_HELP = (
    "how long results are collected before they go on as one batch, at most, in milliseconds"
    " (default 10; a run's last results go at once)"
)
DEMO_MAX_AGENTS = 500
METRICS_TOKEN_HELP = (
    "a file holding the token that lets another machine read /metrics (Authorization: Bearer);"
    " without it only loopback may (docs/operations.md)"
)


async def _serve_forever(
    component: Any, ready: Callable[[], str], announce: Callable[[], None] | None = None
) -> None:
    """Start ``component``, say it is ready (stdout, and systemd's notify socket), serve until
    SIGTERM/SIGINT (or a refusal for good by the NS), then stop it cleanly: ``stop()`` stores
    what is in flight and closes every connection with 1001 (going away)."""
    notify = Notifier.from_environ()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before "ready": a supervisor may stop us then
        loop.add_signal_handler(sig, stop.set)
    try:
        await component.start()
    except BaseException:
        # What it opened (a database's thread) would keep the process alive: close it.
        with contextlib.suppress(Exception):
            await component.stop()
        raise
    if announce is not None:
        announce()
    line = ready()
    print(line, flush=True)
    notify.ready(line.removeprefix("taskfleet "))
    ended = getattr(component, "ended", None)  # a TS refused by the NS for good
    waits = [asyncio.create_task(stop.wait())]
    if ended is not None:
        waits.append(asyncio.create_task(ended.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    notify.stopping()
    try:
        await component.stop()
    finally:
        notify.close()
    refusal = getattr(component, "refusal", None)
    if refusal is not None:
        from agent.agent import RefusedForGood

        raise RefusedForGood(component.name, component.server_url, refusal, role="task server")


def _smtp(args: argparse.Namespace) -> dict[str, Any]:
    """The NS's SMTP settings for send-email, from --smtp and friends. The password comes from
    --smtp-password-file, else TASKFLEET_SMTP_PASSWORD: never from the command line."""
    if not args.smtp:
        return {}
    from runtime.link import split_hostport

    host, port = split_hostport(args.smtp, 25)
    return {
        "host": host,
        "port": port,
        "security": args.smtp_security,
        "user": args.smtp_user or "",
        "password": _smtp_password(args.smtp_password_file),
        "sender": args.smtp_from or "",
    }


def _smtp_password(path: str | None) -> str:
    """The SMTP password: the first line of ``path``, or TASKFLEET_SMTP_PASSWORD."""
    if not path:
        return os.environ.get("TASKFLEET_SMTP_PASSWORD", "")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise CannotStart(
            f"cannot read --smtp-password-file {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None


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


RETENTION_DEFAULTS = {"runs": "90d", "audit": "365d", "log": "30d", "messages": "30d"}
"""The ``--retention-KIND`` flags and their defaults (as ``server.retention.DEFAULT_KEEP``)."""


def _keep_time(text: str) -> str:
    """A ``--retention-*`` value, checked when the command line is read."""
    from server.retention import parse_keep

    try:
        parse_keep(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _retention(args: argparse.Namespace) -> dict[str, float | None]:
    """The keep times given (None: for ever); kinds not given keep the NS's defaults."""
    from server.retention import parse_keep

    given = {kind: getattr(args, f"retention_{kind}", None) for kind in RETENTION_DEFAULTS}
    return {kind: parse_keep(text) for kind, text in given.items() if text is not None}


def _database(url: str | None) -> str | None:
    """What is wrong with ``--database`` (None: nothing, or not given)."""
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        return (
            f"--database takes a PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE), not"
            f" {parts.scheme or url!r}; leave it out to keep SQLite in the data folder"
        )
    if parts.password is not None and os.environ.get(DATABASE_ENV) != url:
        return (
            "the --database URL holds a password, which the command line and the configuration"
            f" file would show: give it in ~/.pgpass or PGPASSWORD, or the whole URL in"
            f" {DATABASE_ENV}"
        )
    return None


def _lease_timeout(text: str) -> float:
    """``--lease-timeout-s``: a number of seconds the lease allows (``server.store.lease``)."""
    from server.store.lease import timings

    try:
        seconds = float(text)
        timings(seconds)
    except ValueError as exc:
        why = str(exc) if "lease" in str(exc) else f"expected a number of seconds, not {text!r}"
        raise argparse.ArgumentTypeError(why) from None
    return seconds


def cmd_server(args: argparse.Namespace) -> int:
    from server.core import NotificationServer

    if args.print_config:
        return print_config(args)
    if problem := _database(args.database):
        print(f"taskfleet server: {problem}", file=sys.stderr)
        return EXIT_USAGE
    hierarchy = parent_settings(args)
    if isinstance(hierarchy, str):
        print(f"taskfleet server: {hierarchy}", file=sys.stderr)
        return EXIT_USAGE
    address = _listener(args, 8470)
    if address is None:
        return EXIT_USAGE
    host, port = address
    ns_args: dict[str, Any] = dict(
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
        retention=_retention(args),
        console=args.console,
        database=args.database,
        lease_timeout_s=args.lease_timeout_s,
    )
    ns_args.update(hierarchy)  # --parent: docs/hierarchy.md
    ns = NotificationServer(**ns_args)

    def announce() -> None:
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
        console = ns.admin_url or (ns.url if args.console else None)
        if console and console.startswith("wss://"):
            where = console.removeprefix("wss://").rstrip("/")
            print(f"taskfleet: web console at https://{where}/ (docs/console.md)", flush=True)

    def ready() -> str:
        return (
            f"taskfleet server ready url={ns.url} fingerprint={ns.tls_fingerprint or '-'}"
            + (f" admin_url={ns.admin_url}" if ns.admin_url else "")
            + (" standby=yes" if ns.standing_by else "")
        )

    async def serve() -> None:
        """Serve; an NS of a pair that lost its lease (``server.store.lease``) is stopped and a fresh
        one, on the same ports, waits as the standby (nothing of the old one's state is kept)."""
        nonlocal ns
        while True:
            await _serve_forever(ns, ready, announce)
            if ns.failure is not None:
                raise ns.failure
            if not ns.stood_down:
                return
            ns = NotificationServer(**{**ns_args, "port": ns.port, "admin_port": ns.admin_port})

    return _run_role("server", serve)


def _connecting_role_prelude(args: argparse.Namespace) -> int | None:
    """What a TS and an agent do before anything starts: ``--print-config`` (its exit code), or
    the check of the NS URL they connect to (a usage error); None to go on."""
    if args.print_config:
        return print_config(args)
    if (problem := _check_server_url(args)) is not None:
        print(f"taskfleet: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return None


def cmd_taskserver(args: argparse.Namespace) -> int:
    from runtime.metrics import token_file_check
    from taskserver.service import TaskServer

    if (early := _connecting_role_prelude(args)) is not None:
        return early
    try:
        metrics_authorize = token_file_check(args.metrics_token_file)
    except ValueError as exc:
        print(f"taskfleet: {exc}", file=sys.stderr)
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
        metrics_authorize=metrics_authorize,
    )
    return _run_role(
        "taskserver",
        lambda: _serve_forever(
            ts, lambda: f"taskfleet taskserver ready url={ts.url} fingerprint={ts.tls_fingerprint}"
        ),
    )


def cmd_agent(args: argparse.Namespace) -> int:
    from agent.agent import Agent
    from agent.commands import CommandTable
    from agent.metrics import run_with_metrics
    from runtime.metrics import token_file_check

    if (early := _connecting_role_prelude(args)) is not None:
        return early
    try:
        commands = CommandTable.load(args.commands)
    except (OSError, ValueError) as exc:
        print(f"taskfleet: cannot use the command table {args.commands}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        metrics_authorize = token_file_check(args.metrics_token_file)
    except ValueError as exc:
        print(f"taskfleet: {exc}", file=sys.stderr)
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
        allow_power=args.allow_power,
    )

    return _run_role(
        "agent",
        lambda: run_with_metrics(
            agent, args.metrics_listen, metrics_authorize, lambda: _agent_main(agent)
        ),
    )


SERVER_HELP = (
    "the NS URL, wss://HOST:PORT; for two NS on one PostgreSQL (active and standby), both:"
    " wss://HOST1:PORT,wss://HOST2:PORT (the active one is followed)"
)

AGENT_READY_WAIT_S = 20.0
"""How long an agent waits for its first connection before it tells systemd it is ready anyway:
an agent whose NS is away is still doing its job (retrying, running its policies), and a unit's
start time-out must not kill and restart it over and over."""


async def _agent_main(agent: Any) -> None:
    """Run the agent until SIGTERM/SIGINT: it then stops its scripts, closes its link with 1001
    and ends (the instance it was running is reported ``failed`` at its next start,
    "agent restarted while the task ran", as docs/protocol.md says)."""
    notify = Notifier.from_environ()
    task = asyncio.create_task(agent.run())

    def stop() -> None:
        notify.stopping()
        agent.shutting_down = True  # before the cancel reaches its link: it closes with 1001
        task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    ready = asyncio.create_task(_agent_ready(agent, notify))
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        ready.cancel()
        notify.close()


async def _agent_ready(agent: Any, notify: Notifier) -> None:
    """READY=1 once connected (or after AGENT_READY_WAIT_S, saying it is still trying)."""
    try:
        await asyncio.wait_for(agent.connected.wait(), AGENT_READY_WAIT_S)
        notify.ready(f"agent {agent.name} connected to {agent.server_url}")
    except TimeoutError:
        notify.ready(f"agent {agent.name} running; not connected yet, trying {agent.server_url}")


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
    s = role_parser(sub, "server", parents=[token, tls, enrol], help="run the Notification Server")
    add_parent_flags(s)
    s.add_argument("--insecure", action="store_true", help="plain ws://, no TLS (tests only)")
    s.add_argument(
        "--database",
        "--database-url",
        metavar="URL",
        default=os.environ.get(DATABASE_ENV),
        help="keep the NS's tables in PostgreSQL: postgresql://USER@HOST:PORT/DATABASE (also"
        f" {DATABASE_ENV}, or `[database] url` in the configuration file); its password from"
        f" ~/.pgpass or PGPASSWORD (or the whole URL in {DATABASE_ENV}), never on the command"
        " line (default: SQLite, DATA/server.db)",
    )
    s.add_argument(
        "--lease-timeout-s",
        "--database-lease-timeout-s",
        metavar="SECONDS",
        type=_lease_timeout,
        default=10.0,
        help="two NS on PostgreSQL: how long an active NS that stops renewing keeps its place"
        " before the standby fences it (default 10, at least 3; it renews every fifth of it;"
        " `[database] lease_timeout_s` in the configuration file; docs/operations.md)",
    )
    s.add_argument(
        "--max-connections-per-address",
        type=int,
        default=20_000,
        help="connections one IP address may hold open at once (default 20000; agents behind"
        " one NAT share an address)",
    )
    s.add_argument(
        "--max-pending-keys",
        type=int,
        default=1_000,
        help="unknown keys waiting for an admin's `keys accept` before more are refused"
        " (default 1000)",
    )
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
        "--console",
        action="store_true",
        help="serve the web console on the main listener too (a small site; docs/console.md). "
        "It is always served on --admin-port",
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
    s.add_argument(
        "--smtp",
        "--smtp-server",
        dest="smtp",
        metavar="HOST:PORT",
        help="the mail server for send-email (in a configuration file: smtp, or server in [smtp])",
    )
    s.add_argument(
        "--smtp-security",
        choices=["none", "starttls", "tls"],
        default="starttls",
        help="how to secure the mail server connection (default starttls)",
    )
    s.add_argument(
        "--smtp-user",
        help="login (the password comes from --smtp-password-file or TASKFLEET_SMTP_PASSWORD)",
    )
    s.add_argument(
        "--smtp-password-file",
        metavar="FILE",
        help="read the SMTP password from the first line of FILE (keep it mode 0600)",
    )
    s.add_argument("--smtp-from", help="sender address")
    s.add_argument("--data", required=True, help="data folder (created on first start)")
    s.add_argument(
        "--listen",
        default="127.0.0.1:8470",
        help="HOST:PORT to listen on (port 0: any free port; default 127.0.0.1:8470)",
    )
    s.add_argument("--name", default="ns", help="this NS's name, in its id and certificate")
    s.add_argument("--flush-ms", type=int, default=10, help=FLUSH_HELP)
    for kind, default in RETENTION_DEFAULTS.items():
        s.add_argument(
            f"--retention-{kind}",
            type=_keep_time,
            metavar="TIME",
            help=f"keep {kind} this long: 90d, 12h, 30m; 0 or forever: for ever (default {default})",
        )
    s.set_defaults(func=cmd_server)

    t = role_parser(sub, "taskserver", parents=[token, tls, trust, enrol], help="run a Task Server")
    t.add_argument("--server", required=True, help=SERVER_HELP)
    t.add_argument("--data", required=True, help="data folder (created on first start)")
    t.add_argument(
        "--listen",
        default="127.0.0.1:8471",
        help="HOST:PORT agents connect to (port 0: any free port; default 127.0.0.1:8471)",
    )
    t.add_argument(
        "--name",
        default=os.uname().nodename,
        help="this TS's name at the NS (default: the host name)",
    )
    t.add_argument("--advertise", help="URL agents use to reach this TS (default: wss://LISTEN)")
    t.add_argument("--flush-ms", type=int, default=10, help=FLUSH_HELP)
    t.add_argument("--max-handshakes", type=int, default=HANDSHAKES_AT_ONCE, help=HANDSHAKES_HELP)
    t.add_argument("--metrics-token-file", metavar="FILE", help=METRICS_TOKEN_HELP)
    t.set_defaults(func=cmd_taskserver)

    a = role_parser(sub, "agent", parents=[token, trust, enrol], help="run an agent")
    a.add_argument("--server", required=True, help=SERVER_HELP)
    a.add_argument("--data", required=True, help="data folder (created on first start)")
    a.add_argument(
        "--name",
        default=os.uname().nodename,
        help="this computer's name at the NS (default: the host name)",
    )
    a.add_argument(
        "--concurrency", type=int, default=4, help="tasks run at once on this computer (default 4)"
    )
    a.add_argument(
        "--commands", help="TOML file overriding the platform command table (docs/tasks.md)"
    )
    a.add_argument(
        "--allow-power",
        action="store_true",
        help="let power-control restart, shut down or log off this machine (default: refused,"
        " unless --commands gives that action a command of its own; docs/tasks.md)",
    )
    a.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and /readyz over plain HTTP there (default: nowhere)",
    )
    a.add_argument("--metrics-token-file", metavar="FILE", help=METRICS_TOKEN_HELP)
    a.set_defaults(func=cmd_agent)

    from admin.service import add_parser as add_install_service
    from admin.simulate import add_parser as add_simulate

    add_install_service(sub, {"server": s, "taskserver": t, "agent": a})
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
