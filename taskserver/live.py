"""Live output on its way from agents to the NS (docs/protocol.md, "Live output").

Agents send what their scripts print while they run as ``running`` reports with ``live`` set.
The relay keeps them apart from everything else it rolls up: a :class:`LiveQueue` gathers them
for ``flush_ms`` (as progress is batched) and sends them in ``reports`` batches of their own,
never in a batch of results and never awaited by the upstream loop, so a result is never delayed
or put behind them. Live output is never stored: the queue holds at most ``QUEUE_BYTES`` (the
oldest pieces go first), one batch at a time is in flight, and a batch the NS did not take is
dropped, not sent again. One computer's pieces pass at ``RATE_PER_S`` (``Rate``), so one agent
cannot crowd the others out. Losing a piece costs a watcher a few lines; the result has them all.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from protocol.messages import LIVE_TEXT_BYTES, Report

QUEUE_BYTES = 1024 * 1024
"""The most live output (estimated bytes) a relay holds for the NS; past it the oldest goes."""
BATCH_BYTES = 256 * 1024
"""One batch of live output stays under this (well within the frame limit)."""
PIECE_COST = 120
"""Estimated bytes of a piece besides its text (ids, names, times)."""


class Deliver(Protocol):
    """Where a batch goes: ``Upstream.deliver`` (returns once the NS took it)."""

    def deliver(self, reports: list[Report]) -> Awaitable[None]: ...


RATE_PER_S = 2.0
"""Live pieces a relay takes from one computer per second, on average (an agent sends one a
second per script; a job's parallel steps or a burst after a pause need a little more)."""
BURST = 4
"""Live pieces one computer may send at once, above ``RATE_PER_S``."""
BUCKETS_KEPT = 4096
"""Past this many computers' buckets, the full ones (idle long enough to be full) are forgotten."""


def fits(report: Report) -> bool:
    """Whether an agent's piece is within the size an agent sends (``LIVE_TEXT_BYTES`` of
    UTF-8: counted in characters, 4096 four-byte characters would pass at four times that)."""
    live = report.live
    if live is None:
        return False
    text = live.text
    if len(text) * 4 <= LIVE_TEXT_BYTES:  # no need to encode: it fits whatever its characters
        return True
    return (
        len(text) <= LIVE_TEXT_BYTES
        and len(text.encode("utf-8", "surrogatepass")) <= LIVE_TEXT_BYTES
    )


class Rate:
    """A token bucket per computer: ``RATE_PER_S`` live pieces a second, ``BURST`` at once.

    Without it one agent (rogue, or a loop printing as fast as it can) would fill the relay's
    queue, push every other computer's pieces out (the oldest go first) and reach every
    watcher through the NS. Memory stays bounded: a bucket idle for ``BURST / RATE_PER_S``
    seconds is full, the same as none, and such buckets are forgotten past ``BUCKETS_KEPT``."""

    def __init__(self, rate_per_s: float = RATE_PER_S, burst: int = BURST):
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        """Computer -> (tokens left, when counted)."""

    def take(self, computer: str, now: float) -> bool:
        """Whether ``computer`` may send one more piece now (and count it if so)."""
        tokens, then = self._buckets.get(computer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate_per_s)
        if tokens < 1.0:
            self._buckets[computer] = (tokens, now)
            return False
        if len(self._buckets) >= BUCKETS_KEPT and computer not in self._buckets:
            self._forget_full(now)
        self._buckets[computer] = (tokens - 1.0, now)
        return True

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate_per_s
        self._buckets = {c: tb for c, tb in self._buckets.items() if now - tb[1] < full_after}


class LiveQueue:
    """Pieces of live output waiting for the NS (see the module docstring).

    ``wake`` asks the relay's upstream loop to call ``send`` (after ``flush_s``, or when a batch
    in flight is done and more waits); ``spawn`` runs a batch's delivery in the background."""

    def __init__(
        self,
        flush_s: float,
        wake: Callable[[], None],
        spawn: Callable[[Any], None],
        log: Any,
    ):
        self.flush_s = flush_s
        self._wake = wake
        self._spawn = spawn
        self._log = log
        self._items: deque[tuple[Report, int]] = deque()
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = False
        self.stats = {"live_in": 0, "live_sent": 0, "live_dropped": 0}
        self.rate = Rate()

    def admit(self, computer: str) -> bool:
        """Whether a piece from ``computer`` is within its rate (``Rate``); one that is not is
        dropped and counted in ``live_dropped``."""
        if self.rate.take(computer, time.monotonic()):
            return True
        self.stats["live_dropped"] += 1
        return False

    def __len__(self) -> int:
        return len(self._items)

    def add(self, report: Report) -> None:
        """Queue one piece (already checked: work this relay holds for that agent)."""
        assert report.live is not None
        cost = PIECE_COST + len(report.live.text)  # characters: a cheap estimate of bytes
        self._items.append((report, cost))
        self._bytes += cost
        self.stats["live_in"] += 1
        while self._bytes > QUEUE_BYTES:
            _, old = self._items.popleft()
            self._bytes -= old
            self.stats["live_dropped"] += 1
        if self._timer is None and not self._in_flight:
            self._timer = asyncio.get_running_loop().call_later(self.flush_s, self._due)

    def clear(self) -> None:
        """Drop what waits (no NS to send it to: it would be stale by the time one is back)."""
        self.stats["live_dropped"] += len(self._items)
        self._items.clear()
        self._bytes = 0

    def _due(self) -> None:
        self._timer = None
        self._wake()

    def send(self, upstream: Deliver) -> None:
        """Start sending one batch of what waits, unless one is in flight; never waits itself."""
        if self._in_flight or not self._items:
            return
        batch: list[Report] = []
        size = 0
        while self._items and (not batch or size + self._items[0][1] <= BATCH_BYTES):
            report, cost = self._items.popleft()
            self._bytes -= cost
            size += cost
            batch.append(report)
        self._in_flight = True
        self._spawn(self._deliver(upstream, batch))

    async def _deliver(self, upstream: Deliver, batch: list[Report]) -> None:
        try:
            await upstream.deliver(batch)
            self.stats["live_sent"] += len(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # lost: live output is never sent again
            self.stats["live_dropped"] += len(batch)
            self._log.info("live_output_dropped", pieces=len(batch), error=str(exc) or "")
        finally:
            self._in_flight = False
            if self._items and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.flush_s, self._due)
