"""runtime.heap: freed heap memory goes back to the OS after a burst."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtime import heap


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
        "from runtime import heap\n"
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


def test_settle_collects_what_is_not_frozen_freezes_the_rest_and_a_full_settle_frees_old_cycles() -> (
    None
):
    """In a fresh server-like process (``tune_gc()``): ``settle`` frees a cycle made since the
    last freeze and freezes what is still alive; a cycle among frozen objects survives a plain
    settle and is freed by a full one. In a process that did not call ``tune_gc`` (a test running
    a server in-process) ``settle`` does nothing."""
    code = (
        "import gc, json, weakref\n"
        "from runtime import heap\n"
        "class Node: pass\n"
        "def cycle():\n"
        "    a, b = Node(), Node(); a.b, b.a = b, a\n"
        "    return a\n"
        "out = [heap.settle()]\n"  # not tuned: a no-op
        "heap.tune_gc()\n"
        "garbage = weakref.ref(cycle())\n"  # unreachable at once
        "kept = cycle(); old = weakref.ref(kept)\n"
        "frozen = gc.get_freeze_count()\n"
        "out += [heap.settle(), garbage() is None, gc.get_freeze_count() > frozen]\n"
        "del kept\n"  # now garbage, but frozen
        "heap.settle(); out.append(old() is not None)\n"
        "heap.settle(full=True); out.append(old() is None)\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == [False, True, True, True, True, True]
