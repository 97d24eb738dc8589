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

This file holds the command (options, the suite, the floors, the JSON); its parts are
``bench/fleet.py`` (one configuration: servers, agents, scenarios), ``bench/procs.py`` (child
processes, ``/proc`` readings, py-spy) and ``bench/report.py`` (medians and the printed table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from bench import floor  # noqa: E402
from bench.fleet import SCENARIOS, bench  # noqa: E402
from bench.procs import calibrate, raise_nofile, run_main  # noqa: E402
from bench.report import render, summarise  # noqa: E402
from runtime import heap  # noqa: E402

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


# -- the floor, and the command --------------------------------------------------------------


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
    return run_main(amain(args))


if __name__ == "__main__":
    sys.exit(main())
