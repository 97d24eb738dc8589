"""The heap of a process with thousands of connections: hand freed memory back to the operating
system after a burst (glibc's ``malloc_trim``), and collect cycles less often (``tune_gc``).

A burst of connections (ten thousand agents registering at once, a reconnect storm) leaves the
servers' C heap large once the connections are gone: glibc keeps freed blocks for reuse, and
the process stays at its high-water mark. ``malloc_trim(0)`` returns those free pages. It is
cheap (a walk over free blocks, milliseconds) and harmless; where there is no glibc it does
nothing. The NS and the TS call it every ``TRIM_EVERY_S`` (measured: ``docs/performance.md``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

TRIM_EVERY_S = 15.0
GC_THRESHOLDS = (20_000, 20, 10)
"""Python's default is (700, 10, 10): with ten thousand connections' objects alive, a process
collected every 700 allocations, and a full collection (~140 ms) every few seconds of a burst;
18 % of a simulate process's CPU at 3,000 agents, 3.5 % with these (docs/performance.md)."""
MANY_AGENTS_GC_THRESHOLDS = (1_000_000, 20, 10)
"""For a process holding thousands of simulated agents (``taskfleet simulate``, the bench): a
young collection there walks the in-flight objects of every agent at once (50,000-90,000 at
5,000 agents, 20-80 ms each on this VM) and, measured with ``gc.DEBUG_STATS``, finds no garbage
at all: reference counting frees what a step makes. The young count is allocations minus
deallocations, so it rises while a step is in flight and falls back as it ends: at 100,000 a
10,000-agent step still crossed it once or twice (0.1-0.2 s of the process's 1.7 CPU-s per
step); at 1,000,000 only lasting growth crosses it, every few dozen steps. At most a million
objects of cyclic garbage wait a little longer (about 100 MB, in a process that holds 700 MB
for 10,000 agents)."""


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return free heap pages to the OS; True if any were (False where unsupported)."""
    return bool(_TRIM(0)) if _TRIM is not None else False


REFREEZE_EVERY_S = 3600.0
"""How often a settling process walks its whole heap again (``settle(full=True)``), so that
cycles among objects frozen earlier (a closed connection's, say) are freed after all."""

_settles = False


def tune_gc(many_agents: bool = False) -> None:
    """For a long-lived server or simulate process: everything alive at start-up is never
    collected (``gc.freeze``), and the young generation is collected every 20,000 allocations
    (1,000,000 in a process of ``many_agents``). Reference counting still frees almost everything
    at once; only cycles wait longer. A server process also settles its heap when quiet
    (``settle``, from ``trim_periodically``); other processes that import this module (tests
    running servers in-process) never have their objects frozen."""
    global _settles
    gc.freeze()
    gc.set_threshold(*(MANY_AGENTS_GC_THRESHOLDS if many_agents else GC_THRESHOLDS))
    _settles = not many_agents


def settle(full: bool = False) -> bool:
    """Collect what is not frozen (with ``full``, unfreeze and collect everything), then freeze
    what survived. Only in a process that called ``tune_gc`` for a server; returns whether it
    did.

    A TS that ten thousand agents just connected to holds hundreds of thousands of new objects,
    every one alive. The collector promotes them through its generations in steps, and one of
    those steps came in the middle of the next run: a 270-310 ms pause of each TS, and 200 ms of
    the NS, measured with ``gc.callbacks`` at 10,000 agents. Settled at a quiet moment instead,
    they are walked once, then frozen: later collections, automatic ones in the middle of a run
    included, walk only what is newer. Cycles among frozen objects wait for the next full
    settle (``REFREEZE_EVERY_S``)."""
    if not _settles:
        return False
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    return True


async def trim_periodically(
    every_s: float = TRIM_EVERY_S, quiet: Callable[[], bool] | None = None
) -> None:
    """Trim every ``every_s`` seconds until cancelled. With ``quiet`` (no work in flight),
    settle the heap at those moments (``settle``); a full settle at most every
    ``REFREEZE_EVERY_S``, and at least that often, quiet or not."""
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        if quiet is not None:
            now = time.monotonic()
            full = now - last_full >= REFREEZE_EVERY_S
            if full or quiet():
                settle(full)
                if full:
                    last_full = now
        trim()
