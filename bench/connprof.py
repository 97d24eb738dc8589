"""Where the connect time goes: N new agents enrol and connect, then reconnect as known agents,
with py-spy attached to the NS, ts-1 and the first ``taskfleet simulate`` process.

    python bench/connprof.py --agents 2000 --processes 2 --out /tmp/connprof/a

Real processes throughout: an NS and ``--taskservers`` TS (``python -m admin server|taskserver``,
TLS, fixed loopback ports so they can be restarted in place) and ``python -m admin simulate``
with ``--processes`` workers (worker 0 is the process profiled). Two phases:

- ``enrol``: the simulate processes start with an enrolment token; timed from their spawn until
  the NS lists every agent online through a TS.
- ``reconnect``: every TS and the NS are stopped and started again, all at once, on the same
  data and ports (a TS keeps its agents through an NS restart alone, so both go, as after a
  host restart); the agents, their keys and tickets kept in memory, come back as known agents
  (straight to their TS while their ticket is young). Timed from the stop.
- ``floor`` (before and after the others): N plain TLS WebSocket clients from as many processes
  (``bench.floor.Floor``), timed from their spawn until all are connected; the run ends with
  enrol/floor and reconnect/floor (issue 22's target 2: at most 2 and 1.5), in wall time and in
  CPU seconds.

For each phase it prints the wall time, the online count over time, the CPU seconds of the NS,
the TS and all simulate processes (and of the machine), and writes py-spy's raw collapsed
stacks (``--format raw``, one line per stack) beside a short summary. A profiled run's times
are slower than an unprofiled one's: read the shares, not the seconds.

The NS is polled (``computers.list``, every ``--poll-s``) on its admin-only listener, so the
polls never queue at the agents' handshake gate; their samples are counted apart. The report
also holds each listener's gate counters and the simulated agents' failed attempts (each one
then sleeps its backoff). ``--analyse`` prints the shares table of a finished run:

    python bench/connprof.py --analyse --out /tmp/connprof/a
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admin.client import AdminClient  # noqa: E402
from bench.procs import (  # noqa: E402
    CLK_TCK,
    Profiler,
    ServerProc,
    _end,
    _spawn,
    find_py_spy,
    machine_busy_s,
    raise_nofile,
)
from runtime.tls import ClientTrust  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


class Rig:
    """The NS, the TS and the simulate processes of one profiled run."""

    def __init__(self, args: argparse.Namespace, root: Path):
        self.args = args
        self.root = root
        self.ns_port = _free_port()
        self.ts_ports = [_free_port() for _ in range(args.taskservers)]
        self.ts_names = [f"ts-{i + 1}" for i in range(args.taskservers)]
        self.admin_port = _free_port()
        """The NS's admin-only listener: the polls never wait at the agents' gate."""
        self.ns = ServerProc(
            "ns",
            [
                "server",
                "--data",
                str(root / "ns"),
                "--listen",
                f"127.0.0.1:{self.ns_port}",
                "--admin-port",
                str(self.admin_port),
            ],  # fmt: skip
            root / "ns.log",
        )
        self.ts: list[ServerProc] = []
        self.sim: Any = None
        self.token_file = root / "enrol.token"

    def admin(self) -> AdminClient:
        token = (self.root / "ns" / "admin.token").read_text().strip()
        url = f"wss://127.0.0.1:{self.admin_port}"
        return AdminClient(
            url, token, ClientTrust(fingerprint=self.ns.fingerprint), identity="connprof"
        )

    async def start_servers(self, ts_token: str | None, ns: bool = True) -> None:
        """Start the NS (unless ``ns`` is false), then the TS: new ones with ``ts_token``, else
        the same ones again."""
        if ns:
            await self.ns.start()
        if ts_token is not None:
            self.ts = [
                ServerProc(
                    name,
                    [
                        "taskserver",
                        "--server",
                        self.ns.url,
                        "--data",
                        str(self.root / name),
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--name",
                        name,
                        "--enrol-token",
                        ts_token,
                        "--server-fingerprint",
                        self.ns.fingerprint,
                    ],  # fmt: skip
                    self.root / f"{name}.log",
                )
                for name, port in zip(self.ts_names, self.ts_ports, strict=True)
            ]
        for ts in self.ts:
            await ts.start()

    def sim_pids(self) -> list[int]:
        if self.sim is None:
            return []
        return [self.sim.pid, *_children(self.sim.pid)]

    def cpu(self) -> dict[str, tuple[int, float]]:
        """Each process's (pid, CPU seconds so far); the simulate workers summed as one."""
        sim0 = self.sim.pid if self.sim is not None else 0
        return {
            "ns": (self.ns.pid, self.ns.cpu_s()),
            **{ts.name: (ts.pid, ts.cpu_s()) for ts in self.ts},
            "simulate": (sim0, sum(_cpu_of(p) for p in self.sim_pids())),
            "sim-0": (sim0, _cpu_of(sim0) if sim0 else 0.0),
            "machine": (0, machine_busy_s()),
        }

    async def stop(self) -> None:
        if self.sim is not None:
            kids = _children(self.sim.pid)
            await _end(self.sim, signal.SIGTERM, 20)
            for pid in kids:  # the workers worker 0 started; it stops them itself normally
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ts in self.ts:
            await ts.stop()
        await self.ns.stop()


async def wait_online(rig: Rig, n: int, t0: float, timeout_s: float) -> dict[str, Any]:
    """Poll the NS until N agents are online (through a TS, or the built-in service where the NS
    sent those that registered while their TS was away past its grace: a TS restarted slowly on
    a busy machine); the count over time on the way, and how many were on the built-in one."""
    marks: dict[str, float] = {}
    curve: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with rig.admin() as client:
                while True:
                    rows = await client.call("computers.list")
                    up = [r for r in rows if r["online"] and r["name"].startswith("sim-")]
                    online = len(up)
                    t = time.perf_counter() - t0
                    curve.append((round(t, 2), online))
                    for pct in (10, 25, 50, 75, 90, 99, 100):
                        if f"{pct}%" not in marks and online >= n * pct / 100:
                            marks[f"{pct}%"] = round(t, 2)
                    if online >= n:
                        builtin = sum(1 for r in up if r["taskserver"] not in rig.ts_names)
                        return {
                            "wall_s": round(t, 2),
                            "marks": marks,
                            "curve": curve,
                            "on_builtin": builtin,
                        }
                    if time.monotonic() > deadline:
                        # Not TimeoutError: an OSError, which the except below retries.
                        raise RuntimeError(f"{online}/{n} online after {t:.0f} s")
                    await asyncio.sleep(rig.args.poll_s)
        except (OSError, ConnectionError) as exc:  # the admin link lost: connect again
            print(f"connprof: admin link: {exc!r}", file=sys.stderr)
            await asyncio.sleep(0.5)


def gate_metrics(url: str) -> dict[str, float]:
    """The handshake gate's counters from a listener's ``/metrics`` (loopback needs no token;
    the bench does not check the certificate of its own child on 127.0.0.1)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    https = url.replace("wss://", "https://").replace("ws://", "http://") + "/metrics"
    try:
        with urllib.request.urlopen(https, context=ctx, timeout=10) as resp:
            text = resp.read().decode()
    except OSError as exc:
        return {"error": str(exc)}  # type: ignore[dict-item]
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("taskfleet_handshakes"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def agent_events(log: Path, offset: int) -> dict[str, int]:
    """The simulated agents' warnings and errors since ``offset``, by event and code: each one
    is a failed attempt that an agent then waits out on its backoff timer."""
    found: dict[str, int] = {}
    with open(log, "rb") as fh:
        fh.seek(offset)
        for raw in fh:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            key = f"{entry.get('event')}:{entry.get('code', '')}"
            found[key] = found.get(key, 0) + 1
    return found


def _delta(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]
) -> dict[str, float]:
    """CPU seconds per process between two readings; a process started since counts from 0."""
    out = {}
    for k, (pid, cpu) in after.items():
        was_pid, was_cpu = before.get(k, (0, 0.0))
        out[k] = round(cpu - (was_cpu if was_pid == pid else 0.0), 2)
    return out


async def profile_phase(rig: Rig, phase: str, start: Any, n: int) -> dict[str, Any]:
    """Run ``start``, attach py-spy to the NS, ts-1 and simulate worker 0, wait, summarise."""
    args = rig.args
    py_spy = find_py_spy()
    sim_log = rig.root / "simulate.log"
    log_at = sim_log.stat().st_size if sim_log.exists() else 0
    cpu0 = rig.cpu()
    t0 = time.perf_counter()
    await start()
    started_s = time.perf_counter() - t0
    cpu_started = rig.cpu()
    profs: dict[str, Profiler] = {}
    if py_spy and not args.no_profile:
        targets: dict[str, Any] = {"ns": rig.ns, "ts": rig.ts[0], "sim": rig.sim}
        for which, target in targets.items():
            out = args.out / f"{phase}-{which}.txt"
            pid: Any = SimpleNamespace(pid=target.pid)  # Profiler reads only ``.pid``
            profs[which] = Profiler(py_spy, pid, out, args.rate)
        await asyncio.gather(*(p.start() for p in profs.values()))
    try:
        result = await wait_online(rig, n, t0, args.timeout)
    except RuntimeError:
        for p in profs.values():  # keep the stacks of a run that did not finish
            await p.stop()
        raise
    cpu1 = rig.cpu()
    loop = asyncio.get_running_loop()
    # The NS serves /metrics on its admin listener; its agents' gate is listener="main" there.
    result["gates"] = {
        p.name: await loop.run_in_executor(None, gate_metrics, p.admin_url or p.url)
        for p in (rig.ns, *rig.ts)
    }
    result["agent_log"] = agent_events(sim_log, log_at)
    result["started_s"] = round(started_s, 2)
    result["cpu_s"] = _delta(cpu0, cpu1)
    result["cpu_after_start_s"] = _delta(cpu_started, cpu1)
    result["profiles"] = {}
    for which, p in profs.items():
        summary = await p.stop()
        if summary is not None:
            result["profiles"][which] = summary
    return result


async def floor_phase(args: argparse.Namespace) -> dict[str, Any]:
    """The floor in the same run: N plain TLS WebSocket clients (``websockets`` as it comes,
    no taskfleet code) spread over the same number of client processes and connecting to as
    many server processes as there are TS, timed from the clients' spawn until every one is
    connected (``bench.floor.Floor``): what N TLS connections cost on this machine now."""
    from bench.floor import Floor

    print(f"connprof: floor, {args.agents} TLS WebSocket clients", flush=True)
    load = os.getloadavg()[0]
    floor = Floor(args.agents, servers=args.taskservers, client_procs=args.processes)
    try:
        await floor.start()
        # Its servers' and clients' CPU from their start until every client is connected.
        cpu = floor._cpu_servers() + floor._cpu_clients()
    finally:
        await floor.close()
    return {"connect_s": round(floor.connect_s, 2), "cpu_s": round(cpu, 2), "load": round(load, 1)}


def ratios(report: dict[str, Any]) -> str:
    """enrol/floor and reconnect/floor: issue 22's target 2 asks for at most 2 and 1.5."""
    # The floor is taken before and after taskfleet's phases: their mean, as the machine's
    # load (other sessions') moves within minutes.
    floors = [f for f in (report.get("floor_before"), report["floor"]) if f]
    floor = round(sum(f["connect_s"] for f in floors) / len(floors), 2)
    floor_cpu = round(sum(f["cpu_s"] for f in floors) / len(floors), 2)
    seen = " and ".join(f"{f['connect_s']} s" for f in floors)
    parts = [f"floor {floor} s ({seen}), {floor_cpu} CPU-s"]
    for phase, target in (("enrol", 2.0), ("reconnect", 1.5)):
        if phase in report:
            # Connect time, as the floor's: from when the servers are up (for reconnect, the
            # restart itself, the NS's and the TS's start-up, comes before).
            wall = report[phase]["wall_s"] - report[phase]["started_s"]
            cpu = report[phase]["cpu_after_start_s"]
            ours = cpu["ns"] + cpu["simulate"] + sum(v for k, v in cpu.items() if k[:3] == "ts-")
            parts.append(
                f"{phase} {wall:.2f} s = {wall / floor:.2f}x floor (target {target}x),"
                f" {ours:.2f} CPU-s = {ours / floor_cpu:.2f}x"
            )
    return "connprof: " + "; ".join(parts)


# -- reading the stacks ----------------------------------------------------------------------

IDLE = (
    "EpollSelector.select (selectors.py",  # the event loop waiting for the next event
    "_connection_worker_thread (aiosqlite/core.py:59)",  # aiosqlite's thread waiting for work
    "_worker (concurrent/futures/thread.py:81)",  # an executor thread waiting for work
)
"""Leaf frames py-spy counts as active that are waits: left out of the shares."""
KINDS = (
    ("TLS handshake (OpenSSL)", ("do_handshake (ssl.py",)),
    ("TLS record read/write", ("SSLSocket.send (", "SSLSocket.read (", "SSLSocket.recv (")),
    ("TLS socket set-up/close", ("(ssl.py",)),
    ("Ed25519 verify", ("verify (protocol/identity.py", "from_public_bytes (cryptography")),
    ("Ed25519 sign", ("sign (protocol/identity.py", "sign (runtime/keys.py")),
    ("ticket payload/signature", ("ticket",)),
    ("SQL (aiosqlite, both threads)", ("(aiosqlite/", "(sqlite3/")),
    ("getaddrinfo via thread pool", ("getaddrinfo", "(concurrent/futures/")),
    ("imports (start-up)", ("<frozen importlib",)),
    ("logging", ("(structlog/", "(logging/", "(runtime/logs.py")),
    ("heap settling (gc, malloc_trim)", ("(runtime/heap.py",)),
    ("our transport: gate, link, tlsio, frames", ("(runtime/",)),
    ("websockets library", ("(websockets/",)),
    ("protocol: messages, codec", ("(protocol/", "(msgpack/")),
    ("NS: register, assign, reroute", ("(server/",)),
    ("TS: ticket check, relay", ("(taskserver/",)),
    ("agent", ("(agent/", "(admin/simulate.py")),
    ("asyncio machinery", ("(asyncio/", "(selectors.py")),
)


POLL = "this bench's computers.list polls"
"""Not connect work: the NS answering the poll that watches the count (excluded from shares)."""


def classify(frames: list[str]) -> str:
    """The kind of the leaf-most frame that names one (imports win: start-up, not connects)."""
    if any("<frozen importlib" in f for f in frames):
        return "imports (start-up)"
    if any("(server/adminops/" in f or "(server/admin_api.py" in f for f in frames):
        return POLL
    for frame in reversed(frames):
        for kind, marks in KINDS:
            if any(m in frame for m in marks):
                return kind
    return "other"


def read_stacks(path: Path) -> dict[str, Any]:
    """Active samples by kind, the NS store methods under SQL, and the idle samples."""
    kinds: dict[str, int] = {}
    store: dict[str, int] = {}
    idle = active = poll = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        if any(mark in frames[-1] for mark in IDLE):
            idle += count
            continue
        kind = classify(frames)
        if kind == POLL:
            poll += count
            continue
        active += count
        kinds[kind] = kinds.get(kind, 0) + count
        if kind.startswith("SQL"):
            owner = next(
                (
                    f.split(" (")[0]
                    for f in reversed(frames)
                    if "(server/store/" in f and "(server/store/base.py" not in f
                ),
                "(thread)",
            )
            store[owner] = store.get(owner, 0) + count
    return {"active": active, "idle": idle, "poll": poll, "kinds": kinds, "sql_by_store": store}


def analyse(out: Path) -> str:
    """The shares table of every phase in ``out`` as Markdown, with CPU-ms per connect."""
    report = json.loads((out / "report.json").read_text())
    n = report["agents"]
    lines: list[str] = []
    for phase in ("enrol", "reconnect"):
        if phase not in report:
            continue
        r = report[phase]
        cpu = r["cpu_after_start_s"]
        procs = {"ns": cpu["ns"], "ts": cpu["ts-1"], "sim": cpu["sim-0"]}
        stacks = {
            k: read_stacks(out / f"{phase}-{k}.txt")
            for k in procs
            if (out / f"{phase}-{k}.txt").exists()
        }
        lines.append(
            f"\n{phase}: {n} agents, all online after {r['wall_s']} s (servers up after "
            f"{r['started_s']} s), marks {r['marks']}; CPU-s after start {cpu}"
        )
        lines.append(f"gates: {r.get('gates')}")
        lines.append(f"agents' failed attempts: {r.get('agent_log')}")
        lines.append("| kind | NS | TS | simulate worker 0 |")
        lines.append("| --- | --- | --- | --- |")
        all_kinds = sorted(
            {k for s in stacks.values() for k in s["kinds"]},
            key=lambda k: -sum(s["kinds"].get(k, 0) / max(1, s["active"]) for s in stacks.values()),
        )
        per = {"ns": n, "ts": n / report["ts"], "sim": n / report["processes"]}
        for k, st in stacks.items():  # the CPU of the connects: the polls' share taken out
            procs[k] *= st["active"] / max(1, st["active"] + st["poll"])
        for kind in all_kinds:
            cells = []
            for k in ("ns", "ts", "sim"):
                s = stacks.get(k)
                if not s or not s["active"]:
                    cells.append("-")
                    continue
                share = s["kinds"].get(kind, 0) / s["active"]
                ms = 1000 * share * procs[k] / per[k]
                cells.append(f"{100 * share:.0f} % ({ms:.2f} ms)")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        for k, s in stacks.items():
            lines.append(
                f"{k}: {s['active']} active, {s['idle']} idle, {s['poll']} poll samples; "
                f"CPU {procs[k]:.2f} s = "
                f"{1000 * procs[k] / per[k]:.2f} ms per connect; SQL by store method: "
                f"{sorted(s['sql_by_store'].items(), key=lambda kv: -kv[1])[:8]}"
            )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.out / "data"
    root.mkdir(exist_ok=True)
    raise_nofile()
    rig = Rig(args, root)
    n = args.agents
    report: dict[str, Any] = {"agents": n, "processes": args.processes, "ts": args.taskservers}
    try:
        if "floor" in args.phases:
            report["floor_before"] = await floor_phase(args)
        await rig.start_servers(None)
        async with rig.admin() as client:
            agent_token = (await client.call("tokens.create", ttl_s=86_400, uses=n + 10))["token"]
            ts_token = (
                await client.call("tokens.create", ttl_s=86_400, uses=9, role="taskserver")
            )["token"]
        rig.token_file.write_text(agent_token)
        rig.token_file.chmod(0o600)
        await rig.start_servers(ts_token, ns=False)
        await asyncio.sleep(2.0)  # the TS link to the NS up

        async def spawn_sim() -> None:
            argv = [
                sys.executable, "-m", "admin", "simulate", "--server", rig.ns.url,
                "--server-fingerprint", rig.ns.fingerprint, "--enrol-token-file",
                str(rig.token_file), "--agents", str(n), "--processes", str(args.processes),
            ]  # fmt: skip
            rig.sim = await _spawn(argv, root / "simulate.log", asyncio.subprocess.DEVNULL)

        print(f"connprof: enrol {n} agents, {args.processes} simulate processes", flush=True)
        report["enrol"] = await profile_phase(rig, "enrol", spawn_sim, n)
        print(f"connprof: enrol {report['enrol']['wall_s']} s {report['enrol']['cpu_s']}")
        await asyncio.sleep(args.settle)

        async def restart() -> None:
            # As after a host restart: every server stops at once, then all start at once (in
            # whatever order they come up; a TS serves known agents before it reaches the NS).
            await asyncio.gather(rig.ns.stop(), *(ts.stop() for ts in rig.ts))
            await asyncio.gather(rig.ns.start(), *(ts.start() for ts in rig.ts))

        if "reconnect" in args.phases:
            print("connprof: restart NS and TS, known agents reconnect", flush=True)
            report["reconnect"] = await profile_phase(rig, "reconnect", restart, n)
            rec = report["reconnect"]
            print(f"connprof: reconnect {rec['wall_s']} s {rec['cpu_s']}")
    finally:
        await rig.stop()
        if "floor" in args.phases and "enrol" in report:
            report["floor"] = await floor_phase(args)
        (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if not args.no_profile:
        print(analyse(args.out))
    if "floor" in report:
        print(ratios(report))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=2000)
    p.add_argument("--processes", type=int, default=2, help="taskfleet simulate workers")
    p.add_argument("--taskservers", type=int, default=1)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument(
        "--phases",
        default="enrol,reconnect,floor",
        help="floor: the same N TLS clients, before and after",
    )
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds between the phases")
    p.add_argument("--poll-s", type=float, default=1.0, help="computers.list every ... s")
    p.add_argument("--no-profile", action="store_true", help="time only, no py-spy")
    p.add_argument("--out", type=Path, required=True, help="folder for stacks and report.json")
    p.add_argument("--analyse", action="store_true", help="only print the shares of --out's run")
    args = p.parse_args()
    if args.analyse:
        print(analyse(args.out))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
