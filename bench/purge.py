"""Retention purge vs. a barrier: does a purge of a large database lengthen a server-job step?

    python bench/purge.py --instances 1000000 --agents 200 --rounds 5 [--json-out purge.json]

1. Builds an NS database with ``--instances`` instances in ended runs (1,000 per run, with
   their step rows), by direct SQL inserts into a real NS database file (the schema made by the
   NS's own migrations), their runs ended 60 days ago: inside the 90 days the NS keeps.
2. Starts the NS (``--retention-runs 90d``) as a process and ``taskfleet simulate --agents N``
   against it, saves the bench's tasks and jobs (``bench/fleet.py``).
3. Baseline: ``--rounds`` runs of a one-step server job (``bench-step``: a noop client step on
   every agent, then a server task; the time to that second step is the barrier).
4. Ages those runs by 100 days (one UPDATE through a second connection to the live file), starts
   ``taskfleet purge`` (an admin request, in the background) and runs the barrier again and
   again while the purge runs; only rounds that began and ended while it ran count.

Reported: the barrier's median without and with the purge, their ratio, the purge's duration
and rows. Children are killed on exit (``bench/procs.py``). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/purge.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

from admin.client import AdminClient  # noqa: E402
from bench.fleet import DOCUMENTS, one_run, until  # noqa: E402
from bench.procs import ServerProc, _end, _spawn  # noqa: E402
from runtime.tls import ClientTrust  # noqa: E402
from server.store import Store  # noqa: E402

PER_RUN = 1_000
DAY_S = 86_400.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--instances", type=int, default=1_000_000, help="old instances to build")
    p.add_argument("--agents", type=int, default=200, help="simulated agents")
    p.add_argument("--rounds", type=int, default=5, help="baseline barrier rounds")
    p.add_argument("--timeout-s", type=float, default=300.0, help="per run")
    p.add_argument("--dir", help="work folder (default: a temporary one, deleted)")
    p.add_argument("--json-out", help="write the result as JSON here")
    return p.parse_args(argv)


def build(db_path: Path, instances: int) -> dict[str, Any]:
    """Runs ended 60 days ago holding ``instances`` instances (and two step rows each), in a
    database the NS's migrations made (``_migrate``)."""
    t0 = time.perf_counter()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA synchronous=OFF")
    ended = time.time() - 60 * DAY_S
    definition = json.dumps({"name": "old", "kind": "client", "type": "noop", "timeout_s": 60})
    runs = max(1, instances // PER_RUN)
    with db:
        for r in range(runs):
            cur = db.execute(
                "INSERT INTO runs(task_name, kind, definition, status, created_at, deadline,"
                " ended_at) VALUES ('old', 'client', ?, 'succeeded', ?, ?, ?)",
                (definition, ended - 60, ended, ended + r * 1e-3),
            )
            run_id = cur.lastrowid
            db.executemany(
                "INSERT INTO steps(run_id, step, task, deadline, started_at) VALUES (?, ?, ?, ?, ?)",
                [(run_id, s, definition, ended, ended - 60) for s in ("", "next")],
            )
            n = min(PER_RUN, instances - r * PER_RUN) if r < runs - 1 else instances - r * PER_RUN
            db.executemany(
                "INSERT INTO instances(run_id, computer, route, status, dispatched, output,"
                " started_at, ended_at, updated_at, epoch) VALUES (?, ?, '@ns', 'succeeded', 1,"
                " 'ok', ?, ?, ?, 1)",
                ((run_id, f"old-{i:05d}", ended - 30, ended, ended) for i in range(n)),
            )
    (count,) = db.execute("SELECT count(*) FROM instances").fetchone()
    db.close()
    return {"runs": runs, "instances": int(count), "build_s": time.perf_counter() - t0}


async def _migrate(db_path: Path) -> None:
    store = await Store.open(str(db_path))
    await store.close()


def age(db_path: Path) -> int:
    """Move the old runs' end time back 100 days (past the 90 days kept), on the live file."""
    db = sqlite3.connect(db_path, timeout=30)
    with db:
        cur = db.execute(
            "UPDATE runs SET ended_at = ended_at - ? WHERE task_name='old'", (100 * DAY_S,)
        )
    db.close()
    return int(cur.rowcount)


async def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    data = root / "ns"
    data.mkdir(parents=True, exist_ok=True)
    print(f"purge bench: building {args.instances} instances ...", flush=True)
    await _migrate(data / "server.db")
    built = await asyncio.to_thread(build, data / "server.db", args.instances)
    result: dict[str, Any] = {"agents": args.agents, "built": built}
    print(f"purge bench: built in {result['built']['build_s']:.1f} s", flush=True)
    ns = ServerProc(
        "ns",
        ["server", "--data", str(data), "--listen", "127.0.0.1:0", "--insecure",
         "--retention-runs", "90d"],
        root / "ns.log",
    )  # fmt: skip
    sim = None
    try:
        await ns.start()
        token = (data / "admin.token").read_text().strip()
        trust = ClientTrust(insecure=True)
        async with AdminClient(ns.url, token, trust, identity="bench") as client:
            enrol = (await client.call("tokens.create", ttl_s=86_400, uses=args.agents + 10))[
                "token"
            ]
            for op, texts in DOCUMENTS.items():
                for text in texts:
                    await client.call(op, text=text, filename="bench.toml")
            sim = await _spawn(
                [sys.executable, "-m", "admin", "simulate", "--server", ns.url, "--insecure",
                 "--agents", str(args.agents), "--processes", "1", "--enrol-token", enrol],
                root / "simulate.log",
                asyncio.subprocess.DEVNULL,
            )  # fmt: skip

            async def online() -> bool:
                rows = await client.call("computers.list")
                return sum(1 for r in rows if r["online"]) >= args.agents

            await until(online, f"{args.agents} agents online", 120, 0.2)
            procs = {"ns": ns}
            await one_run(client, "bench-step", args.timeout_s, procs)  # warm-up
            baseline = [
                (await one_run(client, "bench-step", args.timeout_s, procs))["barrier_s"]
                for _ in range(args.rounds)
            ]
            result["aged_runs"] = age(data / "server.db")
            async with AdminClient(ns.url, token, trust, identity="bench-purge") as purger:
                t0 = time.perf_counter()
                purging = asyncio.create_task(purger.call("purge", timeout_s=3600))
                during: list[float] = []
                while not purging.done():
                    run = await one_run(client, "bench-step", args.timeout_s, procs)
                    if not purging.done():  # began and ended while the purge ran
                        during.append(run["barrier_s"])
                purged = await purging
                result["purge_s"] = time.perf_counter() - t0
        result["purged"] = {k: purged[k] for k in ("runs", "instances", "steps")}
        result["baseline_s"] = baseline
        result["during_purge_s"] = during
        base, busy = statistics.median(baseline), statistics.median(during) if during else None
        result["baseline_median_s"] = base
        result["during_median_s"] = busy
        result["ratio"] = busy / base if busy is not None and base else None
        return result
    finally:
        await _end(sim, 15, 10)
        await ns.stop()


def render(r: dict[str, Any]) -> str:
    ratio = (
        "n/a (the purge ended before a round did)" if r["ratio"] is None else f"{r['ratio']:.2f}"
    )
    during = r["during_median_s"]
    return "\n".join(
        [
            f"built: {r['built']['instances']} instances in {r['built']['runs']} runs"
            f" ({r['built']['build_s']:.1f} s)",
            f"agents: {r['agents']}",
            f"barrier without purge: median {r['baseline_median_s'] * 1000:.0f} ms"
            f" over {len(r['baseline_s'])} rounds",
            "barrier during purge:  "
            + (f"median {during * 1000:.0f} ms" if during is not None else "-")
            + f" over {len(r['during_purge_s'])} rounds",
            f"ratio (during / without): {ratio}",
            f"purge: {r['purged']['instances']} instances, {r['purged']['runs']} runs"
            f" in {r['purge_s']:.1f} s",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dir:
        root = Path(args.dir)
        result = asyncio.run(measure(args, root))
    else:
        with tempfile.TemporaryDirectory(prefix="taskfleet-purge-") as tmp:
            result = asyncio.run(measure(args, Path(tmp)))
    print(render(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
