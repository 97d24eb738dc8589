"""One keepalive loop per listener, instead of a task per connection.

``websockets`` pings each connection from its own task: a task, its coroutine, a sleep's
future and timer per connection, about 1.5 KiB each on a TS holding ten thousand agents. Here a
listener's connections are spread over ``BUCKETS`` groups, and one task visits one group per
tick, so each connection is pinged every ``interval_s`` with the same pongs as before
(``websockets`` matches them and records the latency). A connection whose ping is still
unanswered ``timeout_s`` later fails with 1011 "keepalive ping timeout", as in ``websockets``.
The task stops when the listener has no connection left, and starts again with the next.

Clients of a taskfleet listener (agents, a TS's link to the NS, admins) send no pings of their
own: a :class:`WatchedConnection` notes when it last heard its server, and one
:class:`Watchdog` per event loop fails a connection that has heard nothing for ``SILENCE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
import weakref
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import CloseCode
from websockets.protocol import State

from runtime.frames import FastFrames

BUCKETS = 20
ABORT_AFTER_S = 5.0
"""A failed connection's close frame has this long to go out before its socket is cut."""


class _Rounds:
    """Connections spread over ``BUCKETS`` sets, and one task visiting them in turn: one set per
    ``period_s / BUCKETS`` (every set once per period when there are fewer connections than
    sets: a process with one connection wakes once per period, not twenty times)."""

    attr = ""
    """The attribute each connection keeps its set's number in (one per kind of round)."""

    def __init__(self) -> None:
        self.buckets: list[set[Any]] = [set() for _ in range(BUCKETS)]
        self.count = 0
        self.failed = 0
        self._next = 0
        self._turn = 0
        self._task: asyncio.Task[None] | None = None

    def period_s(self) -> float:
        raise NotImplementedError

    def visit(self, bucket: set[Any]) -> None:
        raise NotImplementedError

    def add(self, ws: Any) -> None:
        """Visit ``ws`` (a ``websockets`` asyncio connection) until :meth:`discard`."""
        bucket = self._next
        self._next = (self._next + 1) % BUCKETS
        setattr(ws, self.attr, bucket)
        self.buckets[bucket].add(ws)
        self.count += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, ws: Any) -> None:
        bucket = getattr(ws, self.attr, None)
        if bucket is not None and ws in self.buckets[bucket]:
            self.buckets[bucket].discard(ws)
            self.count -= 1

    def fail(self, ws: Any, reason: str) -> None:
        """Stop visiting ``ws`` and fail it with 1011 ``reason``; cut its socket if the close
        frame cannot go out."""
        self.failed += 1
        self.discard(ws)
        with contextlib.suppress(Exception):
            ws.protocol.fail(CloseCode.INTERNAL_ERROR, reason)
            ws.send_data()
        transport = ws.transport
        asyncio.get_running_loop().call_later(ABORT_AFTER_S, transport.abort)

    async def _run(self) -> None:
        try:
            while self.count:
                if self.count < BUCKETS:
                    await asyncio.sleep(self.period_s())
                    for bucket in self.buckets:
                        self.visit(bucket)
                    continue
                await asyncio.sleep(self.period_s() / BUCKETS)
                self._turn = (self._turn + 1) % BUCKETS
                self.visit(self.buckets[self._turn])
        finally:
            self._task = None


def _reading_paused(ws: Any) -> bool:
    """Whether this side stopped reading ``ws`` because its received messages wait unconsumed
    (``websockets``' assembler past its high-water mark)."""
    return bool(getattr(getattr(ws, "recv_messages", None), "paused", False))


class Keepalive(_Rounds):
    """Pings every connection added, once per ``interval_s``."""

    attr = "keepalive_bucket"

    def __init__(self, interval_s: float = 20.0, timeout_s: float = 20.0):
        super().__init__()
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.spared = 0
        """Overdue pongs forgiven because this side had stopped reading the peer (see visit)."""

    def period_s(self) -> float:
        return self.interval_s

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
                    if _reading_paused(ws):
                        # Its messages fill our queue (an admin script sending requests faster
                        # than they are answered, a TS's reports to a busy NS): the peer is
                        # alive, and its pong waits unread behind them. Reading resumes as the
                        # queue drains. Meanwhile a ping no one waits for (its pong is ignored)
                        # tells the peer we are here: its watchdog fails a server silent for
                        # ``SILENCE_S`` (a TS would drop its link to an NS busy with its reports).
                        self.spared += 1
                        ws.protocol.send_ping(struct.pack("!I", random.getrandbits(32)))
                        ws.send_data()
                    else:
                        self.fail(ws, "keepalive ping timeout")
                continue  # one ping at a time
            data = struct.pack("!I", random.getrandbits(32))
            pings[data] = (loop.create_future(), now)
            ws.protocol.send_ping(data)
            ws.send_data()

    def close(self) -> None:
        """The listener stops: no more pings."""
        for bucket in self.buckets:
            bucket.clear()
        self.count = 0
        if self._task is not None:
            self._task.cancel()


SILENCE_S = 40.0
"""A client fails its connection when it has heard nothing for this long: the listener pings
every connection every 20 s and fails it 20 s after an unanswered ping, so a live server is never
silent for 40 s. Checked every 10 s, a server that died is noticed 40-50 s after its last byte,
which came at most 20 s before it died: 20-50 s after (a client that pinged: 20-40 s)."""


class Watchdog(_Rounds):
    """The client's side of the listener's keepalive: listen for the server's pings, send none.

    ``websockets`` pings from both ends of a connection, so a TS holding ten thousand agents
    read and answered 500 pings a second on top of sending its own 500. Every taskfleet
    listener pings its clients (:class:`Keepalive`), so a client needs only to notice that a
    server went silent: :class:`WatchedConnection` notes when it last read anything, and one
    loop per event loop visits a bucket of connections per tick and fails, with 1011, one that
    has heard nothing for ``silence_s``.
    """

    attr = "watch_bucket"

    def __init__(self, silence_s: float = SILENCE_S, check_every_s: float = 10.0):
        super().__init__()
        self.silence_s = silence_s
        self.check_every_s = check_every_s

    def period_s(self) -> float:
        return self.check_every_s

    def visit(self, bucket: set[Any]) -> None:
        """Fail each connection of ``bucket`` that has heard nothing for ``silence_s``."""
        now = time.monotonic()
        for ws in list(bucket):
            if ws.protocol.state is State.OPEN and now - ws.heard >= self.silence_s:
                self.fail(ws, "keepalive: the server went silent")


_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watchdog] = (
    weakref.WeakKeyDictionary()
)


def watchdog() -> Watchdog:
    """This event loop's watchdog (one per loop: a process may hold thousands of clients)."""
    loop = asyncio.get_running_loop()
    dog = _watchdogs.get(loop)
    if dog is None:
        dog = _watchdogs[loop] = Watchdog()
    return dog


class WatchedConnection(FastFrames, ClientConnection):
    """A client connection that sends no pings and is failed when its server goes silent.

    Only for servers that ping (every taskfleet listener does): use with
    ``connect(..., ping_interval=None, create_connection=WatchedConnection)``.
    """

    heard = 0.0
    watch_bucket: int | None = None
    _dog: Watchdog | None = None

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        self._fast_received(data)

    def _ws_received(self, data: bytes) -> None:
        ClientConnection.data_received(self, data)

    def start_keepalive(self) -> None:
        """The upgrade is done: watch for silence instead of pinging."""
        self.heard = time.monotonic()
        self._dog = watchdog()
        self._dog.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._dog is not None:
            self._dog.discard(self)
        super().connection_lost(exc)
