"""One keepalive loop per listener, instead of a task per connection.

``websockets`` pings each connection from its own task: a task, its coroutine, a sleep's
future and timer per connection, about 1.5 KiB each on a TS holding ten thousand agents. Here a
listener's connections are spread over ``BUCKETS`` groups, and one task visits one group per
tick, so each connection is pinged every ``interval_s`` with the same pongs as before
(``websockets`` matches them and records the latency). A connection whose ping is still
unanswered ``timeout_s`` later fails with 1011 "keepalive ping timeout", as in ``websockets``.
The task stops when the listener has no connection left, and starts again with the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from typing import Any

from websockets.frames import CloseCode
from websockets.protocol import State

BUCKETS = 20
ABORT_AFTER_S = 5.0
"""A failed connection's close frame has this long to go out before its socket is cut."""


class Keepalive:
    """Pings every connection added, one bucket per ``interval_s / BUCKETS``."""

    def __init__(self, interval_s: float = 20.0, timeout_s: float = 20.0):
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.buckets: list[set[Any]] = [set() for _ in range(BUCKETS)]
        self.count = 0
        self.failed = 0
        self._next = 0
        self._turn = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, ws: Any) -> None:
        """Keep ``ws`` (a ``websockets`` asyncio connection) alive until :meth:`discard`."""
        bucket = self._next
        self._next = (self._next + 1) % BUCKETS
        ws.keepalive_bucket = bucket
        self.buckets[bucket].add(ws)
        self.count += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, ws: Any) -> None:
        bucket = getattr(ws, "keepalive_bucket", None)
        if bucket is not None and ws in self.buckets[bucket]:
            self.buckets[bucket].discard(ws)
            self.count -= 1

    async def _run(self) -> None:
        try:
            tick = self.interval_s / BUCKETS
            while self.count:
                await asyncio.sleep(tick)
                self._turn = (self._turn + 1) % BUCKETS
                self.visit(self.buckets[self._turn])
        finally:
            self._task = None

    def visit(self, bucket: set[Any]) -> None:
        """Ping each connection of ``bucket``, or fail it when its last ping went unanswered."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for ws in list(bucket):
            if ws.protocol.state is not State.OPEN:
                continue
            pings = ws.pending_pings
            if pings:
                _, sent = next(iter(pings.values()))
                if now - sent >= self.timeout_s:
                    self._fail(ws)
                continue  # one ping at a time
            data = struct.pack("!I", random.getrandbits(32))
            pings[data] = (loop.create_future(), now)
            ws.protocol.send_ping(data)
            ws.send_data()

    def _fail(self, ws: Any) -> None:
        self.failed += 1
        self.discard(ws)
        with contextlib.suppress(Exception):
            ws.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            ws.send_data()
        transport = ws.transport
        asyncio.get_running_loop().call_later(ABORT_AFTER_S, transport.abort)

    def close(self) -> None:
        """The listener stops: no more pings."""
        for bucket in self.buckets:
            bucket.clear()
        self.count = 0
        if self._task is not None:
            self._task.cancel()
