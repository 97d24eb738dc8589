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
import hashlib
import json
import logging
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from admin.client import AdminClient  # noqa: E402
from agent.agent import Agent  # noqa: E402
from protocol.states import TERMINAL  # noqa: E402

try:  # the trust model (keys, enrolment, TLS, admin tokens) landed with commit e72817d
    from agent.tls import ClientTrust  # noqa: E402
except ImportError:  # before it: one shared token (--token) for every role
    ClientTrust = None  # type: ignore[assignment,misc]
TRUST_MODEL = ClientTrust is not None

TS_NAME = "ts-1"
TASK_NAME = "bench-noop"
NOOP_TASK = f'name = "{TASK_NAME}"\ntype = "noop"\ntimeout_s = 600\n'
READY_TIMEOUT_S = 30.0
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
    timeout_s: float,
    t0: float,
) -> dict[str, float]:
    """Wait until every agent is connected to ts-1 and the NS lists it online there.

    Times count from ``t0``, when the first agent was started.
    """
    n = len(agents)
    first_seen: dict[str, float] = {}

    async def all_connected() -> bool:
        _check_agents(tasks)
        now = time.perf_counter() - t0
        for a in agents:
            if a.name not in first_seen and a.connected.is_set() and a.taskserver == TS_NAME:
                first_seen[a.name] = now
        return len(first_seen) >= n

    left = max(1.0, timeout_s - (time.perf_counter() - t0))
    await until(all_connected, f"{n} agents connected to {TS_NAME}", left, 0.05)
    t_connected = time.perf_counter() - t0

    async def all_online() -> bool:
        _check_agents(tasks)
        rows = await client.call("computers.list")
        online = sum(
            1
            for r in rows
            if r["online"] and r["taskserver"] == TS_NAME and r["name"].startswith("sim-")
        )
        return online >= n

    left = max(1.0, timeout_s - t_connected)
    await until(all_online, f"{n} agents online on {TS_NAME} at the NS", left, 0.1)
    t_online = time.perf_counter() - t0
    times = sorted(first_seen.values())
    return {
        "agents_connected_s": t_connected,
        "all_online_s": t_online,
        "half_connected_s": times[len(times) // 2] if times else 0.0,
    }


async def one_run(
    client: AdminClient, n: int, timeout_s: float, procs: dict[str, ServerProc]
) -> dict[str, Any]:
    cpu0 = {k: p.cpu_s() for k, p in procs.items()}
    bench_cpu0 = time.process_time()
    busy0 = machine_busy_s()
    t0 = time.perf_counter()
    started = await client.call("run.start", task=TASK_NAME, all=True)
    t_started = time.perf_counter() - t0
    run_id = int(started["run_id"])
    targets = int(started["targets"])
    done: set[int] = set()
    t_last: float | None = None
    final: dict[str, Any] = {}
    events = 0

    async def follow() -> None:
        nonlocal t_last, final, events
        async for kind, data in client.watch(run_id):
            if kind == "snapshot":
                done.update(i["id"] for i in data["instances"] if i["status"] in TERMINAL)
            elif kind == "instance":
                events += 1
                if data["state"] in TERMINAL:
                    done.add(data["instance_id"])
            elif kind == "run":
                final = data
            if t_last is None and len(done) >= targets:
                t_last = time.perf_counter() - t0

    await asyncio.wait_for(follow(), timeout_s)
    t_end = time.perf_counter() - t0
    cpu = {k: p.cpu_s() - cpu0[k] for k, p in procs.items()}
    cpu["bench"] = time.process_time() - bench_cpu0
    # CPU that other processes on this machine took during the run: they distort the figures.
    cpu["others"] = max(0.0, machine_busy_s() - busy0 - sum(cpu.values()))
    rss_after = {k: p.rss_kib() for k, p in procs.items()}
    instances = final.get("instances", [])
    statuses = Counter(i["status"] for i in instances)
    # Where the time went, on the NS's clock (every process runs on this machine): from the
    # run's creation to the first and last agent start, the last agent end, the run's end.
    phases: dict[str, float] | None = None
    created, ended = final.get("created_at"), final.get("ended_at")
    starts = [i["started_at"] for i in instances if i.get("started_at")]
    ends = [i["ended_at"] for i in instances if i.get("ended_at")]
    if created and ended and starts and ends:
        phases = {
            "first_agent_start_s": min(starts) - created,
            "last_agent_start_s": max(starts) - created,
            "last_agent_end_s": max(ends) - created,
            "run_ended_s": ended - created,
        }
    return {
        "run_id": run_id,
        "targets": targets,
        "status": final.get("status"),
        "statuses": dict(statuses),
        "succeeded": statuses.get("succeeded", 0),
        "ok": final.get("status") == "succeeded"
        and targets == n
        and statuses.get("succeeded", 0) == n,
        "start_call_s": t_started,
        # time of the last terminal instance event; the run's end if events were missed
        "last_result_s": t_last if t_last is not None else t_end,
        "watch_end_s": t_end,
        "server_s": (final["ended_at"] - final["created_at"])
        if final.get("ended_at") and final.get("created_at")
        else None,
        "phases": phases,
        "instance_events": events,
        "cpu_s": cpu,
        "rss_kib_after": rss_after,
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


async def bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    n = args.agents
    token = secrets.token_urlsafe(16)
    result: dict[str, Any] = {
        "agents": n,
        "repeat": args.repeat,
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    result["source"] = source_fingerprint()
    result["machine"]["calibration_before"] = calibrate()
    if args.label:
        result["label"] = args.label
    result["security"] = (
        ("plain ws:// (--insecure)" if args.insecure else "TLS, pinned fingerprint")
        + ", agents enrolled with keys"
        if TRUST_MODEL
        else "plain ws://, one shared token (before the trust model)"
    )
    ns_args = ["server", "--data", str(root / "ns"), "--listen", "127.0.0.1:0"]
    if not TRUST_MODEL:
        ns_args += ["--token", token]
    elif args.insecure:
        ns_args += ["--insecure"]
    ns = ServerProc("ns", ns_args, root / "ns.log")
    servers = [ns]
    tasks: list[asyncio.Task[None]] = []
    profilers: dict[str, Profiler] = {}
    try:
        await ns.start()
        ts_args = [
            "taskserver", "--server", ns.url, "--data", str(root / TS_NAME),
            "--listen", "127.0.0.1:0", "--name", TS_NAME,
        ]  # fmt: skip
        agent_auth: dict[str, Any]
        if TRUST_MODEL:
            admin_token = (root / "ns" / "admin.token").read_text().strip()
            assert ClientTrust is not None
            trust = (
                ClientTrust(insecure=True)
                if args.insecure
                else ClientTrust(fingerprint=ns.fingerprint)
            )
            client = AdminClient(ns.url, admin_token, trust, identity="bench")
        else:
            client = AdminClient(ns.url, token, identity="bench")  # type: ignore[call-arg]
        async with client:
            if TRUST_MODEL:
                created = await client.call("tokens.create", ttl_s=86_400, uses=n + 10)
                enrol = created["token"]
                ts_args += ["--enrol-token", enrol]
                ts_args += (
                    ["--insecure"] if args.insecure else ["--server-fingerprint", ns.fingerprint]
                )
                agent_auth = {"trust": trust, "enrol_token": enrol}
            else:
                ts_args += ["--token", token]
                agent_auth = {"token": token}
            ts = ServerProc(TS_NAME, ts_args, root / f"{TS_NAME}.log")
            servers.append(ts)
            await ts.start()

            async def ts_online() -> bool:
                rows = await client.call("taskservers.list")
                return any(r["name"] == TS_NAME and r["online"] for r in rows)

            await until(ts_online, f"{TS_NAME} connected to the NS", 30, 0.05)
            await client.call("task.add", text=NOOP_TASK, filename="bench-noop.toml")
            await asyncio.sleep(0.5)
            rss0 = {"ns": ns.rss_kib(), "ts": ts.rss_kib(), "bench": _rss_kib("self")}
            fds0 = {"ns": ns.fds(), "ts": ts.fds()}
            procs = {"ns": ns, "ts": ts}

            async def start_profiles(phase: str) -> None:
                if args.profile_phase != phase:
                    return
                py_spy = find_py_spy()
                if py_spy is None:
                    print("bench: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
                    return
                for which in args.profile:
                    out_dir = Path(args.profile_dir or root)
                    out_dir.mkdir(parents=True, exist_ok=True)
                    out = out_dir / f"profile-{which}-{phase}.txt"
                    p = Profiler(py_spy, procs[which], out, args.rate)
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
                    **agent_auth,
                )
                for i in range(n)
            ]
            print(f"bench: NS {ns.url} (pid {ns.pid}), {TS_NAME} {ts.url} (pid {ts.pid})")
            print(f"bench: starting {n} agents ...", flush=True)
            cpu0 = {k: p.cpu_s() for k, p in procs.items()}
            bench_cpu0 = time.process_time()
            busy0 = machine_busy_s()
            t_spawn = time.perf_counter()

            async def spawn_all() -> None:
                for i, a in enumerate(agents):
                    tasks.append(asyncio.create_task(a.run(), name=a.name))
                    if args.spread_s > 0:
                        await asyncio.sleep(
                            t_spawn + args.spread_s * (i + 1) / n - time.perf_counter()
                        )

            spawner = asyncio.create_task(spawn_all())
            try:
                connect = await connect_fleet(client, agents, tasks, args.connect_timeout, t_spawn)
            finally:
                spawner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await spawner
            connect_cpu = {k: p.cpu_s() - cpu0[k] for k, p in procs.items()}
            connect_cpu["bench"] = time.process_time() - bench_cpu0
            connect_cpu["others"] = max(0.0, machine_busy_s() - busy0 - sum(connect_cpu.values()))
            await stop_profiles()
            result["connect"] = {**connect, "cpu_s": connect_cpu}
            print(
                f"bench: {n} agents online on {TS_NAME} after {connect['all_online_s']:.2f} s",
                flush=True,
            )
            await asyncio.sleep(0.5)
            rss1 = {"ns": ns.rss_kib(), "ts": ts.rss_kib(), "bench": _rss_kib("self")}
            result["rss_kib"] = {
                k: {
                    "before": rss0[k],
                    "after_connect": rss1[k],
                    "per_agent": (rss1[k] - rss0[k]) / n,
                }
                for k in rss0
            }
            result["open_fds"] = {
                k: {"before": fds0[k], "after_connect": p.fds()}
                for k, p in (("ns", ns), ("ts", ts))
            }
            events_after_connect = Counter(EVENTS)

            await start_profiles("runs")
            runs: list[dict[str, Any]] = []
            for rep in range(args.repeat):
                if rep and args.pause_s:
                    await asyncio.sleep(args.pause_s)
                r = await one_run(client, n, args.run_timeout, procs)
                runs.append(r)
                print(
                    f"bench: run {rep + 1}/{args.repeat} (id {r['run_id']}): "
                    f"last result {r['last_result_s']:.3f} s, watch end {r['watch_end_s']:.3f} s, "
                    f"{r['succeeded']}/{n} succeeded",
                    flush=True,
                )
            await stop_profiles()
            result["runs"] = runs
            for k, p in procs.items():
                result["rss_kib"][k]["after_runs"] = p.rss_kib()
            result["rss_kib"]["bench"]["after_runs"] = _rss_kib("self")
            result["agent_events"] = {
                "connect_phase": dict(events_after_connect),
                "run_phase": dict(Counter(EVENTS) - events_after_connect),
            }
    except Exception:
        for s in servers:
            if s.proc is not None:
                print(s.tail(), file=sys.stderr)
        raise
    finally:
        for p in profilers.values():
            await _end(p.proc, signal.SIGINT, 10)
        await stop_agents(tasks)
        for s in reversed(servers):
            await s.stop()
    result["server_log_problems"] = {s.name: dict(s.log_problems()) for s in servers}
    result["machine"]["calibration_after"] = calibrate()
    end = source_fingerprint()
    if end["sources_sha256"] != result["source"]["sources_sha256"]:
        result["source"]["changed_during_bench"] = end
    return result


# -- the report --------------------------------------------------------------------------------


def _median_phases(runs: list[dict[str, Any]]) -> dict[str, float]:
    with_phases = [r["phases"] for r in runs if r["phases"]]
    if not with_phases:
        return {}
    return {k: statistics.median(p[k] for p in with_phases) for k in with_phases[0]}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    runs = result.get("runs", [])
    n = result["agents"]
    if not runs:
        return {}
    last = [r["last_result_s"] for r in runs]
    end = [r["watch_end_s"] for r in runs]
    server = [r["server_s"] for r in runs if r["server_s"] is not None]
    med = statistics.median(last)
    cpu_keys = runs[0]["cpu_s"].keys()
    return {
        "last_result_median_s": med,
        "last_result_min_s": min(last),
        "last_result_max_s": max(last),
        "watch_end_median_s": statistics.median(end),
        "server_median_s": statistics.median(server) if server else None,
        "results_per_s": n / med if med > 0 else None,
        "cpu_median_s": {k: statistics.median(r["cpu_s"][k] for r in runs) for k in cpu_keys},
        "phases_median_s": _median_phases(runs),
        "instance_events_per_run": statistics.median(r["instance_events"] for r in runs),
        "all_ok": all(r["ok"] for r in runs),
        "lost_or_failed": sum(n - r["succeeded"] for r in runs),
    }


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


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    m = result["machine"]
    c = result["connect"]
    rss = result["rss_kib"]
    n = result["agents"]
    lines = [
        "",
        f"taskfleet benchmark: {n} agents, {result['repeat']} noop runs "
        f"(NS + 1 TS as processes, agents in the bench process)",
        f"machine: {m['nproc']} CPUs, Python {m['python']}, {m['platform']}",
        f"CPU speed (plain Python loop, M steps/s, before / after): "
        f"{m.get('calibration_before', 0):.1f} / {m.get('calibration_after', 0):.1f}",
        f"command: {result['command']}",
        _source_line(result["source"]),
        f"security: {result.get('security', '?')}",
        *([f"label: {result['label']}"] if result.get("label") else []),
        "",
    ]
    cpu = s["cpu_median_s"]
    rows = [
        ("metric", "value"),
        ("agents (N)", f"{n}"),
        ("connect + register: all N online on ts-1 at the NS", f"{c['all_online_s']:.2f} s"),
        ("  all N connected to ts-1 (agent side)", f"{c['agents_connected_s']:.2f} s"),
        ("  half connected (agent side)", f"{c['half_connected_s']:.2f} s"),
        (
            "  CPU while connecting: NS / TS / bench (agents + admin) / others",
            " / ".join(f"{c['cpu_s'][k]:.2f}" for k in ("ns", "ts", "bench", "others")) + " s",
        ),
        (
            f"run.start -> last result stored (median of {len(result['runs'])})",
            f"{s['last_result_median_s']:.3f} s "
            f"(min {s['last_result_min_s']:.3f}, max {s['last_result_max_s']:.3f})",
        ),
        ("run.start -> watch returns the ended run (median)", f"{s['watch_end_median_s']:.3f} s"),
        (
            "run duration stored by the NS (ended_at - created_at, median)",
            f"{s['server_median_s']:.3f} s" if s["server_median_s"] is not None else "-",
        ),
        ("results stored per second (N / median)", f"{s['results_per_s']:.0f} /s"),
    ]
    ph = s["phases_median_s"]
    if ph:
        rows += [
            ("  run created -> first agent starts (median)", f"{ph['first_agent_start_s']:.3f} s"),
            ("  run created -> last agent starts (median)", f"{ph['last_agent_start_s']:.3f} s"),
            ("  run created -> last agent finishes (median)", f"{ph['last_agent_end_s']:.3f} s"),
        ]
    rows += [
        (
            "watch events per run (instance changes sent to the admin)",
            f"{s['instance_events_per_run']:.0f}",
        ),
        (
            "CPU per run, median: NS / TS / bench (agents + admin) / others",
            f"{cpu['ns']:.2f} / {cpu['ts']:.2f} / {cpu['bench']:.2f} / {cpu['others']:.2f} s",
        ),
    ]
    for k, label in (("ns", "NS"), ("ts", "TS"), ("bench", "bench process (N agents)")):
        r = rss[k]
        rows.append(
            (
                f"{label} RSS before / after connect / after runs",
                f"{r['before'] / 1024:.1f} / {r['after_connect'] / 1024:.1f} / "
                f"{r['after_runs'] / 1024:.1f} MiB",
            )
        )
        rows.append((f"{label} RSS per connected agent", f"{r['per_agent']:.1f} KiB"))
        fds = result.get("open_fds", {}).get(k)
        if fds:
            rows.append(
                (
                    f"{label} open files before / after connect",
                    f"{fds['before']} / {fds['after_connect']}",
                )
            )
    rows.append(
        (
            "every instance succeeded in every run",
            "yes" if s["all_ok"] else f"NO ({s['lost_or_failed']} lost or failed)",
        )
    )
    lines.append(_table(rows))
    ours = cpu["ns"] + cpu["ts"] + cpu["bench"]
    if cpu["others"] > 0.1 * ours:
        lines.append(
            f"WARNING: other processes took {cpu['others']:.2f} CPU-s per run (ours: {ours:.2f}): "
            "the machine was not quiet, the times above are pessimistic"
        )
    lines.append("")
    per_run = [
        (
            "run",
            "id",
            "last result s",
            "watch end s",
            "NS-stored s",
            "ok",
            "CPU NS/TS/bench/others s",
        )
    ]
    for i, r in enumerate(result["runs"], 1):
        per_run.append(
            (
                f"{i}",
                f"{r['run_id']}",
                f"{r['last_result_s']:.3f}",
                f"{r['watch_end_s']:.3f}",
                f"{r['server_s']:.3f}" if r["server_s"] is not None else "-",
                f"{r['succeeded']}/{n}",
                "/".join(f"{r['cpu_s'][k]:.2f}" for k in ("ns", "ts", "bench", "others")),
            )
        )
    lines.append(_table(per_run))
    ev = result.get("agent_events", {})
    conn_ev = ev.get("connect_phase", {})
    reconnects = conn_ev.get("info:connected", 0) - n
    lines.append("")
    lines.append(
        f"agent log events while connecting: {conn_ev.get('info:connected', 0)} connected "
        f"({max(reconnects, 0)} more than N), "
        f"{conn_ev.get('info:connection_lost', 0)} connection_lost"
    )
    run_ev = {k: v for k, v in ev.get("run_phase", {}).items()}
    if run_ev:
        lines.append(f"agent log events during runs: {run_ev}")
    for name, problems in result.get("server_log_problems", {}).items():
        if problems:
            lines.append(f"{name} log warnings/errors: {problems}")
    for which, prof in result.get("profiles", {}).items():
        lines.append("")
        lines.append(
            f"py-spy profile of the {which.upper()} ({prof['phase']} phase, "
            f"{prof['samples']} samples, raw stacks {prof['raw']})"
        )
        if prof["threads"]:
            lines.append("  samples per thread: " + ", ".join(
                f"{t} {c}" for t, c in prof["threads"].items()
            ))  # fmt: skip
        top = [("own %", "function")] + [
            (f"{f['percent']:.1f}", f["function"]) for f in prof["top_own"]
        ]
        lines.append(_table(top))
        lines.append("")
        top = [("incl %", "function")] + [
            (f"{f['percent']:.1f}", f["function"]) for f in prof["top_inclusive"]
        ]
        lines.append(_table(top))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000, help="number of simulated agents (N)")
    p.add_argument("--repeat", type=int, default=5, help="number of noop runs (R)")
    p.add_argument("--json-out", help="also write every figure as JSON to this file")
    p.add_argument("--connect-timeout", type=float, default=300.0, help="seconds")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds, per run")
    p.add_argument("--pause-s", type=float, default=1.0, help="pause between runs")
    p.add_argument(
        "--spread-s", type=float, default=0.0, help="start the agents over this many seconds"
    )
    p.add_argument("--backoff-initial-s", type=float, default=1.0)
    p.add_argument("--backoff-max-s", type=float, default=10.0)
    p.add_argument(
        "--profile",
        action="append",
        choices=["ns", "ts"],
        default=[],
        help="attach py-spy to this server (repeatable)",
    )
    p.add_argument("--profile-phase", choices=["connect", "runs"], default="runs")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-dir", help="where py-spy's raw stacks go (default: the temp folder)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plain ws:// instead of TLS (the trust model only; for comparison)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, DBs)")
    p.add_argument("--label", help="a note kept with the figures (e.g. which build was measured)")
    args = p.parse_args(argv)
    if args.agents < 1 or args.repeat < 1:
        p.error("--agents and --repeat must be at least 1")
    return args


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    loop.add_signal_handler(signal.SIGTERM, me.cancel)
    tmp = tempfile.mkdtemp(prefix="taskfleet-bench-")
    try:
        result = await bench(args, Path(tmp))
    finally:
        if args.keep:
            print(f"bench: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["summary"] = summarise(result)
    if args.keep:
        result["workdir"] = tmp
    print(render(result))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, sort_keys=True)
        print(f"\nbench: figures written to {args.json_out}")
    if result["source"].get("changed_during_bench"):
        return 1
    return 0 if result["summary"].get("all_ok") else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = raise_nofile()
    if soft < args.agents * 2 + 100:
        print(f"bench: warning: open-file limit {soft} may be short for {args.agents} agents")
    configure_logging()
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
