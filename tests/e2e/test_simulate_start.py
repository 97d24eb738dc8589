"""`taskfleet simulate` at scale: agents started at a rate (``--start-rate``), and workers that
end with the process that started them (bench/scale.py's runs of 30,000 and more). Linux: the workers end through PR_SET_PDEATHSIG."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from admin.simulate import start_agents
from tests.helpers import Fleet, until


class _Agent:
    """Only what ``start_agents`` uses of an agent: a ``run`` that lasts until released."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.started = False

    async def run(self) -> None:
        self.started = True
        await self.release.wait()


async def test_agents_start_in_batches_at_the_rate_given_and_all_at_once_without_one():
    release = asyncio.Event()
    agents = [_Agent(release) for _ in range(50)]
    tasks: list[asyncio.Task[None]] = []
    # 100 a second: batches of 10, one every tenth of a second.
    starting = asyncio.create_task(start_agents(agents, tasks, 100.0))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert len(tasks) == 10
    await starting
    assert len(tasks) == 50
    await asyncio.sleep(0)
    assert all(a.started for a in agents)

    at_once: list[asyncio.Task[None]] = []
    await start_agents([_Agent(release) for _ in range(50)], at_once, 0.0)  # type: ignore[arg-type]
    assert len(at_once) == 50
    release.set()
    await asyncio.gather(*tasks, *at_once)


def test_a_negative_start_rate_is_a_usage_error():
    done = subprocess.run(
        [sys.executable, "-m", "admin", "simulate", "--server", "wss://127.0.0.1:1",
         "--agents", "1", "--start-rate", "-1", "--insecure"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--start-rate" in done.stderr


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
            found += [int(p) for p in fh.read().split()]
    return found


async def test_workers_end_when_worker_zero_is_killed(fleet: Fleet):
    """SIGKILL leaves worker 0 no chance to stop its workers: they must end by themselves
    rather than keep their agents retrying an NS nobody measures any more."""
    await fleet.server()
    await fleet.taskserver("ts-1")
    sim = await fleet.simulate(4, processes=2)
    assert sim.proc is not None
    pid = sim.proc.pid

    async def started() -> list[int]:
        return _children(pid)

    workers = await until(started, "worker 1 started", 30)
    sim.kill(signal.SIGKILL)

    async def gone() -> bool:
        return all(not os.path.exists(f"/proc/{w}") or _zombie(w) for w in workers)

    # The workers first: they hold worker 0's stdout pipe, and asyncio's wait() returns only
    # once every pipe is closed, so waiting for worker 0 first would wait for them anyway.
    await until(gone, "the workers ended with worker 0", 30)
    await sim.wait()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
