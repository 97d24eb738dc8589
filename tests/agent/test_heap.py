"""agent.heap: freed heap memory goes back to the OS after a burst."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent import heap


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(
    heap._TRIM is None or not sys.platform.startswith("linux"), reason="needs glibc on Linux"
)
def test_trim_returns_the_pages_of_a_freed_burst() -> None:
    """64 MiB in 4 KiB blocks (the size of a TLS read buffer), freed but for every 64th block
    (which pins the heap, as live connections do): trimming gives most of it back."""
    blocks = [bytearray(4096) for _ in range(16_384)]
    keep = blocks[::64]
    del blocks
    before = _rss_kib()
    assert heap.trim()
    after = _rss_kib()
    assert before - after > 32 * 1024, (before, after)
    assert keep  # still alive


@pytest.mark.parametrize(
    ("many_agents", "expected"),
    [(False, heap.GC_THRESHOLDS), (True, heap.MANY_AGENTS_GC_THRESHOLDS)],
)
def test_tune_gc_freezes_the_start_up_heap_and_still_collects_cycles(
    many_agents: bool, expected: tuple[int, int, int]
) -> None:
    """In a fresh process: after ``tune_gc`` the start-up objects are frozen, the thresholds are
    ``GC_THRESHOLDS`` (``MANY_AGENTS_GC_THRESHOLDS`` for a simulate process), and a reference
    cycle made later is still collected automatically once enough allocations have happened
    (the collector is slowed, not off)."""
    code = (
        "import gc, json, weakref\n"
        "from agent import heap\n"
        f"heap.tune_gc(many_agents={many_agents})\n"
        "class Node: pass\n"
        "a, b = Node(), Node(); a.b, b.a = b, a\n"
        "alive = weakref.ref(a)\n"
        "del a, b\n"
        "junk = [[] for _ in range(gc.get_threshold()[0] * 2)]\n"
        "print(json.dumps([list(gc.get_threshold()), gc.get_freeze_count(), alive() is None]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    thresholds, frozen, collected = json.loads(out)
    assert thresholds == list(expected)
    assert frozen > 1000
    assert collected
