"""`taskfleet simulate`: many lightweight agents speaking the real protocol with real keys.

Each agent enrols with the given token, keeps its state in memory, and runs every task as a
no-op that takes ``--task-delay-ms`` and fails at ``--fail-rate``. The agents are spread over
``--processes`` worker processes (this one included), so one Python process is not the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from runtime import logs
from runtime.tls import ClientTrust

if TYPE_CHECKING:
    from agent.agent import Agent


def _end_with_parent(parent: int) -> Callable[[], None]:
    """In a worker, before exec (Linux): SIGTERM it when worker 0 (pid ``parent``) dies,
    however it dies. A worker left behind keeps thousands of agents retrying a server that is
    gone."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl(
                    1,
                    signal.SIGTERM,  # PR_SET_PDEATHSIG
                )
        if os.getppid() != parent:  # worker 0 died between the fork and the line above
            os._exit(0)

    return arm


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_agents(args: argparse.Namespace, names: list[str]) -> None:
    from agent.agent import Agent  # here: every admin command imports this module's parser

    trust = ClientTrust(
        ca_file=args.ca, fingerprint=args.server_fingerprint, insecure=args.insecure
    )
    agents = [
        Agent(
            server_url=args.server,
            name=name,
            trust=trust,
            enrol_token=args.enrol_token or "",
            lightweight=True,
            simulate={"fail_rate": args.fail_rate, "delay_ms": args.task_delay_ms},
            backoff_initial_s=1.0,
            backoff_max_s=30.0,
        )
        for name in names
    ]
    tasks: list[asyncio.Task[None]] = []
    starting = asyncio.create_task(
        start_agents(agents, tasks, args.start_rate / max(1, args.processes))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def report() -> None:
        while True:
            await asyncio.gather(*(a.connected.wait() for a in agents))
            print(
                f"taskfleet simulate: {len(agents)} agents connected ({names[0]}..{names[-1]})",
                flush=True,
            )
            return

    reporter = asyncio.create_task(report())
    await stop.wait()
    reporter.cancel()
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, reporter, return_exceptions=True)


async def start_agents(agents: list[Agent], tasks: list[asyncio.Task[None]], rate: float) -> None:
    """Start every agent: all at once (``rate`` 0), or ``rate`` a second in batches of a tenth
    of a second. Thousands of agents of one process starting together start their handshakes
    together, and the process's own CPU (one for thousands of agents, where a real fleet has
    one each) makes them all slow: past the servers' handshake limits, they all start again."""
    if rate <= 0:
        tasks.extend(asyncio.create_task(a.run()) for a in agents)
        return
    batch = max(1, round(rate / 10))
    for i in range(0, len(agents), batch):
        tasks.extend(asyncio.create_task(a.run()) for a in agents[i : i + batch])
        await asyncio.sleep(batch / rate)


def main(args: argparse.Namespace) -> int:
    """Start the workers (this process is worker 0) and wait for a signal."""
    if args.start_rate < 0:
        print("taskfleet simulate: --start-rate must be 0 (all at once) or more", file=sys.stderr)
        return 2
    logs.set_level(args.log_level if args.log_level != "info" else "warning")
    _raise_open_files()
    processes = max(1, min(args.processes, args.agents))
    worker = args.worker
    names = [f"{args.prefix}-{i:05d}" for i in range(args.agents)]
    mine = names[worker::processes]
    children: list[subprocess.Popen[bytes]] = []
    if worker == 0:
        base = [a for a in sys.argv[1:] if not a.startswith("--worker")]
        for w in range(1, processes):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "admin", *base, "--worker", str(w)],
                    preexec_fn=_end_with_parent(os.getpid()),  # noqa: PLW1509 (no threads yet)
                )
            )
    from runtime import heap

    heap.tune_gc(many_agents=True)
    try:
        asyncio.run(run_agents(args, mine))
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    s = sub.add_parser(
        "simulate", parents=parents, help="many lightweight agents, for load and fault tests"
    )
    s.add_argument("--server", required=True, help="the NS URL, wss://HOST:PORT")
    s.add_argument("--agents", type=int, required=True, help="how many agents to simulate")
    s.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes the agents are spread over (default: one per CPU)",
    )
    s.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="share of tasks that fail, 0.0 to 1.0 (default 0: none)",
    )
    s.add_argument(
        "--task-delay-ms",
        type=int,
        default=0,
        help="how long each simulated task takes, in milliseconds (default 0)",
    )
    s.add_argument(
        "--start-rate",
        type=float,
        default=0.0,
        help="agents started per second, over all processes (default 0: all at once)",
    )
    s.add_argument(
        "--prefix",
        default="sim",
        help="agents are named PREFIX-00000, PREFIX-00001... (default sim)",
    )
    s.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    s.set_defaults(func=main)
