"""agent.hold: many holders, one timer, each flushed after its own hold time, in order."""

from __future__ import annotations

import asyncio

from agent.hold import HoldClock, hold_clock


async def test_each_holder_is_flushed_once_after_its_hold_in_order_unless_released() -> None:
    """Holders that begin at different moments are each flushed once, no sooner than
    ``hold_s`` after their first hold, in the order they began; a second hold while waiting
    changes nothing; a released holder is never flushed; the clock ends empty."""
    loop = asyncio.get_running_loop()
    clock = HoldClock(loop, 0.05)
    began: dict[str, float] = {}
    flushed: list[tuple[str, float]] = []
    done = asyncio.Event()

    def holder(name: str) -> None:
        def flush() -> None:
            flushed.append((name, loop.time()))
            if len(flushed) == 3:
                done.set()

        began.setdefault(name, loop.time())
        clock.hold(name, flush)

    holder("a")
    holder("b")
    holder("gone")
    await asyncio.sleep(0.02)
    holder("c")
    holder("a")  # already waiting: still flushed once, from its first hold
    clock.release("gone")
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.1)  # nothing more comes
    assert [name for name, _ in flushed] == ["a", "b", "c"]
    resolution = 0.002
    for name, at in flushed:
        assert at - began[name] >= 0.05 - resolution, (name, at - began[name])
    assert len(clock) == 0


async def test_a_thousand_holders_share_one_timer_of_the_loop() -> None:
    """A thousand holders on the running loop's clock put one timer, not a thousand, into the
    loop's scheduled timers; all are flushed."""
    loop = asyncio.get_running_loop()
    clock = hold_clock(0.05)
    assert hold_clock(0.05) is clock
    flushed: list[int] = []
    done = asyncio.Event()

    def flush(i: int) -> None:
        flushed.append(i)
        if len(flushed) == 1000:
            done.set()

    before = len(loop._scheduled)  # type: ignore[attr-defined]
    for i in range(1000):
        clock.hold(i, lambda i=i: flush(i))
    assert len(loop._scheduled) == before + 1  # type: ignore[attr-defined]
    await asyncio.wait_for(done.wait(), 5)
    assert flushed == list(range(1000))
