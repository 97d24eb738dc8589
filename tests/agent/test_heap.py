"""agent.heap: freed heap memory goes back to the OS after a burst."""

from __future__ import annotations

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
