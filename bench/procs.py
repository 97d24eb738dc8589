"""The bench's child processes and what it reads of them and of this machine (``bench/run.py``).

``ServerProc`` starts an NS or a TS (``python -m admin server|taskserver``) and reads its CPU,
memory and log; ``Profiler`` attaches ``py-spy`` to a process and sums up its stacks. Every child
is killed on exit: by the caller's ``finally``, by an ``atexit`` hook (``_kill_leftovers``), and
by ``PR_SET_PDEATHSIG`` should the bench itself be killed. Also the CPU-speed calibration, the
``/proc`` readings (machine CPU, RSS and its peak) and the open-file limit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import re
import resource
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The checkout: put on the children's ``PYTHONPATH``."""
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


def run_main(main: Coroutine[Any, Any, int]) -> int:
    """A bench's ``main``: run its coroutine to its exit code; Ctrl-C is 130, SIGTERM 143, a
    timeout or a failed step one line and 2; every child process is killed however it ends."""
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM
        return 143
    except (TimeoutError, RuntimeError) as exc:
        print(f"bench: failed: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        _kill_leftovers()


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
        self.admin_url = ""  # the NS's --admin-port listener, when it has one
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
                self.admin_url = fields.get("admin_url", "")
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


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
