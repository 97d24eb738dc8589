"""Hold something back for a fixed time with one timer per event loop, not one per holder.

An agent holds its progress reports (``received``, ``running``) for ``Agent.PROGRESS_HOLD_S``
in case the result follows at once and replaces them. With a timer per agent, a process of
10,000 simulated agents pushed 10,000 timers into its loop's heap and cancelled them again on
every step (each push and pop compares in Python, 14 levels deep), and every other timer of
the loop was sorted through them. Holders here wait in one ordered queue: they all wait the
same time, so the queue is in order of when each is due, and one timer for its head suffices.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

_EARLY = time.get_clock_info("monotonic").resolution
"""asyncio runs a timer up to one clock resolution before its time: that counts as due."""


class HoldClock:
    """``hold(owner, flush)`` calls ``flush`` ``hold_s`` after the first ``hold`` of ``owner``
    (later holds of a waiting owner change nothing), unless ``release(owner)`` came first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hold_s: float):
        self.loop = loop
        self.hold_s = hold_s
        self._waiting: OrderedDict[Hashable, tuple[float, Callable[[], None]]] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def hold(self, owner: Hashable, flush: Callable[[], None]) -> None:
        if owner in self._waiting:
            return
        due = self.loop.time() + self.hold_s
        self._waiting[owner] = (due, flush)
        if self._timer is None:
            self._timer = self.loop.call_at(due, self._run)

    def release(self, owner: Hashable) -> None:
        """``owner`` no longer waits (it sent what it held). The timer stays: it finds the
        next due owner when it fires, which costs less than moving it on every release."""
        self._waiting.pop(owner, None)

    def _run(self) -> None:
        self._timer = None
        now = self.loop.time() + _EARLY
        while self._waiting:
            owner, (due, flush) = next(iter(self._waiting.items()))
            if due > now:
                self._timer = self.loop.call_at(due, self._run)
                return
            del self._waiting[owner]
            flush()


_CLOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, HoldClock]] = (
    weakref.WeakKeyDictionary()
)


def hold_clock(hold_s: float) -> HoldClock:
    """The running loop's clock for holds of ``hold_s`` seconds."""
    loop = asyncio.get_running_loop()
    clocks = _CLOCKS.setdefault(loop, {})
    clock = clocks.get(hold_s)
    if clock is None:
        clock = clocks[hold_s] = HoldClock(loop, hold_s)
    return clock
