"""Replication lag down a hierarchy of Notification Servers (issue 24): real NS processes.

    python bench/hierarchy.py --tiers 1,3 --samples 20 --burst 10000 --json-out hier.json

For each depth in ``--tiers`` it starts a chain of NS processes in a temporary folder: ``hq``
(the top), then ``tier1`` linked to ``hq``, ``tier2`` to ``tier1``, ... (each child enrolled
with a ``child`` token made on its parent, TLS pinned by the parent's fingerprint, as an
administrator would), waits until every link is up, and measures:

1. **one change** (``--samples`` times, ``--gap-s`` apart): an administrator saves a replicated
   task on ``hq`` (new tasks and changes of one task, alternately); each NS below is asked
   ``task.show`` on ``--pollers`` connections in turn (each every ``--poll-ms``, under the admin
   rate limit) until it answers with this very version (the marker in its script): the lag is
   the time from sending the save to that answer, so it includes the save on ``hq``; the last
   question that missed it bounds it from below (the table shows that median in brackets).
   Median and p95 per tier.
2. **a burst** of ``--burst`` replicated tasks saved on ``hq`` at once (over
   ``--connections`` admin connections, each paced under the NS's admin rate limit),
   then one more task, the *sentinel*; a tier has converged when it shows the sentinel
   (changes are applied in order, so everything saved before it is there too). Reported: how
   long ``hq`` took to accept the burst, and from the first save to each tier's convergence.
   Afterwards every tier's task list is checked against what was saved (names and scripts):
   a missing, stale or extra task fails the bench (exit 1).
3. **catch-up** (unless ``--no-catch-up``): ``tier1`` stopped (SIGTERM), every burst task
   changed on ``hq`` meanwhile and the sentinel saved again, ``tier1`` started again on its
   data and port; from ``hq`` listing it linked to each tier showing the sentinel: the
   replication's own pace, not the admin's (the tiers under ``tier1`` include their reconnect
   backoff to it, up to 10 s). Checked like the burst.

It prints one table and writes ``--json-out``. Every child process ends with this one
(``bench/procs.py``). The issue's promise: a change is on every child within 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/hierarchy.py` from a checkout not installed
    sys.path.insert(0, str(ROOT))

from admin.client import AdminClient  # noqa: E402
from bench.fleet import until  # noqa: E402
from bench.procs import ServerProc, calibrate, run_main  # noqa: E402
from bench.run import _ints, configure_logging, source_fingerprint  # noqa: E402
from protocol.errors import RemoteError  # noqa: E402
from runtime.tls import ClientTrust  # noqa: E402

WINDOW = 8
"""Saves sent and not yet answered, per admin connection. The NS answers one connection's
requests one after another and stops reading it while more than a few wait; a pong behind
150 pipelined saves on an NS busy for minutes arrived after its keepalive gave up (1011)."""
LINK_TIMEOUT_S = 120.0


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the chain of NS processes ----------------------------------------------------------------


class Node:
    """One NS of the chain: its process, its first admin token and how to trust it."""

    def __init__(self, name: str, proc: ServerProc, token: str):
        self.name = name
        self.proc = proc
        self.token = token

    def trust(self) -> ClientTrust:
        return ClientTrust(fingerprint=self.proc.fingerprint)

    def admin(self) -> AdminClient:
        return AdminClient(self.proc.url, self.token, self.trust())


async def start_node(root: Path, name: str, parent: Node | None) -> Node:
    """Start ``taskfleet server`` named ``name``; below ``parent`` when given, enrolled with a
    ``child`` token made on the parent and read from a file (never on a command line)."""
    data = root / name
    # A fixed port: tier1 started again (the catch-up) must be where its child looks for it.
    argv = ["server", "--data", str(data), "--listen", f"127.0.0.1:{free_port()}", "--name", name]
    if parent is not None:
        async with parent.admin() as c:
            created = await c.call("tokens.create", ttl_s=3600, uses=1, role="child")
        token_file = root / f"{name}.enrol-token"
        token_file.write_text(created["token"] + "\n")
        token_file.chmod(0o600)
        argv += [
            "--parent", parent.proc.url, "--parent-fingerprint", parent.proc.fingerprint,
            "--enrol-token-file", str(token_file),
        ]  # fmt: skip
    proc = await ServerProc(name, argv, root / f"{name}.log").start()
    return Node(name, proc, (data / "admin.token").read_text().strip())


async def wait_linked(parent: Node, child: Node, timeout_s: float = LINK_TIMEOUT_S) -> None:
    """Until ``parent`` lists ``child`` as a connected child (``children.list``)."""
    async with parent.admin() as c:

        async def linked() -> bool:
            rows = await c.call("children.list")
            return any(r.get("name") == child.name and r.get("connected") for r in rows)

        try:
            await until(linked, f"{child.name} linked to {parent.name}", timeout_s, 0.1)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{child.proc.tail()}\n{parent.proc.tail()}") from None


async def start_chain(root: Path, depth: int) -> list[Node]:
    """``hq`` and ``depth`` tiers below it, each linked to the one above."""
    nodes: list[Node] = []
    for level in range(depth + 1):
        parent = nodes[-1] if nodes else None
        nodes.append(await start_node(root, "hq" if level == 0 else f"tier{level}", parent))
        if parent is not None:
            await wait_linked(parent, nodes[-1])
    return nodes


# -- what is saved, and how its arrival is seen -----------------------------------------------


def task(name: str, marker: str) -> dict[str, Any]:
    """A replicated run-script task whose script carries ``marker`` (which version it is)."""
    return {
        "name": name,
        "type": "run-script",
        "timeout_s": 60,
        "replicate": True,
        "params": {"interpreter": "sh", "script": f"echo {marker}"},
    }


async def shows(c: AdminClient, name: str, marker: str) -> bool:
    """Whether the NS behind ``c`` answers ``task.show`` with the version carrying ``marker``."""
    try:
        found = await c.call("task.show", name=name)
    except RemoteError:
        return False  # not there yet
    return f"echo {marker}" in json.dumps(found.get("document"))


async def arrival(
    c: AdminClient, name: str, marker: str, t0: float, poll_s: float, missed: list[float]
) -> float:
    """Seconds from ``t0`` until the NS behind ``c`` shows ``name`` at ``marker`` (when that
    answer came: an upper bound). Each question that found it not there yet adds when it was
    asked to ``missed`` (a lower bound: the item was not there then)."""
    while True:
        asked = time.perf_counter() - t0
        if await shows(c, name, marker):
            return time.perf_counter() - t0
        missed.append(asked)
        await asyncio.sleep(poll_s)


async def tier_arrival(
    pollers: list[AdminClient], name: str, marker: str, t0: float, poll_s: float
) -> tuple[float, float]:
    """When one NS showed the change, asked on several connections in turn (each at most once
    per ``poll_s``, under the admin rate limit; together ``len(pollers)`` times as often):
    ``(seen, last missed)`` in seconds from ``t0``; the lag lies between the two."""
    missed: list[float] = []
    stagger = poll_s / len(pollers)

    async def poll(i: int, c: AdminClient) -> float:
        await asyncio.sleep(i * stagger)
        return await arrival(c, name, marker, t0, poll_s, missed)

    tasks = [asyncio.create_task(poll(i, c)) for i, c in enumerate(pollers)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        seen = min(t.result() for t in done)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return seen, max([m for m in missed if m < seen], default=0.0)


async def one_change(
    writer: AdminClient, pollers: list[list[AdminClient]], name: str, marker: str, args: Any
) -> list[tuple[float, float]]:
    """Save one change on the top NS; per NS below (nearest first), when it was seen and when
    it was last missed (seconds from sending the save)."""
    t0 = time.perf_counter()
    saving = asyncio.create_task(writer.call("task.add", document=task(name, marker)))
    try:
        return list(
            await asyncio.wait_for(
                asyncio.gather(
                    *(tier_arrival(p, name, marker, t0, args.poll_ms / 1000) for p in pollers)
                ),
                args.timeout_s,
            )
        )
    finally:
        await saving


async def single_changes(nodes: list[Node], args: Any) -> list[list[tuple[float, float]]]:
    """``--samples`` single changes; per sample and tier, (seen, last missed)."""
    samples: list[list[tuple[float, float]]] = []
    async with contextlib.AsyncExitStack() as stack:
        writer = await stack.enter_async_context(nodes[0].admin())
        pollers = [
            [await stack.enter_async_context(n.admin()) for _ in range(args.pollers)]
            for n in nodes[1:]
        ]
        for i in range(args.samples):
            # Alternately a new task and a change of one that is already everywhere.
            name = f"lag-{i:03d}" if i % 2 == 0 else "lag-changed"
            samples.append(await one_change(writer, pollers, name, f"sample-{i}", args))
            await asyncio.sleep(args.gap_s)  # the pushers idle again: each sample stands alone
    return samples


class Pace:
    """A client-side token bucket just under the NS's admin rate limit per connection (50
    requests a second, bursts of 200), so the bench is never refused for its pace."""

    def __init__(self, rate_per_s: float = 45.0, burst: float = 150.0):
        self.rate_per_s = rate_per_s
        self.tokens = burst
        self.burst = burst
        self.last = time.monotonic()

    async def take(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate_per_s)
        self.last = now
        if self.tokens < 1:
            await asyncio.sleep((1 - self.tokens) / self.rate_per_s)
            self.tokens = 1.0
            self.last = time.monotonic()
        self.tokens -= 1


async def save_many(c: AdminClient, names: Iterator[str], marker: str) -> None:
    """Take names from ``names`` (shared with the other connections) and save each on ``c``,
    at most :data:`WINDOW` unanswered at a time."""
    pace = Pace()
    pending: set[asyncio.Task[Any]] = set()
    for name in names:
        await pace.take()
        pending.add(asyncio.create_task(c.call("task.add", document=task(name, marker))))
        if len(pending) >= WINDOW:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
    await asyncio.gather(*pending)


async def save_burst(top: Node, names: list[str], marker: str, args: Any) -> tuple[float, float]:
    """Save every task in ``names`` at ``marker`` on ``top`` over ``--connections`` admin
    connections; return when the first save was sent (``perf_counter``) and how long until the
    last was answered."""
    async with contextlib.AsyncExitStack() as stack:
        writers = [await stack.enter_async_context(top.admin()) for _ in range(args.connections)]
        shared = iter(names)
        t0 = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(save_many(w, shared, marker) for w in writers)), args.timeout_s
        )
    return t0, time.perf_counter() - t0


async def burst(nodes: list[Node], args: Any) -> dict[str, Any]:
    """``--burst`` saves on the top NS with every link up, then the sentinel: how long the top
    took to accept them, and each tier's time to converge (from the first save)."""
    names = [f"burst-{i:05d}" for i in range(args.burst)]
    async with contextlib.AsyncExitStack() as stack:
        top = await stack.enter_async_context(nodes[0].admin())
        readers = [await stack.enter_async_context(n.admin()) for n in nodes[1:]]
        t0, accepted_s = await save_burst(nodes[0], names, "b1", args)
        converged = await asyncio.wait_for(
            asyncio.gather(
                top.call("task.add", document=task("burst-sentinel", "live")),
                *(
                    arrival(r, "burst-sentinel", "live", t0, args.poll_ms / 1000, [])
                    for r in readers
                ),
            ),
            args.timeout_s,
        )
        wrong = {
            n.name: await mismatches(r, names, "b1")
            for n, r in zip(nodes[1:], readers, strict=True)
        }
    result: dict[str, Any] = {
        "changes": args.burst,
        "connections": args.connections,
        "accepted_s": accepted_s,
        "saves_per_s": args.burst / accepted_s,
        "converged_s": converged[1:],
        "after_last_save_s": [c - accepted_s for c in converged[1:]],
        "wrong": wrong,
        "ok": not any(wrong.values()),
    }
    if args.catch_up:
        result["catch_up"] = await catch_up(nodes, names, args)
    return result


async def catch_up(nodes: list[Node], names: list[str], args: Any) -> dict[str, Any]:
    """``tier1`` stopped (SIGTERM) while the top changes every burst task (``b2``) and saves
    the sentinel again, then started again on its data and port: from the top listing it
    linked to each tier showing the sentinel, i.e. the burst replicated at the link's own pace
    (change by change from tier1's cursor; the tiers below tier1 first relink to it, after
    their own reconnect backoff, then take the full set and the rest)."""
    top, tier1 = nodes[0], nodes[1]
    await tier1.proc.stop()
    _t0, accepted_s = await save_burst(top, names, "b2", args)
    async with top.admin() as c:
        await c.call("task.add", document=task("burst-sentinel", "caught-up"))
    started = time.perf_counter()
    await tier1.proc.start()
    poll_s = args.poll_ms / 1000
    async with contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(top.admin())
        readers = [await stack.enter_async_context(n.admin()) for n in nodes[1:]]

        async def linked() -> float:
            while True:
                rows = await watcher.call("children.list")
                if any(r.get("name") == tier1.name and r.get("connected") for r in rows):
                    return time.perf_counter() - started
                await asyncio.sleep(poll_s)

        found = await asyncio.wait_for(
            asyncio.gather(
                linked(),
                *(arrival(r, "burst-sentinel", "caught-up", started, poll_s, []) for r in readers),
            ),
            args.timeout_s,
        )
        wrong = {
            n.name: await mismatches(r, names, "b2")
            for n, r in zip(nodes[1:], readers, strict=True)
        }
    return {
        "changes": len(names),
        "accepted_s": accepted_s,
        "start_to_linked_s": found[0],
        "converged_after_link_s": [t - found[0] for t in found[1:]],
        "wrong": wrong,
        "ok": not any(wrong.values()),
    }


async def mismatches(c: AdminClient, names: list[str], marker: str) -> list[str]:
    """Names of the burst that one NS lacks or holds at another version (first 10)."""
    have = {
        t["name"]: f"echo {marker}" in json.dumps(t.get("params"))
        for t in await c.call("tasks.list", timeout_s=120)
        if str(t.get("name", "")).startswith("burst-")
    }
    wrong = [n for n in names if not have.get(n)]
    extra = sorted(set(have) - set(names) - {"burst-sentinel"})
    return (wrong + extra)[:10]


# -- one depth, the suite, the report ----------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile by nearest rank (20 samples: p95 is the 19th)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def one_depth(args: Any, depth: int, root: Path) -> dict[str, Any]:
    nodes = await start_chain(root, depth)
    try:
        t_start = time.perf_counter()
        cpu0 = {n.name: n.proc.cpu_s() for n in nodes}
        samples = await single_changes(nodes, args)
        tiers = []
        for t in range(depth):
            lags = [s[t][0] for s in samples]
            misses = [s[t][1] for s in samples]
            tiers.append(
                {
                    "tier": t + 1,
                    "ns": nodes[t + 1].name,
                    "median_s": statistics.median(lags),
                    "p95_s": percentile(lags, 95),
                    "max_s": max(lags),
                    "lags_s": lags,
                    "last_miss_median_s": statistics.median(misses),
                    "last_miss_s": misses,
                }
            )
        result: dict[str, Any] = {"depth": depth, "single": tiers}
        if args.burst:
            result["burst"] = await burst(nodes, args)
        result["wall_s"] = time.perf_counter() - t_start
        result["cpu_s"] = {n.name: n.proc.cpu_s() - cpu0[n.name] for n in nodes}
        result["log_problems"] = {n.name: dict(n.proc.log_problems()) for n in nodes}
        return result
    finally:
        for n in reversed(nodes):
            await n.proc.stop()


def render(suite: dict[str, Any]) -> str:
    m = suite["machine"]
    src = suite["source"]
    lines = [
        "",
        "taskfleet hierarchy bench (every NS a process; lag = save sent on hq -> task.show on the"
        f" tier answers that version; a single change asked every {suite['poll_ms']} ms on each of"
        f" {suite.get('pollers', 1)} connections per tier in turn, a burst's end every"
        f" {suite['poll_ms']} ms)",
        f"machine: {m['nproc']} CPUs, Python {m['python']}; CPU speed (M steps/s, before /"
        f" after): {m['calibration_before']:.1f} / {m.get('calibration_after', 0):.1f}",
        f"command: {suite['command']}",
        f"source: commit {src.get('commit', '?')}, sources sha256 {src['sources_sha256']}"
        + (
            f", uncommitted changes in {len(src['uncommitted'])} files"
            if src.get("uncommitted")
            else ""
        ),
    ]
    if src.get("changed_during_bench"):
        lines.append("WARNING: the product's sources changed while the bench ran: discard these")
    rows = [
        (
            "depth", "tier", "one change: median (last miss)", "p95", "max", "burst: converged",
            "after last save", "catch-up after link", "all there",
        )
    ]  # fmt: skip
    for r in suite["results"]:
        b = r.get("burst")
        cu = (b or {}).get("catch_up")
        for i, t in enumerate(r["single"]):
            ok = [x["wrong"][t["ns"]] for x in (b, cu) if x]
            rows.append(
                (
                    str(r["depth"]),
                    f"{t['tier']} ({t['ns']})",
                    f"{t['median_s']:.3f} s ({t.get('last_miss_median_s', 0):.3f} s)",
                    f"{t['p95_s']:.3f} s",
                    f"{t['max_s']:.3f} s",
                    f"{b['converged_s'][i]:.2f} s" if b else "-",
                    f"{b['after_last_save_s'][i]:.2f} s" if b else "-",
                    f"{cu['converged_after_link_s'][i]:.2f} s" if cu else "-",
                    ("yes" if not any(ok) else "NO") if ok else "-",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in suite["results"]:
        b = r.get("burst")
        if b:
            lines.append(
                f"depth {r['depth']}: burst of {b['changes']} accepted by hq in"
                f" {b['accepted_s']:.2f} s ({b['saves_per_s']:.0f} saves/s over"
                f" {b['connections']} connections)"
            )
        cu = (b or {}).get("catch_up")
        if cu:
            lines.append(
                f"depth {r['depth']}: catch-up: {cu['changes']} changes made while tier1 was"
                f" stopped (accepted in {cu['accepted_s']:.2f} s); tier1 started again and"
                f" linked after {cu['start_to_linked_s']:.2f} s"
            )
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_s"].items())
        lines.append(f"depth {r['depth']}: CPU s over the runs: {cpu}; wall {r['wall_s']:.1f} s")
        for name, problems in r["log_problems"].items():
            if problems:
                lines.append(f"depth {r['depth']}: {name} logged {problems}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiers", type=_ints, default=[1, 3], help="depths below hq: 1,3 (default)")
    p.add_argument("--samples", type=int, default=20, help="single changes per depth")
    p.add_argument("--burst", type=int, default=10_000, help="changes in the burst (0: none)")
    p.add_argument(
        "--connections", type=int, default=16, help="admin connections the burst is saved over"
    )
    p.add_argument(
        "--poll-ms", type=int, default=25, help="how often each poller asks its tier (>= 20)"
    )
    p.add_argument(
        "--pollers",
        type=int,
        default=3,
        help="connections asking each tier in turn, for a single change (default 3: about every"
        " 8 ms; more asks faster but loads the NS measured and this process: at 5 per tier, the"
        " three tiers' lags grew by half)",
    )
    p.add_argument(
        "--no-catch-up",
        dest="catch_up",
        action="store_false",
        help="skip the catch-up: tier1 stopped through a second burst, then started again",
    )
    p.add_argument("--gap-s", type=float, default=0.3, help="pause between single changes")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="bound on each wait")
    p.add_argument("--json-out", help="also write every figure as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders (logs, DBs)")
    p.add_argument("--label", help="a note kept with the figures")
    args = p.parse_args(argv)
    if min(args.tiers) < 1 or args.samples < 1 or args.burst < 0 or args.pollers < 1:
        p.error("--tiers, --samples and --pollers must be at least 1, --burst at least 0")
    # The NS's admin rate limit refills 50 requests a second per connection.
    if args.poll_ms < 20:
        p.error("--poll-ms below 20 would exceed the NS's admin rate limit (50 requests/s)")
    return args


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
            "calibration_before": calibrate(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "source": source_fingerprint(),
        "poll_ms": args.poll_ms,
        "pollers": args.pollers,
        "label": args.label,
        "results": [],
    }
    for depth in args.tiers:
        tmp = tempfile.mkdtemp(prefix="taskfleet-hier-")
        try:
            print(f"bench: depth {depth} ...", flush=True)
            suite["results"].append(await one_depth(args, depth, Path(tmp)))
        finally:
            if args.keep:
                print(f"bench: kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        print(render(suite), flush=True)  # so far: each depth's figures as they land
        if args.json_out:
            with open(args.json_out, "w", encoding="utf-8") as fh:
                json.dump(suite, fh, indent=2, sort_keys=True)
    suite["machine"]["calibration_after"] = calibrate()
    end = source_fingerprint()
    if end["sources_sha256"] != suite["source"]["sources_sha256"]:
        suite["source"]["changed_during_bench"] = end
    print(render(suite))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(suite, fh, indent=2, sort_keys=True)
        print(f"\nbench: figures written to {args.json_out}")
    ok = all(
        r.get("burst", {}).get("ok", True)
        and r.get("burst", {}).get("catch_up", {}).get("ok", True)
        for r in suite["results"]
    )
    return 0 if ok and not suite["source"].get("changed_during_bench") else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    return run_main(amain(args))


if __name__ == "__main__":
    sys.exit(main())
