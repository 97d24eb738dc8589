"""The NS on PostgreSQL beside SQLite, in one run (issue 23): the barrier of a one-step server
job (``step``: a noop on every agent, then a server task) at N agents behind two TS.

Each store gets its own fleet (``bench.fleet.bench``: an NS, two TS processes, N simulated
agents in this process) in the order SQLite, PostgreSQL, PostgreSQL, SQLite, so this
machine's drift falls on both alike; the figure is the ratio of their medians. PostgreSQL is
the one ``--database`` names, or a private cluster started here (``tests/pgcluster.py``) with
fsync on and ``synchronous_commit`` off: the promise the NS's SQLite makes in WAL with
``synchronous=NORMAL`` (a crash may lose the last commits, never corrupt). It runs on this
machine, over its unix socket: a PostgreSQL across a network adds its round trip per statement.

    python -m bench.pgstore --agents 1000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

import bench.fleet
from bench.procs import ServerProc, _kill_leftovers, raise_nofile
from bench.run import _ints, configure_logging
from bench.run import parse_args as bench_args
from runtime import heap
from tests import pgcluster


def _on_database(url: str | None) -> type[ServerProc]:
    """``ServerProc`` whose NS keeps its tables at ``url`` (None: SQLite, as it is)."""

    class OnDatabase(ServerProc):
        def __init__(self, name: str, args: list[str], log_path: Path):
            if url is not None and args[:1] == ["server"]:
                args = [*args, "--database", url]
            super().__init__(name, args, log_path)

    return OnDatabase


async def _fresh(cluster: pgcluster.Cluster) -> str:
    name = pgcluster.fresh_name()
    conn = await asyncpg.connect(cluster.url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return cluster.database_url(name)


async def one(args: argparse.Namespace, n: int, database: str | None) -> list[float]:
    """One fleet on one store: its barriers (seconds)."""
    bench.fleet.ServerProc = _on_database(database)  # type: ignore[misc]
    tmp = tempfile.mkdtemp(prefix="taskfleet-pgbench-")
    try:
        res = await bench.fleet.bench(args, n, 2, Path(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    runs = res["scenarios"]["step"] if "scenarios" in res else res["step"]
    return [float(r["barrier_s"]) for r in runs if r["barrier_s"] is not None]


async def amain(ns: argparse.Namespace) -> dict[str, Any]:
    args = bench_args(
        ["--scenarios", "step", "--repeat", str(ns.repeat), "--no-floor", "--idle-s", "0"]
        + ["--connect-timeout", str(ns.connect_timeout)]
        + (["--insecure"] if ns.insecure else [])
    )
    cluster = pgcluster.Cluster(url=ns.database) if ns.database else None
    if cluster is None:
        cluster = await asyncio.to_thread(pgcluster.start, durable=True, use_env=False)
    out: dict[str, Any] = {"repeat": ns.repeat, "results": []}
    try:
        for n in ns.agents:
            barriers: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
            for store in ("sqlite", "postgresql", "postgresql", "sqlite"):
                url = await _fresh(cluster) if store == "postgresql" else None
                print(f"pgstore: N={n} on {store} ...", flush=True)
                barriers[store] += await one(args, n, url)
            med = {k: statistics.median(v) for k, v in barriers.items()}
            row = {
                "agents": n,
                "barriers_s": barriers,
                "median_s": med,
                "ratio": med["postgresql"] / med["sqlite"],
            }
            out["results"].append(row)
            print(
                f"pgstore: N={n}: barrier median SQLite {med['sqlite']:.3f} s,"
                f" PostgreSQL {med['postgresql']:.3f} s: {row['ratio']:.2f}x",
                flush=True,
            )
    finally:
        if not ns.database:
            await asyncio.to_thread(cluster.stop)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=_ints, default=[1000], help="N, or a list: 1000,10000")
    p.add_argument("--repeat", type=int, default=5, help="barriers per fleet (two fleets each)")
    p.add_argument(
        "--database", help="a PostgreSQL URL whose server may create databases (default: private)"
    )
    p.add_argument("--insecure", action="store_true", help="plain ws:// instead of TLS")
    p.add_argument(
        "--connect-timeout", type=float, default=600.0, help="seconds for each fleet to connect"
    )
    p.add_argument("--json-out", help="also write the figures as JSON to this file")
    ns = p.parse_args(argv)
    raise_nofile()
    configure_logging()
    heap.tune_gc(many_agents=True)
    try:
        out = asyncio.run(amain(ns))
    finally:
        _kill_leftovers()
    if ns.json_out:
        Path(ns.json_out).write_text(json.dumps(out, indent=2, sort_keys=True))
    ok = all(r["ratio"] <= 1.5 for r in out["results"])
    print(json.dumps(out["results"], indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
