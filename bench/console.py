"""The console's Run page with thousands of computers: how late the grid is, how smooth it stays.

    python bench/console.py --agents 10000 [--simulators 2] [--task-delay-ms 5000] [--json-out F]

1. Starts an NS (TLS, the console on ``--admin-port``) and ``--simulators`` ``taskfleet simulate``
   processes sharing ``--agents`` agents (each enrolled with a token read from a 0600 file), and
   saves a no-op task. Simulated agents end a task after ``--task-delay-ms``: long enough for the
   page to be open and following the run before the first result arrives.
2. Opens the console in the system's headless Chromium (Playwright), signs in, and starts a
   ``requestAnimationFrame`` counter in the page: every frame's time, and the first frame in which
   the Run page (``window.__taskfleetRunPage``, kept by static/js/pages/run.js) shows every
   computer in a final state.
3. Starts the run on every computer (``run.start``), opens ``#/run/ID``, and waits for the
   page to show every computer final and for the run to end on the NS (``run.watch``).
4. Reads when the NS stored the run's last result: the newest ``updated_at`` of its instances
   in the NS's database (the NS's ``time.time()`` as it wrote that batch, a little before its
   commit: so the lag below is, if anything, over-stated).

Reported: the grid's lag (from the last result stored on the NS to the first frame showing all
computers final; both are this machine's wall clock), frames per second and the longest frame
while results stream in (from the first result shown to the last), and the page's JavaScript
heap. Children are killed on exit (``bench/procs.py``). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/console.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

from playwright.async_api import Page, async_playwright  # noqa: E402

from admin.client import AdminClient  # noqa: E402
from bench.fleet import NOOP, until  # noqa: E402
from bench.procs import ServerProc, _end, _spawn, raise_nofile  # noqa: E402
from runtime.tls import ClientTrust  # noqa: E402

FRAME_COUNTER = """(total) => {
    const b = {frames: [], firstShownAt: null, doneAt: null, doneWall: null};
    window.__bench = b;
    function tick(t) {
        b.frames.push(t);
        const rp = window.__taskfleetRunPage;
        if (rp && b.firstShownAt === null && rp.shown > 0) b.firstShownAt = t;
        if (rp && b.doneAt === null && rp.shown >= total) { b.doneAt = t; b.doneWall = Date.now(); }
        if (b.doneAt === null) requestAnimationFrame(tick);
    }
    requestAnimationFrame(tick);
}"""
"""Counts the page's frames and notes the first one in which every computer shows final."""

READOUT = """() => {
    const b = window.__bench, rp = window.__taskfleetRunPage || {};
    const inside = b.frames.filter(t => t >= b.firstShownAt && t <= b.doneAt);
    let longest = 0;
    for (let i = 1; i < inside.length; i++) longest = Math.max(longest, inside[i] - inside[i - 1]);
    const heap = performance.memory ? performance.memory.usedJSHeapSize : null;
    return {streamMs: b.doneAt - b.firstShownAt, frames: inside.length, longestMs: longest,
            doneWall: b.doneWall, pageFrames: rp.frames ?? null, heap};
}"""
"""What the counter saw, read once the grid is complete."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", type=int, default=10_000, help="simulated computers")
    p.add_argument(
        "--simulators", type=int, default=2, help="`taskfleet simulate` processes (default 2)"
    )
    p.add_argument(
        "--task-delay-ms", type=int, default=5_000, help="how long each simulated task takes"
    )
    p.add_argument(
        "--fail-rate", type=float, default=0.0, help="share of simulated tasks that fail (0 to 1)"
    )
    p.add_argument("--timeout-s", type=float, default=600.0, help="bound on each wait")
    p.add_argument("--chromium", default="", help="the browser (default: chromium on PATH)")
    p.add_argument("--dir", help="work folder (default: a temporary one, deleted)")
    p.add_argument("--json-out", help="write the result as JSON here")
    p.add_argument("--screenshot", help="a PNG of the Run page once the grid is complete")
    return p.parse_args(argv)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_simulators(
    ns: ServerProc, token_file: Path, args: argparse.Namespace, root: Path
) -> list[asyncio.subprocess.Process]:
    """``--simulators`` processes of ``taskfleet simulate``, the agents shared out among them,
    each with its own name prefix so no two claim one name."""
    sims = []
    share, extra = divmod(args.agents, args.simulators)
    for i in range(args.simulators):
        n = share + (1 if i < extra else 0)
        sims.append(
            await _spawn(
                [sys.executable, "-m", "admin", "simulate", "--server", ns.url,
                 "--server-fingerprint", ns.fingerprint, "--agents", str(n), "--processes", "1",
                 "--prefix", f"sim{i}", "--task-delay-ms", str(args.task_delay_ms),
                 "--fail-rate", str(args.fail_rate),
                 "--enrol-token-file", str(token_file)],
                root / f"simulate-{i}.log",
                asyncio.subprocess.DEVNULL,
            )
        )  # fmt: skip
    return sims


async def sign_in(page: Page, url: str, token: str, timeout_ms: float) -> None:
    await page.goto(url)
    await page.get_by_test_id("signin-token").fill(token)
    await page.get_by_test_id("signin-submit").click()
    await page.locator('[data-page="fleet"]').wait_for(timeout=timeout_ms)


async def follow_to_end(client: AdminClient, run_id: int) -> dict[str, Any]:
    """The run as the NS tells a watcher it ended (counts only: not 10,000 rows)."""
    async for kind, data in client.watch(run_id, instances=False):
        if kind == "run":
            return data
    raise RuntimeError("the watch ended before the run did")


def last_stored(db_path: Path, run_id: int) -> float:
    """When the NS stored the run's last result (its wall clock), read from its live database."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        (at,) = db.execute(
            "SELECT max(updated_at) FROM instances WHERE run_id=?", (run_id,)
        ).fetchone()
    finally:
        db.close()
    return float(at)


async def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    chromium = args.chromium or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        raise SystemExit("console bench: Chromium is missing (apt-get install chromium)")
    raise_nofile()
    port = free_port()
    ns = ServerProc(
        "ns",
        ["server", "--data", str(root / "ns"), "--listen", "127.0.0.1:0",
         "--admin-port", str(port)],
        root / "ns.log",
    )  # fmt: skip
    sims: list[asyncio.subprocess.Process] = []
    timeout_ms = args.timeout_s * 1000
    try:
        await ns.start()
        token = (root / "ns" / "admin.token").read_text().strip()
        trust = ClientTrust(fingerprint=ns.fingerprint)
        async with AdminClient(ns.url, token, trust, identity="bench") as client:
            made = await client.call("tokens.create", ttl_s=86_400, uses=args.agents + 10)
            token_file = root / "enrol.token"
            token_file.write_text(made["token"])
            token_file.chmod(0o600)
            await client.call("task.add", text=NOOP, filename="bench.toml")
            t0 = time.perf_counter()
            sims = await start_simulators(ns, token_file, args, root)

            async def online() -> bool:
                rows = await client.call("computers.list")
                return bool(sum(1 for r in rows if r["online"]) >= args.agents)

            await until(online, f"{args.agents} agents online", args.timeout_s, 1.0)
            print(f"console bench: {args.agents} agents online in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium, headless=True)
                ctx = await browser.new_context(
                    ignore_https_errors=True, viewport={"width": 1280, "height": 800}
                )
                page = await ctx.new_page()
                page.set_default_timeout(timeout_ms)
                console = f"https://127.0.0.1:{port}/"
                await sign_in(page, console, token, timeout_ms)
                await page.evaluate(FRAME_COUNTER, args.agents)
                started = await client.call("run.start", task="bench-noop", all=True)
                run_id = int(started["run_id"])
                ending = asyncio.create_task(follow_to_end(client, run_id))
                # A hash change, not a load: the frame counter lives on in the same document.
                await page.evaluate("(h) => { location.hash = h; }", f"#/run/{run_id}")
                await page.wait_for_function("() => window.__bench.doneAt !== null")
                seen = await page.evaluate(READOUT)
                final = await asyncio.wait_for(ending, args.timeout_s)
                if args.screenshot:  # once the page has heard the run's end too
                    status = page.get_by_test_id("run-status")
                    await status.and_(page.locator(f'[data-state="{final["status"]}"]')).wait_for()
                    await page.screenshot(path=args.screenshot)
                await browser.close()
            stored_at = last_stored(root / "ns" / "server.db", run_id)
        return {
            "agents": args.agents,
            "simulators": args.simulators,
            "task_delay_ms": args.task_delay_ms,
            "fail_rate": args.fail_rate,
            "run_id": run_id,
            "status": final["status"],
            "counts": final.get("counts"),
            "lag_ms": seen["doneWall"] - stored_at * 1000,
            "stream_s": seen["streamMs"] / 1000,
            "fps": seen["frames"] / (seen["streamMs"] / 1000) if seen["streamMs"] else None,
            "longest_frame_ms": seen["longestMs"],
            "page_frames": seen["pageFrames"],
            "heap_mib": seen["heap"] / 2**20 if seen["heap"] else None,
        }
    finally:
        for sim in sims:
            await _end(sim, 15, 10)
        await ns.stop()


def render(r: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = [
        ("computers", f"{r['agents']} ({r['simulators']} simulate processes)"),
        ("run", f"#{r['run_id']} {r['status']} {r['counts'] or ''}".rstrip()),
        ("last result stored on NS -> grid shows all final", f"{num(r['lag_ms'], '.0f')} ms"),
        ("results streaming in (first shown -> all shown)", f"{num(r['stream_s'], '.1f')} s"),
        ("frames per second while streaming", num(r["fps"], ".1f")),
        ("longest frame while streaming", f"{num(r['longest_frame_ms'], '.0f')} ms"),
        ("page's JS heap at the end", f"{num(r['heap_mib'], '.1f')} MiB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.simulators < 1 or args.agents < 1:
        print("console bench: --agents and --simulators must be at least 1", file=sys.stderr)
        return 2
    if args.dir:
        root = Path(args.dir)
        root.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(measure(args, root))
    else:
        with tempfile.TemporaryDirectory(prefix="taskfleet-console-") as tmp:
            result = asyncio.run(measure(args, Path(tmp)))
    print(render(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
