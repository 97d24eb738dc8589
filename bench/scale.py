"""The cost curve up to 100,000 agents: one NS, K TS processes, the agents in several processes.

    python bench/scale.py --agents 1000,10000,30000,100000 --taskservers 6 --json-out scale.json

For each N: the floor (``bench/floor.py``, its N clients spread over as many processes as the
agents and its server side over as many processes as there are TS), then an NS (with an admin
port) and K TS as real processes (``bench/fleet.py``'s pieces), N agents as ``taskfleet
simulate`` spread over ``ceil(N / --agents-per-process)`` processes (at least two: one process
may hold 20,000 open files here), and:

1. connect: from starting the agents until the NS counts all N online (``fleet.summary``);
2. ``--repeat`` one-step server jobs (the barrier, ``bench-step``), each checked in the NS's
   database: one row per computer and step, every row ``succeeded`` (nothing lost or doubled);
3. backpressure: one more step while one TS is paused and resumed (SIGSTOP / SIGCONT) for the
   whole step, the queues of every TS sampled from its ``/metrics`` and the NS's RSS meanwhile,
   and the same database check;
4. the reconnect storm (``--storm``): the NS stopped and started again on the same ports, an
   administrator's ``fleet.summary`` timed over the admin port every ``--probe-every-s`` until
   all N are online again (latency max and p99), then one more checked step.

Memory: the NS's resident set after the runs and at peak; TS KiB per agent: growth of all TS
processes' RSS while the N connect, / N. It prints one table (the cost curve) and writes
``--json-out``. Every child process ends with this one (``bench/procs.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/scale.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

from admin.client import AdminClient  # noqa: E402
from bench import floor  # noqa: E402
from bench.fleet import one_run, save_documents, start_taskservers, until  # noqa: E402
from bench.procs import (  # noqa: E402
    CLK_TCK,
    ServerProc,
    _end,
    _hwm_kib,
    _rss_kib,
    _spawn,
    calibrate,
    raise_nofile,
    run_main,
)
from bench.report import render_scale as render  # noqa: E402
from bench.run import _ints, configure_logging, source_fingerprint  # noqa: E402
from runtime.tls import ClientTrust  # noqa: E402

STEP = "bench-step"
FLOOR_OPENING_AT_ONCE = 256
"""Handshakes at once in each floor client process: 12,500 at once from each of eight processes
outlasted the clients' 120 s timeout on the busy machine and started again from nothing."""


# -- the simulated agents: `taskfleet simulate` in P processes ------------------------------


class Simulate:
    """``python -m admin simulate`` (worker 0, which starts workers 1..P-1), its processes' CPU
    and memory read from ``/proc`` (the workers are worker 0's children)."""

    def __init__(
        self, url: str, n: int, processes: int, token_file: Path, fingerprint: str, rate: float
    ):
        self.argv = [
            sys.executable, "-m", "admin", "simulate", "--server", url, "--agents", str(n),
            "--processes", str(processes), "--enrol-token-file", str(token_file),
            "--start-rate", str(rate),
            *(["--server-fingerprint", fingerprint] if fingerprint else ["--insecure"]),
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, log: Path) -> None:
        self.proc = await _spawn(self.argv, log, asyncio.subprocess.DEVNULL)

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.returncode is not None:
            return []
        found = [self.proc.pid]
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{task}/children", encoding="ascii") as fh:
                    found += [int(p) for p in fh.read().split()]
        return found

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return total

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, RuntimeError):
                total += _rss_kib(pid)
        return total

    def check(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise RuntimeError(f"taskfleet simulate exited ({self.proc.returncode})")

    async def stop(self) -> None:
        await _end(self.proc, signal.SIGTERM, 60)


# -- what the NS stored ---------------------------------------------------------------------


def stored(db_path: Path, run_id: int) -> dict[str, Any]:
    """Rows of one run in the NS's database, per step: how many, on how many computers, and
    how many succeeded. Every result stored once: rows == computers == succeeded == N."""
    uri = f"file:{db_path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as db:
        rows = db.execute(
            "SELECT step, count(*), count(DISTINCT computer), sum(status='succeeded')"
            " FROM instances WHERE run_id=? GROUP BY step",
            (run_id,),
        ).fetchall()
    return {
        str(step): {"rows": n, "computers": c, "succeeded": int(ok or 0)} for step, n, c, ok in rows
    }


def stored_once(per_step: dict[str, Any], n: int) -> bool:
    """The client step of ``bench-step`` (the one with N rows) has one succeeded row per
    computer, and no step has more rows than computers."""
    full = [v for v in per_step.values() if v["computers"] == n]
    return len(full) >= 1 and all(
        v["rows"] == v["computers"] == v["succeeded"] for v in per_step.values()
    )


# -- backpressure: one TS paused and resumed through a step -------------------------------


async def pause_cycles(pid: int, stop: asyncio.Event, paused_s: float, running_s: float) -> int:
    """SIGSTOP / SIGCONT ``pid`` until ``stop``; the number of pauses. Always resumed."""
    pauses = 0
    try:
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            pauses += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), paused_s)
            os.kill(pid, signal.SIGCONT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), running_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return pauses


def _metrics_url(ts_url: str) -> str:
    return ts_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).rstrip("/") + (
        "/metrics"
    )


def scrape_queues(url: str) -> dict[str, float]:
    """``taskfleet_relay_queue_depth`` from one TS's ``/metrics`` (loopback: no token).

    The TS's certificate is not checked: a read of figures over loopback in a bench."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:  # noqa: S310 (loopback)
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("taskfleet_relay_queue_depth{"):
            labels, _, value = line.rpartition(" ")
            queue = labels.split('queue="', 1)[1].split('"', 1)[0]
            out[queue] = float(value)
    return out


async def sample_queues(
    ts: dict[str, ServerProc], ns: ServerProc, stop: asyncio.Event, every_s: float
) -> dict[str, Any]:
    """The largest depth of each queue of each TS, and the NS's largest RSS, until ``stop``."""
    peaks: dict[str, dict[str, float]] = {name: {} for name in ts}
    ns_peak = 0
    samples = 0
    missed = 0
    while not stop.is_set():
        ns_peak = max(ns_peak, ns.rss_kib())
        for name, proc in ts.items():
            try:
                depths = await asyncio.to_thread(scrape_queues, _metrics_url(proc.url))
            except OSError:
                missed += 1  # a paused TS does not answer: read it at its next resume
                continue
            samples += 1
            for q, v in depths.items():
                peaks[name][q] = max(peaks[name].get(q, 0.0), v)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    return {"ts_queue_peaks": peaks, "ns_rss_peak_mib": ns_peak / 1024, "samples": samples,
            "missed": missed}  # fmt: skip


# -- the admin beside the reconnect storm ----------------------------------------------------


class Prober:
    """``fleet.summary`` every ``every_s`` over the admin port, each call timed; reconnects
    when the NS goes away. ``failures`` cycles 1..100 so that most answers are computed, not the
    NS's 2-second cache of the previous one."""

    def __init__(self, url: str, token: str, trust: ClientTrust, every_s: float):
        self.url, self.token, self.trust, self.every_s = url, token, trust, every_s
        self.latencies: list[float] = []
        self.errors = 0
        self.online = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        i = 0
        while True:
            try:
                async with AdminClient(self.url, self.token, self.trust, identity="probe") as c:
                    while True:
                        i += 1
                        t0 = time.perf_counter()
                        summary = await asyncio.wait_for(
                            c.call("fleet.summary", failures=1 + i % 100), 30
                        )
                        self.latencies.append(time.perf_counter() - t0)
                        self.online = int(summary["online"])
                        await asyncio.sleep(self.every_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # the NS restarting: connect again
                self.errors += 1
                await asyncio.sleep(self.every_s)

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        lat = sorted(self.latencies)
        return {
            "calls": len(lat),
            "errors": self.errors,
            "max_s": lat[-1] if lat else None,
            "p99_s": lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] if lat else None,
            "median_s": statistics.median(lat) if lat else None,
            "over_1s": sum(1 for t in lat if t > 1.0),
        }


# -- one N -------------------------------------------------------------------------------------


def _ns_args(root: Path, listen: str, admin_port: int, insecure: bool) -> list[str]:
    args = ["server", "--data", str(root / "ns"), "--listen", listen]
    args += ["--admin-port", str(admin_port)]
    return args + (["--insecure"] if insecure else [])


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


async def online(client: AdminClient) -> int:
    return int((await client.call("fleet.summary"))["online"])


async def checked_step(
    client: AdminClient, procs: dict[str, Any], db: Path, n: int, timeout_s: float
) -> dict[str, Any]:
    r = await one_run(client, STEP, timeout_s, procs, rows=False)
    r["stored"] = stored(db, r["run_id"])
    r["stored_once"] = stored_once(r["stored"], n)
    r["ok"] = r["ok"] and r["stored_once"]
    print(
        f"scale: step run {r['run_id']}: barrier {r['barrier_s']:.3f} s, end {r['end_s']:.3f} s,"
        f" {r['statuses']}, stored {r['stored']}",
        flush=True,
    )
    return r


async def fleet_at(args: argparse.Namespace, n: int, root: Path, res: dict[str, Any]) -> None:
    """NS, K TS, N simulated agents: connect, steps, backpressure, storm; the figures go into
    ``res`` as they are taken, so a failure late in the sequence keeps the earlier ones."""
    k = args.taskservers
    procs_n = agent_processes(n, args.agents_per_process)
    res.update(taskservers=k, agent_processes=procs_n)
    ns = ServerProc("ns", _ns_args(root, "127.0.0.1:0", 0, args.insecure), root / "ns.log")
    servers: list[ServerProc] = [ns]
    sim: Simulate | None = None
    ts_names = [f"ts-{i + 1}" for i in range(k)]
    try:
        await ns.start()
        token = (root / "ns" / "admin.token").read_text().strip()
        trust = (
            ClientTrust(insecure=True) if args.insecure else ClientTrust(fingerprint=ns.fingerprint)
        )
        async with AdminClient(ns.admin_url, token, trust, identity="bench") as client:
            enrol = (await client.call("tokens.create", ttl_s=86_400, uses=n + 10))["token"]
            token_file = root / "enrol.token"
            token_file.write_text(enrol)
            token_file.chmod(0o600)
            await start_taskservers(client, ns, root, ts_names, args.insecure, servers)
            ts = {s.name: s for s in servers[1:]}
            await save_documents(client)
            await asyncio.sleep(0.5)
            rss0 = {s.name: s.rss_kib() for s in servers}
            sim = Simulate(ns.url, n, procs_n, token_file, ns.fingerprint, args.start_rate)
            procs: dict[str, Any] = {"ns": ns, **ts, "sim": sim}
            cpu0 = {name: p.cpu_s() for name, p in procs.items()}
            print(f"scale: N={n}: {k} TS, agents in {procs_n} processes ...", flush=True)
            t0 = time.perf_counter()
            await sim.start(root / "simulate.log")

            last = [0.0]

            async def all_online() -> bool:
                sim.check()
                count = await online(client)
                if time.perf_counter() - last[0] > 60:  # progress, for a connect of many minutes
                    last[0] = time.perf_counter()
                    print(
                        f"scale: N={n}: {count} online after {last[0] - t0:.0f} s, NS RSS"
                        f" {ns.rss_kib() / 1024:.0f} MiB",
                        flush=True,
                    )
                return count >= n

            await until(all_online, f"{n} agents online", args.connect_timeout, 1.0)
            res["connect_s"] = time.perf_counter() - t0
            res["connect_cpu_s"] = {name: p.cpu_s() - cpu0[name] for name, p in procs.items()}
            print(f"scale: N={n}: all online after {res['connect_s']:.1f} s", flush=True)
            await asyncio.sleep(args.settle_s)  # the servers settle their heaps when quiet
            rss1 = {s.name: s.rss_kib() for s in servers}
            res["ts_kib_per_agent"] = sum(rss1[t] - rss0[t] for t in ts_names) / n
            res["sim_kib_per_agent"] = sim.rss_kib() / n
            print(
                f"scale: N={n}: TS {res['ts_kib_per_agent']:.1f} KiB per agent, NS RSS"
                f" {rss1['ns'] / 1024:.0f} MiB, agents' processes {res['sim_kib_per_agent']:.1f}"
                " KiB per agent",
                flush=True,
            )
            db = root / "ns" / "server.db"
            res["steps"] = [
                await checked_step(client, procs, db, n, args.run_timeout)
                for _ in range(args.repeat)
            ]
            res["ns_rss_mib"] = {"after_runs": ns.rss_kib() / 1024, "peak": _hwm_kib(ns.pid) / 1024}
            res["ts_rss_mib"] = {t: ts[t].rss_kib() / 1024 for t in ts_names}
            print(f"scale: N={n}: NS RSS MiB {res['ns_rss_mib']}", flush=True)
            if args.slow_ts:
                res["backpressure"] = await backpressure(args, client, procs, ts, ns, db, n)
            for kind in args.storm_kinds if args.storm else []:
                # "ns": the NS alone restarts, the agents stay on their TS, which register them
                # again; "all": the NS and every TS restart, every agent reconnects itself.
                st = res.setdefault("storms", {})[kind] = await storm(
                    args, root, servers, token, trust, n, procs, restart_ts=kind == "all"
                )
                ns = servers[0]
                async with AdminClient(ns.admin_url, token, trust, identity="bench") as c2:
                    st["step"] = await checked_step(c2, procs, db, n, args.run_timeout)
                st["ns_rss_mib"] = ns.rss_kib() / 1024
                st["ns_peak_mib"] = _hwm_kib(ns.pid) / 1024
    except Exception:
        for s in servers:
            print(s.tail(), file=sys.stderr)
        raise
    finally:
        if sim is not None:
            await sim.stop()
        for s in reversed(servers):
            await s.stop()
    res["server_log_problems"] = {s.name: dict(s.log_problems()) for s in servers}


async def backpressure(
    args: argparse.Namespace,
    client: AdminClient,
    procs: dict[str, Any],
    ts: dict[str, ServerProc],
    ns: ServerProc,
    db: Path,
    n: int,
) -> dict[str, Any]:
    """One step while ``ts-1`` is paused and resumed throughout; the queues meanwhile."""
    slow = ts["ts-1"]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_queues(ts, ns, stop, 0.5))
    pauser = asyncio.create_task(
        pause_cycles(slow.pid, stop, args.pause_ms / 1000, args.resume_ms / 1000)
    )
    try:
        r = await checked_step(client, procs, db, n, args.run_timeout)
    finally:
        stop.set()
        pauses = await pauser
        queues = await sampler
    print(f"scale: backpressure: {pauses} pauses of ts-1, queues {queues}", flush=True)
    return {**r, "pauses": pauses, "slowed": slow.name, **queues}


def _restarted(proc: ServerProc) -> ServerProc:
    """The same role on the same data, listening on the ports it had (``--listen``, and the
    NS's ``--admin-port``), so its peers find it where they left it."""
    args = list(proc.args)
    args[args.index("--listen") + 1] = f"127.0.0.1:{_port(proc.url)}"
    if "--admin-port" in args:
        args[args.index("--admin-port") + 1] = str(_port(proc.admin_url))
    return ServerProc(proc.name, args, proc.log_path)


async def storm(
    args: argparse.Namespace,
    root: Path,
    servers: list[ServerProc],
    token: str,
    trust: ClientTrust,
    n: int,
    procs: dict[str, Any],
    restart_ts: bool,
) -> dict[str, Any]:
    """Stop the NS (and with ``restart_ts`` every TS), start them again on the same ports, and
    time an admin until all N are online again. ``servers`` and ``procs`` get the new
    processes. The CPU each process spent meanwhile says who did the reconnecting."""
    again = servers if restart_ts else servers[:1]
    keep = {k: p for k, p in procs.items() if k not in {s.name for s in again}}
    cpu0 = {k: p.cpu_s() for k, p in keep.items()}
    for proc in reversed(again):
        await proc.stop()
    t0 = time.perf_counter()
    fresh = [_restarted(proc) for proc in again]
    probe: Prober | None = None
    for i, proc in enumerate(fresh):
        servers[i] = procs[proc.name] = proc
        await proc.start()
        if probe is None:  # the NS is up: the admin is timed from now on
            probe = Prober(proc.admin_url, token, trust, args.probe_every_s)
            probe.start()
    assert probe is not None
    t_ready = time.perf_counter() - t0
    deadline = time.monotonic() + args.connect_timeout
    while probe.online < n:
        if time.monotonic() > deadline:
            await probe.stop()
            raise TimeoutError(f"{probe.online} of {n} agents back after the restart")
        await asyncio.sleep(0.5)
    back_s = time.perf_counter() - t0
    cpu = {k: p.cpu_s() - cpu0.get(k, 0.0) for k, p in procs.items()}
    # Keep probing a little: the tail of the storm (TS links, presence) is still landing.
    await asyncio.sleep(3.0)
    admin = await probe.stop()
    print(
        f"scale: storm ({'NS and TS' if restart_ts else 'NS'} restarted): all {n} back"
        f" {back_s:.1f} s after the restart; admin {admin}",
        flush=True,
    )
    return {"restarted": [p.name for p in fresh], "ready_s": t_ready, "all_back_s": back_s,
            "admin": admin, "cpu_s": cpu}  # fmt: skip


def agent_processes(n: int, per_process: int) -> int:
    return max(2, math.ceil(n / per_process))


# -- the command -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=_ints, default=[1000, 10000, 30000, 100000], help="N list")
    p.add_argument("--taskservers", type=int, default=6, help="TS processes (default 6)")
    p.add_argument(
        "--agents-per-process",
        type=int,
        default=12_500,
        help="simulated agents (and floor clients) per process (default 12500; at least two"
        " processes)",
    )
    p.add_argument("--repeat", type=int, default=3, help="checked steps (and floor rounds)")
    p.add_argument(
        "--start-rate",
        type=float,
        default=0.0,
        help="agents started per second (taskfleet simulate --start-rate; default 0: all at"
        " once, which collapsed at 30,000 on a busy 2-CPU machine: docs/performance.md)",
    )
    p.add_argument("--no-floor", action="store_true", help="skip the floor")
    p.add_argument(
        "--floor-after",
        action="store_true",
        help="measure each N's floor after its fleet, not before (the fleet's figures land first)",
    )
    p.add_argument(
        "--floor-tls-buffer-kib",
        type=int,
        default=4,
        help="asyncio's TLS read buffer in the floor's processes (default 4, as taskfleet sets"
        " it: asyncio's own 256 KiB would take 25 GiB per side at 100,000; 0: asyncio's)",
    )
    p.add_argument(
        "--no-slow-ts", dest="slow_ts", action="store_false", help="no backpressure step"
    )
    p.add_argument("--pause-ms", type=int, default=300, help="SIGSTOP of the slow TS, per cycle")
    p.add_argument("--resume-ms", type=int, default=200, help="running time between pauses")
    p.add_argument(
        "--storm",
        type=_ints,
        default=[100000],
        help="the N at which to restart the NS and time an admin through the reconnect storm"
        " (default 100000; 0: never)",
    )
    p.add_argument(
        "--storm-kinds",
        type=lambda t: t.split(","),
        default=["ns", "all"],
        help="ns: restart the NS alone (the agents stay on their TS); all: the NS and every TS"
        " (every agent reconnects); default both, in that order",
    )
    p.add_argument("--probe-every-s", type=float, default=0.25)
    p.add_argument(
        "--settle-s", type=float, default=20.0, help="quiet seconds before memory is read"
    )
    p.add_argument("--connect-timeout", type=float, default=3600.0)
    p.add_argument("--run-timeout", type=float, default=900.0)
    p.add_argument("--insecure", action="store_true", help="plain ws:// instead of TLS")
    p.add_argument(
        "--tmp", default=None, help="folder for the servers' data (default: system temp)"
    )
    p.add_argument("--keep", action="store_true", help="keep the servers' folders (logs, DBs)")
    p.add_argument("--label", help="a note kept with the figures (e.g. which build was measured)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if min(args.agents) < 1 or args.taskservers < 1 or args.repeat < 1:
        p.error("--agents, --taskservers and --repeat must be at least 1")
    if set(args.storm_kinds) - {"ns", "all"}:
        p.error(f"--storm-kinds: ns, all or both, not {args.storm_kinds}")
    return args


async def amain(args: argparse.Namespace) -> int:
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
    suite: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "calibration": calibrate(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "source": source_fingerprint(),
        "taskservers": args.taskservers,
        "label": args.label,
        "results": [],
    }
    try:
        return await _suite(args, suite)
    finally:
        report(suite, args)  # also when stopped (SIGTERM): the figures taken so far


async def _suite(args: argparse.Namespace, suite: dict[str, Any]) -> int:
    ok = True
    for n in args.agents:
        res: dict[str, Any] = {"agents": n}
        suite["results"].append(res)
        if not args.no_floor and not args.floor_after:
            await floor_for(args, n, res)
        tmp = tempfile.mkdtemp(prefix="scale-", dir=args.tmp)
        try:
            await fleet_at(args if n in args.storm else _no_storm(args), n, Path(tmp), res)
        except (TimeoutError, RuntimeError) as exc:
            res["failed"] = str(exc)
            print(f"scale: N={n} failed: {exc}", file=sys.stderr)
        finally:
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
        report(suite, args)
        if not args.no_floor and args.floor_after:
            await floor_for(args, n, res)
            report(suite, args)
        steps = [*res.get("steps", []), *(st["step"] for st in res.get("storms", {}).values())]
        ok = ok and "failed" not in res and all(s["ok"] for s in steps)
    return 0 if ok else 1


async def floor_for(args: argparse.Namespace, n: int, res: dict[str, Any]) -> None:
    """The floor for N, spread like the fleet (K servers, P client processes), into ``res``."""
    procs_n = agent_processes(n, args.agents_per_process)
    print(f"scale: floor N={n}, {args.taskservers} servers, {procs_n} client procs", flush=True)
    try:
        res["floor"] = await floor.measure(
            n,
            args.repeat,
            args.insecure,
            servers=args.taskservers,
            client_procs=procs_n,
            warmup=1,
            tls_buffer_kib=args.floor_tls_buffer_kib,
            opening_at_once=FLOOR_OPENING_AT_ONCE,
        )
    except (TimeoutError, RuntimeError) as exc:
        res["floor_failed"] = str(exc)
        print(f"scale: floor N={n} failed: {exc}", file=sys.stderr)
        return
    print(f"scale: floor round {res['floor']['round_median_s']:.3f} s", flush=True)


def report(suite: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the table so far and write the JSON: a long run shows each figure as it lands."""
    print(render(suite), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(suite, indent=2, sort_keys=True, default=str))


def _no_storm(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "storm": False})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    configure_logging()
    return run_main(amain(args))


if __name__ == "__main__":
    sys.exit(main())
