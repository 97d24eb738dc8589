"""A relay's limits on live output (review L10): a piece's size is counted in UTF-8 bytes, not
characters, and one computer's pieces pass at a bounded rate, the rest dropped and counted, so
one agent cannot push every other computer's pieces out of the relay's queue."""

from __future__ import annotations

from protocol.messages import LIVE_TEXT_BYTES, Live, Report
from taskserver.live import BURST, RATE_PER_S, LiveQueue, Rate, fits


def _piece(text: str) -> Report:
    return Report(instance_id=1, state="running", live=Live(text=text))


def test_size_is_counted_in_utf8_bytes():
    assert fits(_piece("a" * LIVE_TEXT_BYTES))
    assert not fits(_piece("a" * (LIVE_TEXT_BYTES + 1)))
    assert fits(_piece("字" * (LIVE_TEXT_BYTES // 3)))  # 3 bytes each
    assert not fits(_piece("字" * (LIVE_TEXT_BYTES // 3 + 1)))
    assert not fits(_piece("😀" * LIVE_TEXT_BYTES))  # 4096 characters, 16 KiB
    assert not fits(Report(instance_id=1, state="running"))


def test_one_computer_gets_a_burst_then_its_rate_and_others_are_not_held_back():
    rate = Rate()
    now = 1000.0
    assert [rate.take("loud", now) for _ in range(BURST + 3)] == [True] * BURST + [False] * 3
    assert rate.take("quiet", now)  # another computer's pieces still pass
    assert not rate.take("loud", now + 0.9 / RATE_PER_S)
    assert rate.take("loud", now + 1.0 / RATE_PER_S)
    later = now + 60.0  # idle: the bucket is full again, never over BURST
    assert [rate.take("loud", later) for _ in range(BURST + 1)] == [True] * BURST + [False]


def test_the_queue_counts_pieces_over_the_rate_as_dropped():
    queue = LiveQueue(0.05, wake=lambda: None, spawn=lambda _: None, log=None)
    admitted = [queue.admit("pc-1") for _ in range(BURST + 10)]
    assert admitted.count(True) >= BURST
    assert queue.stats["live_dropped"] == admitted.count(False) >= 1
