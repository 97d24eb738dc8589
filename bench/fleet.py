"""One configuration of the bench (``bench/run.py``): ``bench`` starts an NS and K TS processes,
connects N lightweight agents in this process, and runs every scenario R times.

Also what it saves on the NS (``DOCUMENTS``), the scenarios (``SCENARIOS``), the wait for the
fleet to come up (``connect_fleet``), one run followed to its end (``one_run``), and the CPU and
garbage-collector time they cost (``_cpu_delta``, ``GcClock``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from admin.client import AdminClient
from agent.agent import Agent
from bench import floor
from bench.procs import (
    Profiler,
    ServerProc,
    _end,
    _hwm_kib,
    _rss_kib,
    find_py_spy,
    machine_busy_s,
)
from runtime.tls import ClientTrust

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
PAIRED_GAP_S = 0.3
"""Between a paired floor round and the taskfleet run after it (as between floor rounds)."""
SIMULATED_NOOP: dict[str, float] = {"delay_ms": 0.0, "fail_rate": 0.0}
"""``--agent-tasks simulated``: what ``taskfleet simulate --task-delay-ms 0`` gives its agents."""


# -- the benchmark ---------------------------------------------------------------------------


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
    client: AdminClient,
    name: str,
    timeout_s: float,
    procs: dict[str, Any],
    rows: bool = True,
) -> dict[str, Any]:
    """Start ``name`` on every computer and follow it to its end (the last barrier released,
    every result stored: the NS ends a run only after storing its last result).

    ``rows``: read every row back with ``run.show``; without it, only the counts per state
    (``bench/scale.py``, whose 100,000 rows it checks in the NS's database instead)."""
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
    final = await client.call("run.show", run_id=run_id, instances=rows)
    steps = final.get("steps") or []
    created = final.get("created_at")
    # A server job: its last step (the server task) starts when the barriers before it release.
    barrier_s = (
        steps[-1]["started_at"] - created
        if len(steps) > 1 and created and steps[-1].get("started_at")
        else None
    )
    if rows:
        statuses = Counter(r["status"] for r in final.get("instances", []))
    else:
        statuses = Counter({k: int(v) for k, v in (final.get("counts") or {}).items()})
    n_rows = sum(statuses.values())
    return {
        "run_id": run_id,
        "targets": int(started["targets"]),
        "status": final.get("status"),
        "rows": n_rows,
        "statuses": dict(statuses),
        "ok": final.get("status") == "succeeded" and statuses.get("succeeded", 0) == n_rows,
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


async def start_taskservers(
    client: AdminClient,
    ns: ServerProc,
    root: Path,
    ts_names: list[str],
    insecure: bool,
    started: list[ServerProc],
) -> None:
    """Start one TS process per name (appended to ``started`` as each starts, so a failure
    still stops those already up) and wait until the NS lists them all online."""
    created = await client.call(
        "tokens.create", ttl_s=86_400, uses=len(ts_names) + 1, role="taskserver"
    )
    ts_enrol = created["token"]
    for name in ts_names:
        ts_args = [
            "taskserver", "--server", ns.url, "--data", str(root / name),
            "--listen", "127.0.0.1:0", "--name", name, "--enrol-token", ts_enrol,
            *(["--insecure"] if insecure else ["--server-fingerprint", ns.fingerprint]),
        ]  # fmt: skip
        ts = ServerProc(name, ts_args, root / f"{name}.log")
        started.append(ts)
        await ts.start()

    async def ts_online() -> bool:
        rows = await client.call("taskservers.list")
        return sum(1 for r in rows if r["name"] in ts_names and r["online"]) == len(ts_names)

    await until(ts_online, f"{ts_names} connected to the NS", 30, 0.05)


async def save_documents(client: AdminClient) -> None:
    """Save the bench's tasks and jobs (``DOCUMENTS``) on the NS."""
    for op, texts in DOCUMENTS.items():
        for text in texts:
            await client.call(op, text=text, filename="bench.toml")


async def stop_agents(tasks: list[asyncio.Task[None]], timeout_s: float = 30.0) -> None:
    for t in tasks:
        t.cancel()
    if tasks:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(tasks, timeout=timeout_s)


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
            created = await client.call("tokens.create", ttl_s=86_400, uses=n + 10)
            enrol = created["token"]
            procs: dict[str, ServerProc] = {"ns": ns}
            await start_taskservers(client, ns, root, ts_names, args.insecure, servers)
            procs.update((s.name, s) for s in servers[1:])
            await save_documents(client)
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
