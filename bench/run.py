"""taskfleet control-plane benchmark: one NS and one TS as real processes, N agents, R noop runs.

    python bench/run.py --agents 1000 --repeat 5 [--json-out bench.json] [--profile ns]

The NS and the TS run as separate processes (``python -m admin server|taskserver``) in a
temporary folder; N lightweight agents (state in memory, no SQLite) run as asyncio tasks in
this process. The bench waits (bounded) until the NS lists all N online through ``ts-1``,
saves a ``noop`` task, then R times: starts a run on every computer, follows it with
``AdminClient.watch`` to its end, and checks that every instance succeeded.

Reported: connect + register time, time from ``run.start`` to the last result stored
(median), results stored per second (N / median), CPU seconds per run of each process, and
resident memory per connected agent on the NS and the TS (VmRSS delta / N).

Every child process (servers, py-spy) is killed on exit, also on error or Ctrl-C: by a
``finally``, by an ``atexit`` hook, and by ``PR_SET_PDEATHSIG`` should this process die hard.
See bench/README.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import gc
import hashlib
import json
import logging
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from admin.client import AdminClient  # noqa: E402
from agent.agent import Agent  # noqa: E402
from bench import floor  # noqa: E402
from runtime import heap  # noqa: E402
from runtime.tls import ClientTrust  # noqa: E402

NOOP = 'name = "bench-noop"\ntype = "noop"\ntimeout_s = 600\n'
LOG = 'name = "bench-log"\ntype = "write-server-log"\n[params]\nmessage = "bench %RUNID%"\n'
NOOP_STEP = '[[steps]]\ntask = "bench-noop"\n'
NOOP3 = "".join(f'[[steps]]\nid = "noop{i}"\ntask = "bench-noop"\n' for i in (1, 2, 3))
LOG_STEP = '[[steps]]\ntask = "bench-log"\n'
# A server job may not hold only client tasks (DOMAIN.md), so each server job ends with one
# server task (a line in the NS's log): the time to the start of that step is the barrier's.
DOCUMENTS = {
    "task.add": [NOOP, LOG],
    "job.add": [
        f'name = "bench-step"\ntype = "server-job"\n{NOOP_STEP}{LOG_STEP}',
        f'name = "bench-job3"\ntype = "server-job"\n{NOOP3}{LOG_STEP}',
        f'name = "bench-client3"\ntype = "client-job"\n{NOOP3}',
    ],
}
SCENARIOS = {
    "task": ("bench-noop", "a noop task run on every computer"),
    "step": ("bench-step", "a one-step server job (noop client task): the barrier"),
    "job3": ("bench-job3", "a three-step server job (three barriers)"),
    "client3": ("bench-client3", "a three-step client job (each agent runs its own)"),
}
READY_TIMEOUT_S = 30.0
PAIRED_GAP_S = 0.3
"""Between a paired floor round and the taskfleet run after it (as between floor rounds)."""
SIMULATED_NOOP: dict[str, float] = {"delay_ms": 0.0, "fail_rate": 0.0}
"""``--agent-tasks simulated``: what ``taskfleet simulate --task-delay-ms 0`` gives its agents."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- child processes ----------------------------------------------------------------------

_LIVE_PIDS: set[int] = set()
"""Every child still running; the atexit hook SIGKILLs whatever is left."""


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_LIVE_PIDS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _LIVE_PIDS.clear()


try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when this process dies (Linux prctl)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
    }


async def _spawn(argv: list[str], log_path: Path, stdout: Any) -> asyncio.subprocess.Process:
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=stdout,
            stderr=log,
            env=_child_env(),
            preexec_fn=_die_with_parent,
        )
    _LIVE_PIDS.add(proc.pid)
    return proc


async def _end(proc: asyncio.subprocess.Process | None, sig: int, wait_s: float) -> None:
    """Signal a child, wait for it, SIGKILL it if it lingers."""
    if proc is None:
        return
    try:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), wait_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
    finally:
        _LIVE_PIDS.discard(proc.pid)


class ServerProc:
    """``python -m admin server|taskserver ...`` with its stderr in a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path):
        self.name = name
        self.args = args
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.fingerprint = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> ServerProc:
        self.proc = await _spawn(
            [sys.executable, "-m", "admin", *self.args], self.log_path, asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S:g} s\n{self.tail()}")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not line:
                raise RuntimeError(f"{self.name} exited before it was ready\n{self.tail()}")
            text = line.decode(errors="replace").strip()
            if " ready url=" in text:
                fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
                self.url = fields["url"]
                fp = fields.get("fingerprint", "")
                self.fingerprint = "" if fp == "-" else fp
                return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def rss_kib(self) -> int:
        return _rss_kib(self.pid)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process (all its threads) so far."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def tail(self, chars: int = 3000) -> str:
        try:
            return f"--- {self.log_path} ---\n" + self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def log_problems(self) -> Counter[str]:
        """Count warning/error lines of the log by event name."""
        found: Counter[str] = Counter()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return found
        for m in re.finditer(r"\[(warning|error|critical)\s*\]\s+(\S+)", text):
            found[f"{m.group(1)}:{m.group(2)}"] += 1
        return found

    async def stop(self) -> None:
        await _end(self.proc, signal.SIGTERM, 10)


def calibrate() -> float:
    """Speed of one CPU for plain Python, in million loop steps per second (best of 5).

    This VM's CPUs do not run at one steady speed; comparing this figure between sessions
    tells a slower machine from a slower taskfleet.
    """
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i & 7
        best = min(best, time.perf_counter() - t0)
    return 1.0 / best


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, /proc/stat) so far."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def _rss_kib(pid: int | str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- profiling (py-spy) ---------------------------------------------------------------------


class Profiler:
    """``py-spy record`` attached to a server process; collapsed stacks, summarised on stop."""

    def __init__(self, py_spy: str, target: ServerProc, out: Path, rate: int):
        self.py_spy = py_spy
        self.target = target
        self.out = out
        self.rate = rate
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        argv = [
            self.py_spy, "record", "--pid", str(self.target.pid), "--rate", str(self.rate),
            "--format", "raw", "--threads", "--nonblocking", "--output", str(self.out),
        ]  # fmt: skip
        self.proc = await _spawn(argv, self.out.with_suffix(".log"), asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # let it attach before the measured phase

    async def stop(self) -> dict[str, Any] | None:
        await _end(self.proc, signal.SIGINT, 30)
        if not self.out.exists():
            return None
        return summarise_stacks(self.out.read_text(errors="replace"))


_LINE = re.compile(r":\d+\)$")
_BOILERPLATE = (
    "(<frozen runpy>)",
    "(asyncio/runners.py)",
    "(asyncio/base_events.py)",
    "(asyncio/events.py)",
    "(admin/__main__.py)",
    "(admin/cli.py)",
    "(threading.py)",
)


def summarise_stacks(text: str, top: int = 15) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples, and samples per thread."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        if frames and frames[0].startswith(("thread ", "process ")):
            threads[frames[0]] += count
            frames = [f for f in frames if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            if not f.endswith(_BOILERPLATE):
                incl[f] += count

    def share(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": n, "percent": round(100 * n / total, 1)}
            for f, n in c.most_common(top)
        ]

    return {
        "samples": total,
        "threads": dict(threads.most_common()),
        "top_own": share(own),
        "top_inclusive": share(incl),
    }


# -- logging in this process: count agent events, print only warnings and errors -------------

EVENTS: Counter[str] = Counter()


def _count_events(_logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    EVENTS[f"{method}:{event_dict.get('event')}"] += 1
    if method in ("debug", "info"):
        raise structlog.DropEvent
    return event_dict


def configure_logging() -> None:
    structlog.configure(
        processors=[
            _count_events,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


# -- what was measured: the product's source -----------------------------------------------

PRODUCT_DIRS = ("protocol", "server", "taskserver", "agent", "admin")


def source_fingerprint() -> dict[str, Any]:
    """A hash of the product's Python sources, and the git commit (read-only git calls).

    Taken at the start and at the end: a tree edited during the benchmark makes its
    figures (and its processes' imports) meaningless, and the report says so.
    """
    digest = hashlib.sha256()
    for d in PRODUCT_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    out: dict[str, Any] = {"sources_sha256": digest.hexdigest()[:16]}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", *PRODUCT_DIRS],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        out["commit"] = head.stdout.strip()
        out["uncommitted"] = [line[3:] for line in dirty.stdout.splitlines()]
    return out


# -- the benchmark ---------------------------------------------------------------------------


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def until(predicate: Any, what: str, timeout_s: float, every_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(every_s)


def _check_agents(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise RuntimeError(f"agent {t.get_name()} died: {t.exception()!r}")


async def connect_fleet(
    client: AdminClient,
    agents: list[Agent],
    tasks: list[asyncio.Task[None]],
    ts_names: list[str],
    timeout_s: float,
    t0: float,
) -> dict[str, Any]:
    """Wait until every agent is connected to a TS and the NS lists it online there.

    Times count from ``t0``, when the first agent was started.
    """
    n = len(agents)
    first_seen: dict[str, float] = {}

    async def all_connected() -> bool:
        _check_agents(tasks)
        now = time.perf_counter() - t0
        for a in agents:
            if a.name not in first_seen and a.connected.is_set() and a.taskserver in ts_names:
                first_seen[a.name] = now
        return len(first_seen) >= n

    left = max(1.0, timeout_s - (time.perf_counter() - t0))
    await until(all_connected, f"{n} agents connected to {ts_names}", left, 0.05)
    t_connected = time.perf_counter() - t0
    per_ts: Counter[str] = Counter()

    async def all_online() -> bool:
        _check_agents(tasks)
        rows = await client.call("computers.list")
        per_ts.clear()
        per_ts.update(
            r["taskserver"]
            for r in rows
            if r["online"] and r["taskserver"] in ts_names and r["name"].startswith("sim-")
        )
        return sum(per_ts.values()) >= n

    left = max(1.0, timeout_s - t_connected)
    await until(all_online, f"{n} agents online on {ts_names} at the NS", left, 0.1)
    t_online = time.perf_counter() - t0
    times = sorted(first_seen.values())
    return {
        "agents_connected_s": t_connected,
        "all_online_s": t_online,
        "half_connected_s": times[len(times) // 2] if times else 0.0,
        "per_taskserver": dict(per_ts),
    }


class GcClock:
    """Time this process spends in the cyclic garbage collector (``gc.callbacks``): the bench
    holds all N agents' objects in one heap, so one full collection walks all of them."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self.collections = [0, 0, 0]
        self._t = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.total_s += time.perf_counter() - self._t
            self.collections[info["generation"]] += 1


GC = GcClock()


def _cpu(procs: dict[str, ServerProc]) -> dict[str, float]:
    return {k: p.cpu_s() for k, p in procs.items()}


def _cpu_delta(
    procs: dict[str, ServerProc], cpu0: dict[str, float], bench0: float, busy0: float
) -> dict[str, float]:
    cpu = {k: p.cpu_s() - cpu0[k] for k, p in procs.items()}
    cpu["ts"] = sum(v for k, v in cpu.items() if k.startswith("ts-"))
    cpu["bench"] = time.process_time() - bench0
    # CPU that other processes on this machine took meanwhile: it distorts the figures.
    ours = sum(v for k, v in cpu.items() if k != "ts")
    cpu["others"] = max(0.0, machine_busy_s() - busy0 - ours)
    return cpu


async def one_run(
    client: AdminClient, name: str, timeout_s: float, procs: dict[str, ServerProc]
) -> dict[str, Any]:
    """Start ``name`` on every computer and follow it to its end (the last barrier released,
    every result stored: the NS ends a run only after storing its last result)."""
    cpu0, bench0, busy0 = _cpu(procs), time.process_time(), machine_busy_s()
    gc0, full0 = GC.total_s, GC.collections[2]
    t0 = time.perf_counter()
    started = await client.call("run.start", task=name, all=True)
    t_started = time.perf_counter() - t0
    run_id = int(started["run_id"])
    events = 0
    t_last_event = 0.0

    async def follow() -> None:
        nonlocal events, t_last_event
        # Totals, not rows: what an administrator follows a run on thousands of computers
        # with; every row is read back and checked after the timing, below.
        async for kind, data in client.watch(run_id, instances=False):
            if kind == "counts":
                events += int(data["changes"])
                t_last_event = time.perf_counter() - t0
            elif kind == "run":
                return

    await asyncio.wait_for(follow(), timeout_s)
    t_end = time.perf_counter() - t0
    cpu = _cpu_delta(procs, cpu0, bench0, busy0)
    gc_s, full = GC.total_s - gc0, GC.collections[2] - full0
    final = await client.call("run.show", run_id=run_id)
    rows = final.get("instances", [])
    steps = final.get("steps") or []
    created = final.get("created_at")
    # A server job: its last step (the server task) starts when the barriers before it release.
    barrier_s = (
        steps[-1]["started_at"] - created
        if len(steps) > 1 and created and steps[-1].get("started_at")
        else None
    )
    statuses = Counter(r["status"] for r in rows)
    return {
        "run_id": run_id,
        "targets": int(started["targets"]),
        "status": final.get("status"),
        "rows": len(rows),
        "statuses": dict(statuses),
        "ok": final.get("status") == "succeeded" and statuses.get("succeeded", 0) == len(rows),
        "start_call_s": t_started,
        "end_s": t_end,
        "last_event_s": t_last_event,
        "barrier_s": barrier_s,
        "server_s": (final["ended_at"] - final["created_at"])
        if final.get("ended_at") and final.get("created_at")
        else None,
        "instance_events": events,
        "cpu_s": cpu,
        "bench_gc_s": gc_s,
        "bench_full_gcs": full,
    }


async def stop_agents(tasks: list[asyncio.Task[None]], timeout_s: float = 30.0) -> None:
    for t in tasks:
        t.cancel()
    if tasks:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(tasks, timeout=timeout_s)


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


async def bench(args: argparse.Namespace, n: int, k_ts: int, root: Path) -> dict[str, Any]:
    """One configuration: an NS, ``k_ts`` TS processes, N agents, every scenario R times."""
    result: dict[str, Any] = {"agents": n, "taskservers": k_ts, "repeat": args.repeat}
    ns_args = ["server", "--data", str(root / "ns"), "--listen", "127.0.0.1:0"]
    if args.insecure:
        ns_args += ["--insecure"]
    ns = ServerProc("ns", ns_args, root / "ns.log")
    servers = [ns]
    tasks: list[asyncio.Task[None]] = []
    profilers: dict[str, Profiler] = {}
    paired: floor.Floor | None = None
    ts_names = [f"ts-{i + 1}" for i in range(k_ts)]
    try:
        await ns.start()
        admin_token = (root / "ns" / "admin.token").read_text().strip()
        trust = (
            ClientTrust(insecure=True) if args.insecure else ClientTrust(fingerprint=ns.fingerprint)
        )
        async with AdminClient(ns.url, admin_token, trust, identity="bench") as client:
            created = await client.call("tokens.create", ttl_s=86_400, uses=n + k_ts + 10)
            enrol = created["token"]
            procs: dict[str, ServerProc] = {"ns": ns}
            for name in ts_names:
                ts_args = [
                    "taskserver", "--server", ns.url, "--data", str(root / name),
                    "--listen", "127.0.0.1:0", "--name", name, "--enrol-token", enrol,
                    *(["--insecure"] if args.insecure else ["--server-fingerprint", ns.fingerprint]),
                ]  # fmt: skip
                ts = ServerProc(name, ts_args, root / f"{name}.log")
                servers.append(ts)
                await ts.start()
                procs[name] = ts

            async def ts_online() -> bool:
                rows = await client.call("taskservers.list")
                return sum(1 for r in rows if r["name"] in ts_names and r["online"]) == k_ts

            await until(ts_online, f"{ts_names} connected to the NS", 30, 0.05)
            for op, texts in DOCUMENTS.items():
                for text in texts:
                    await client.call(op, text=text, filename="bench.toml")
            if args.paired_floor:
                # Connected before the agents, kept idle through their connect, and a round of
                # it timed just before each taskfleet run: the same minute of this machine.
                print(f"bench: paired floor, N={n} ...", flush=True)
                paired = await floor.Floor(n, args.insecure, clients_apart=True).start()
            await asyncio.sleep(0.5)
            rss0 = {k: p.rss_kib() for k, p in procs.items()}
            rss0["bench"] = _rss_kib("self")

            async def start_profiles(phase: str) -> None:
                if args.profile_phase != phase or not args.profile:
                    return
                py_spy = find_py_spy()
                if py_spy is None:
                    print("bench: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
                    return
                for which in args.profile:
                    target: Any = (
                        SimpleNamespace(pid=os.getpid())
                        if which == "agents"
                        else procs["ns" if which == "ns" else ts_names[0]]
                    )
                    out_dir = Path(args.profile_dir or root)
                    out_dir.mkdir(parents=True, exist_ok=True)
                    out = out_dir / f"profile-{which}-{phase}-n{n}-ts{k_ts}.txt"
                    p = Profiler(py_spy, target, out, args.rate)
                    await p.start()
                    profilers[which] = p

            async def stop_profiles() -> None:
                for which, p in list(profilers.items()):
                    summary = await p.stop()
                    if summary is not None:
                        summary["phase"] = args.profile_phase
                        summary["raw"] = str(p.out)
                        result.setdefault("profiles", {})[which] = summary
                    del profilers[which]

            await start_profiles("connect")
            agents = [
                Agent(
                    server_url=ns.url,
                    name=f"sim-{i:05d}",
                    data_dir=None,
                    lightweight=True,
                    backoff_initial_s=args.backoff_initial_s,
                    backoff_max_s=args.backoff_max_s,
                    trust=trust,
                    enrol_token=enrol,
                    simulate=SIMULATED_NOOP if args.agent_tasks == "simulated" else None,
                )
                for i in range(n)
            ]
            print(f"bench: N={n}, {k_ts} TS: starting agents ...", flush=True)
            cpu0, bench0, busy0 = _cpu(procs), time.process_time(), machine_busy_s()
            t_spawn = time.perf_counter()
            for a in agents:
                tasks.append(asyncio.create_task(a.run(), name=a.name))
            connect = await connect_fleet(
                client, agents, tasks, ts_names, args.connect_timeout, t_spawn
            )
            connect["cpu_s"] = _cpu_delta(procs, cpu0, bench0, busy0)
            await stop_profiles()
            result["connect"] = connect
            print(f"bench: all online after {connect['all_online_s']:.2f} s", flush=True)
            # The fleet lives until the bench ends and no agent reconnects meanwhile: its heap is
            # frozen, so the runs' full collections do not walk every agent (1.4-2.4 s at 10,000).
            # `taskfleet simulate` does not: there a frozen connection that later closes (a
            # reconnect storm) would never be collected.
            gc.collect()
            gc.freeze()
            await asyncio.sleep(1.0)
            rss1 = {k: p.rss_kib() for k, p in procs.items()}
            rss1["bench"] = _rss_kib("self")
            if args.idle_s > 0:
                # What the connected fleet costs doing nothing: keepalives, presence, timers.
                print(f"bench: idle for {args.idle_s:g} s ...", flush=True)
                cpu0, bench0, busy0 = _cpu(procs), time.process_time(), machine_busy_s()
                await asyncio.sleep(args.idle_s)
                idle = _cpu_delta(procs, cpu0, bench0, busy0)
                result["idle_cpu_pct"] = {k: 100 * v / args.idle_s for k, v in idle.items()}

            await start_profiles("runs")
            scenarios: dict[str, list[dict[str, Any]]] = {}
            for scenario in args.scenarios:
                name = SCENARIOS[scenario][0]
                runs = scenarios[scenario] = []
                for rep in range(args.repeat):
                    await asyncio.sleep(args.pause_s)
                    floor_round = None
                    if paired is not None:
                        floor_round = await paired.round()
                        await asyncio.sleep(PAIRED_GAP_S)
                    r = await one_run(client, name, args.run_timeout, procs)
                    if floor_round is not None:
                        r["paired_floor_s"], r["paired_floor_cpu_s"] = (
                            floor_round[0],
                            {"server": floor_round[1], "clients": floor_round[2]},
                        )
                    runs.append(r)
                    print(
                        f"bench: {scenario} {rep + 1}/{args.repeat} (run {r['run_id']}): "
                        f"{r['end_s']:.3f} s, {r['statuses']}"
                        + (
                            f"; floor round before it {floor_round[0]:.3f} s" if floor_round else ""
                        ),
                        flush=True,
                    )
            await stop_profiles()
            result["scenarios"] = scenarios
            rss2 = {k: p.rss_kib() for k, p in procs.items()}
            rss2["bench"] = _rss_kib("self")
            result["rss_kib"] = {
                k: {
                    "before": rss0[k],
                    "after_connect": rss1[k],
                    "after_runs": rss2[k],
                    "peak": _hwm_kib(procs[k].pid if k in procs else os.getpid()),
                }
                for k in rss0
            }
            ts_grow = sum(rss1[k] - rss0[k] for k in ts_names)
            result["ts_kib_per_agent"] = ts_grow / n
            result["ns_rss_mib"] = {
                "after_runs": rss2["ns"] / 1024,
                "peak": result["rss_kib"]["ns"]["peak"] / 1024,
            }
    except Exception:
        for s in servers:
            if s.proc is not None:
                print(s.tail(), file=sys.stderr)
        raise
    finally:
        for p in profilers.values():
            await _end(p.proc, signal.SIGINT, 10)
        if paired is not None:
            await paired.close()
        await stop_agents(tasks)
        gc.unfreeze()  # this fleet is gone: its cycles may be collected again
        for s in reversed(servers):
            await s.stop()
    result["server_log_problems"] = {s.name: dict(s.log_problems()) for s in servers}
    return result


# -- the report --------------------------------------------------------------------------------


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians per scenario (each over ``repeat`` runs)."""
    out: dict[str, Any] = {}
    for scenario, runs in result.get("scenarios", {}).items():
        ends = [r["end_s"] for r in runs]
        med = statistics.median(ends)
        barriers = [r["barrier_s"] for r in runs if r["barrier_s"] is not None]
        floors = [r["paired_floor_s"] for r in runs if r.get("paired_floor_s")]
        pairs = [r for r in runs if r.get("paired_floor_s") and r["barrier_s"] is not None]
        out[scenario] = {
            "median_s": med,
            "barrier_median_s": statistics.median(barriers) if barriers else None,
            # Each run's barrier over the floor round timed just before it (--paired-floor).
            "paired_floor_median_s": statistics.median(floors) if floors else None,
            "paired_ratio_median": statistics.median(
                r["barrier_s"] / r["paired_floor_s"] for r in pairs
            )
            if pairs
            else None,
            "min_s": min(ends),
            "max_s": max(ends),
            "rows": runs[0]["rows"],
            "results_per_s": runs[0]["rows"] / med if med > 0 else None,
            "events_per_run": statistics.median(r["instance_events"] for r in runs),
            "cpu_median_s": {
                k: statistics.median(r["cpu_s"][k] for r in runs)
                for k in ("ns", "ts", "bench", "others")
            },
            "bench_gc_s": [round(r.get("bench_gc_s", 0.0), 3) for r in runs],
            "bench_full_gcs": sum(r.get("bench_full_gcs", 0) for r in runs),
            "all_ok": all(r["ok"] for r in runs),
            "not_succeeded": sum(r["rows"] - r["statuses"].get("succeeded", 0) for r in runs),
        }
    return out


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _source_line(src: dict[str, Any]) -> str:
    line = f"source: commit {src.get('commit', '?')}, sources sha256 {src['sources_sha256']}"
    if src.get("uncommitted"):
        line += f", uncommitted changes in {', '.join(src['uncommitted'])}"
    if src.get("changed_during_bench"):
        line += "\nWARNING: the product's sources changed while the benchmark ran: discard these figures"
    return line


def render(suite: dict[str, Any]) -> str:
    m = suite["machine"]
    lines = [
        "",
        "taskfleet benchmark (NS and TS as processes, agents and floor clients in the bench process;"
        " the paired floor's clients in a process of their own)",
        f"machine: {m['nproc']} CPUs, Python {m['python']}, {m['platform']}, "
        f"open files {m['nofile'][0]}",
        f"CPU speed (plain Python loop, M steps/s, before / after): "
        f"{m.get('calibration_before', 0):.1f} / {m.get('calibration_after', 0):.1f}",
        f"command: {suite['command']}",
        _source_line(suite["source"]),
        f"transport: {'plain ws:// (--insecure)' if suite['insecure'] else 'TLS, pinned'}; "
        f"every time is the median of {suite['repeat']} runs (floor: of {suite['repeat']} rounds"
        " before taskfleet's runs and as many after)",
        "agents' tasks: "
        + (
            "real (the `noop` type through the agent's general task path)"
            if suite.get("agent_tasks") == "real"
            else "simulated (a no-op that ends inline, as `taskfleet simulate` runs it)"
        ),
        *([f"label: {suite['label']}"] if suite.get("label") else []),
        "",
    ]
    head: tuple[str, ...] = ("N", "TS", "floor round", "connect+enrol")
    head += tuple(f"{s} s" for s in suite["scenarios"])
    head += (
        "step barrier",
        "barrier/floor",
        "barrier/floor(tlsio)",
        "barrier/floor(paired)",
        "results/s (step)",
        "NS RSS MiB (peak)",
        "TS KiB/agent",
        "all ok",
    )
    rows: list[tuple[str, ...]] = [head]
    for res in suite["results"]:
        n = res["agents"]
        fl = suite["floors"].get(str(n))
        ft = suite.get("floors_tlsio", {}).get(str(n))
        summ = res["summary"]
        cells: tuple[str, ...] = (
            f"{n}",
            f"{res['taskservers']}",
            f"{fl['round_median_s']:.3f} s" if fl else "-",
            f"{res['connect']['all_online_s']:.1f} s",
        )
        cells += tuple(
            f"{summ[s]['median_s']:.3f}" if s in summ else "-" for s in suite["scenarios"]
        )
        step = summ.get("step")
        barrier = step["barrier_median_s"] if step else None
        cells += (
            f"{barrier:.3f} s" if barrier is not None else "-",
            f"{barrier / fl['round_median_s']:.2f}x" if barrier is not None and fl else "-",
            f"{barrier / ft['round_median_s']:.2f}x" if barrier is not None and ft else "-",
            f"{step['paired_ratio_median']:.2f}x" if step and step["paired_ratio_median"] else "-",
            f"{res['agents'] / barrier:.0f}" if barrier else "-",
            f"{res['ns_rss_mib']['after_runs']:.0f} ({res['ns_rss_mib']['peak']:.0f})",
            f"{res['ts_kib_per_agent']:.1f}",
            "yes" if all(v["all_ok"] for v in summ.values()) else "NO",
        )
        rows.append(cells)
    lines.append(_table(rows))
    lines.append("")
    lines.append(
        "floor: bare websockets + msgpack, one message to each of N connections and every reply "
        "back (bench/floor.py); step: a one-step server job, run.start until the run's end "
        "(barrier released, every result stored); step barrier: on the NS's clock, from the run's "
        "creation to the barrier's release (the next step's start); job3 / client3: three noop steps; "
        "results/s: N / step barrier; TS KiB/agent: growth of every TS's RSS while the N connect, / N"
    )
    for res in suite["results"]:
        lines.append("")
        c = res["connect"]
        lines.append(
            f"N={res['agents']}, {res['taskservers']} TS: connected {c['agents_connected_s']:.1f} s, "
            f"online at the NS {c['all_online_s']:.1f} s, per TS {c['per_taskserver']}, connect CPU "
            + " / ".join(f"{k} {c['cpu_s'][k]:.1f}" for k in ("ns", "ts", "bench", "others"))
            + " s"
        )
        idle = res.get("idle_cpu_pct")
        if idle:
            lines.append(
                "  idle (connected, nothing run): CPU "
                + " / ".join(f"{k} {idle[k]:.1f}" for k in ("ns", "ts", "bench", "others"))
                + " % of one CPU"
            )
        for s, v in res["summary"].items():
            cpu = v["cpu_median_s"]
            lines.append(
                f"  {s}: median {v['median_s']:.3f} s (min {v['min_s']:.3f}, max {v['max_s']:.3f})"
                + (
                    f", barriers released at {v['barrier_median_s']:.3f} s"
                    if v["barrier_median_s"] is not None
                    else ""
                )
                + ", "
                f"{v['rows']} rows, {v['events_per_run']:.0f} watch changes, CPU per run NS "
                f"{cpu['ns']:.2f} / TS {cpu['ts']:.2f} / bench {cpu['bench']:.2f} / others "
                f"{cpu['others']:.2f} s" + ("" if v["all_ok"] else f", {v['not_succeeded']} NOT OK")
            )
            if v.get("paired_floor_median_s"):
                runs = res["scenarios"][s]
                lines.append(
                    "    floor round just before each run: "
                    + ", ".join(f"{r['paired_floor_s']:.3f}" for r in runs)
                    + f" s (median {v['paired_floor_median_s']:.3f})"
                    + (
                        "; barrier / that round: "
                        + ", ".join(f"{r['barrier_s'] / r['paired_floor_s']:.2f}x" for r in runs)
                        + f" (median {v['paired_ratio_median']:.2f}x)"
                        if v["paired_ratio_median"] and s == "step"  # job3: three barriers
                        else ""
                    )
                    + "; its CPU server / clients "
                    + f"{statistics.median(r['paired_floor_cpu_s']['server'] for r in runs):.2f} / "
                    + f"{statistics.median(r['paired_floor_cpu_s']['clients'] for r in runs):.2f} s"
                )
            if "bench_gc_s" in v:
                lines.append(
                    "    bench process in the garbage collector per run: "
                    + ", ".join(f"{t:.3f}" for t in v["bench_gc_s"])
                    + f" s ({v['bench_full_gcs']} full collections in all)"
                )
            if cpu["others"] > 0.1 * (cpu["ns"] + cpu["ts"] + cpu["bench"]):
                lines.append("    WARNING: other processes were busy during these runs")
        for k, r in res["rss_kib"].items():
            lines.append(
                f"  RSS {k}: before {r['before'] / 1024:.0f}, after connect "
                f"{r['after_connect'] / 1024:.0f}, after runs {r['after_runs'] / 1024:.0f}, "
                f"peak {r['peak'] / 1024:.0f} MiB"
            )
        for name, problems in res.get("server_log_problems", {}).items():
            if problems:
                lines.append(f"  {name} log warnings/errors: {problems}")
        for which, prof in res.get("profiles", {}).items():
            lines.append(
                f"  py-spy profile of the {which.upper()} ({prof['phase']} phase, "
                f"{prof['samples']} samples, raw stacks {prof['raw']})"
            )
            top = [("incl %", "function")] + [
                (f"{f['percent']:.1f}", f["function"]) for f in prof["top_inclusive"]
            ]
            lines.append(_table(top))
    floors = [*suite["floors"].items(), *suite.get("floors_tlsio", {}).items()]
    for n, fl in floors:
        lines.append("")
        split = (
            f" (median before the runs {fl['round_median_before_s']:.3f} s, after"
            f" {fl['round_median_after_s']:.3f} s)"
            if "round_median_after_s" in fl
            else ""
        )
        lines.append(
            f"floor N={n} ({fl['transport']}): rounds "
            + ", ".join(f"{t:.3f}" for t in fl["rounds_s"])
            + f" s{split}; connect {fl['connect_s']:.1f} s; server RSS {fl['server_rss_per_conn_kib']:.1f}"
            f" KiB per connection; CPU per round server {fl.get('cpu_server_s', 0):.2f} /"
            f" clients {fl.get('cpu_clients_s', 0):.2f} s"
        )
    return "\n".join(lines)


def pool(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One floor from the rounds measured before taskfleet's runs and those after them."""
    rounds = [*before["rounds_s"], *after["rounds_s"]]
    return {
        **before,
        "rounds_s": rounds,
        "round_median_s": statistics.median(rounds),
        "round_median_before_s": before["round_median_s"],
        "round_median_after_s": after["round_median_s"],
        "connect_s": max(before["connect_s"], after["connect_s"]),
        "cpu_server_s": (before["cpu_server_s"] + after["cpu_server_s"]) / 2,
        "cpu_clients_s": (before["cpu_clients_s"] + after["cpu_clients_s"]) / 2,
    }


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=_ints, default=[1000], help="N, or a list: 1000,5000,10000")
    p.add_argument(
        "--taskservers", type=_ints, default=[2], help="TS processes, or a list: 1,2 (default 2)"
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per scenario (and floor rounds)")
    p.add_argument(
        "--scenarios",
        type=lambda t: t.split(","),
        default=list(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    p.add_argument(
        "--no-paired-floor",
        dest="paired_floor",
        action="store_false",
        help="do not keep a floor connected through taskfleet's runs (by default a floor round is"
        " timed just before each run: barrier/floor(paired))",
    )
    p.add_argument("--json-out", help="also write every figure as JSON to this file")
    p.add_argument("--connect-timeout", type=float, default=600.0, help="seconds")
    p.add_argument("--run-timeout", type=float, default=600.0, help="seconds, per run")
    p.add_argument("--pause-s", type=float, default=1.0, help="pause before each run")
    p.add_argument(
        "--idle-s",
        type=float,
        default=20.0,
        help="seconds the connected fleet sits idle, for its CPU at rest (one keepalive cycle);"
        " 0 skips",
    )
    p.add_argument("--backoff-initial-s", type=float, default=1.0)
    p.add_argument("--backoff-max-s", type=float, default=10.0)
    p.add_argument(
        "--profile",
        action="append",
        choices=["ns", "ts", "agents"],
        default=[],
        help="attach py-spy to the NS or to ts-1 (repeatable)",
    )
    p.add_argument("--profile-phase", choices=["connect", "runs"], default="runs")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-dir", help="where py-spy's raw stacks go (default: the temp folder)")
    p.add_argument(
        "--agent-tasks",
        choices=["simulated", "real"],
        default="simulated",
        help="simulated (default): every agent runs each task as `taskfleet simulate` does, a"
        " no-op that ends inline, the fleet the issue's benchmark names; real: the task's own"
        " type (`noop`) through the agent's general task path (an asyncio task, the semaphore,"
        " held progress), a cost a real fleet pays on its endpoints, not on the servers. The"
        " servers store the same changes either way",
    )
    p.add_argument("--insecure", action="store_true", help="plain ws:// instead of TLS")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders (logs, DBs)")
    p.add_argument("--label", help="a note kept with the figures (e.g. which build was measured)")
    args = p.parse_args(argv)
    if args.no_floor:
        args.paired_floor = False
    if min(args.agents) < 1 or args.repeat < 1 or min(args.taskservers) < 1:
        p.error("--agents, --taskservers and --repeat must be at least 1")
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    return args


async def measure_floors(suite: dict[str, Any], n: int, args: argparse.Namespace) -> None:
    """Measure N's floor (and, over TLS, the floor on taskfleet's transport); a second
    measurement of the same N is pooled with the first (:func:`pool`)."""
    kinds = [("floors", "", "asyncio")] + (
        [] if args.insecure else [("floors_tlsio", " (tlsio)", "tlsio")]
    )
    for key, label, transport in kinds:
        print(f"bench: floor{label}, N={n} ...", flush=True)
        fl = await floor.measure(n, args.repeat, args.insecure, transport=transport)
        print(f"bench: floor{label} round {fl['round_median_s']:.3f} s", flush=True)
        earlier = suite[key].get(str(n))
        suite[key][str(n)] = fl if earlier is None else pool(earlier, fl)


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    loop.add_signal_handler(signal.SIGTERM, me.cancel)
    suite: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
            "calibration_before": calibrate(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "source": source_fingerprint(),
        "insecure": args.insecure,
        "agent_tasks": args.agent_tasks,
        "repeat": args.repeat,
        "scenarios": args.scenarios,
        "label": args.label,
        "floors": {},
        "floors_tlsio": {},
        "results": [],
    }
    for n in args.agents:
        if not args.no_floor:
            await measure_floors(suite, n, args)
        for k in args.taskservers:
            tmp = tempfile.mkdtemp(prefix="taskfleet-bench-")
            try:
                res = await bench(args, n, k, Path(tmp))
            finally:
                if args.keep:
                    print(f"bench: kept {tmp}", file=sys.stderr)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
            res["summary"] = summarise(res)
            suite["results"].append(res)
            print(render(suite), flush=True)  # so far: a long suite shows each result as it lands
            if args.json_out:
                with open(args.json_out, "w", encoding="utf-8") as fh:
                    json.dump(suite, fh, indent=2, sort_keys=True)
        if not args.no_floor:
            # Again after taskfleet's runs: this machine's speed drifts by a third within an
            # hour, so the floor is the median of the rounds before and after (both shown).
            await measure_floors(suite, n, args)
    suite["machine"]["calibration_after"] = calibrate()
    end = source_fingerprint()
    if end["sources_sha256"] != suite["source"]["sources_sha256"]:
        suite["source"]["changed_during_bench"] = end
    print(render(suite))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(suite, fh, indent=2, sort_keys=True)
        print(f"\nbench: figures written to {args.json_out}")
    if suite["source"].get("changed_during_bench"):
        return 1
    ok = all(v["all_ok"] for r in suite["results"] for v in r["summary"].values())
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = raise_nofile()
    if soft < max(args.agents) * 2 + 100:
        print(f"bench: warning: open-file limit {soft} may be short for {max(args.agents)} agents")
    configure_logging()
    heap.tune_gc(many_agents=True)  # as in `taskfleet simulate`: this process holds the N agents
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM
        return 143
    except (TimeoutError, RuntimeError) as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 2
    finally:
        _kill_leftovers()


if __name__ == "__main__":
    sys.exit(main())
