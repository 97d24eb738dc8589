"""Admission before TLS: a listener works on at most ``limit`` handshakes at once.

Under a registration burst (the NS restarts, the power comes back on a site), every agent
connects in the same second. Served all at once, every handshake takes as long as all of them
together, passes its deadline, and its agent retries: the work is thrown away and the burst never
drains (10,000 agents did not get through in 9 minutes, docs/performance.md). So a listener
accepts TCP connections as they come but starts TLS for only ``limit`` of them at a time. The
rest wait, reading paused, in arrival order: each costs a socket and a small object, no TLS state.
When ``waiting`` are already waiting, or one has waited longer than ``wait_s`` (its client has
given up by then), its TCP connection is closed before any TLS work; the client backs off with
jitter and comes again.

A connection holds its slot from the start of TLS until its handler calls ``handshake_done()``
(after the ``welcome``, or when it refuses the peer), or until it closes, or for at most
``hold_s``: then it is cut, so silent peers cannot keep the gate shut.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.frames import DATA_OPCODES, Frame

from runtime.frames import FastFrames
from runtime.keepalive import Keepalive
from runtime.tlsio import TLSTransport, handshake, take_socket

HANDSHAKES_AT_ONCE = 128
WAITING_AT_MOST = 20_000
WAIT_AT_MOST_S = 6.0
"""Less than a client's open timeout (10 s): a connection that waited longer is likely dead."""
HOLD_AT_MOST_S = 20.0
"""A connection still in its handshake this long after it was let in is closed, so a peer that
connects and stays silent (or never answers our close) holds a place for a bounded time."""


class Gate:
    """Counts handshakes in progress and queues the connections beyond ``limit``."""

    def __init__(
        self,
        limit: int = HANDSHAKES_AT_ONCE,
        waiting: int = WAITING_AT_MOST,
        wait_s: float = WAIT_AT_MOST_S,
        hold_s: float = HOLD_AT_MOST_S,
    ):
        if limit < 1:
            raise ValueError("a gate must let at least one handshake through")
        self.limit = limit
        self.waiting = waiting
        self.wait_s = wait_s
        self.hold_s = hold_s
        self.busy = 0
        self.peak = 0
        self.queue: deque[tuple[float, GatedConnection]] = deque()
        self.admitted = 0
        self.refused = 0
        """Closed before TLS: the waiting room was full, or the wait too long."""
        self.overstayed = 0
        """Closed because the handshake took longer than ``hold_s``."""
        self.keepalive = Keepalive()
        """Pings the listener's open connections (one task for all of them)."""

    def stats(self) -> dict[str, int]:
        return {
            "handshakes": self.busy,
            "peak": self.peak,
            "waiting": len(self.queue),
            "admitted": self.admitted,
            "refused": self.refused,
            "overstayed": self.overstayed,
        }

    def arrive(self, conn: GatedConnection) -> None:
        if self.busy < self.limit and not self.queue:
            self._admit(conn)
        elif len(self.queue) < self.waiting:
            self.queue.append((time.monotonic(), conn))
        else:
            self._refuse(conn)

    def release(self, conn: GatedConnection) -> None:
        """``conn`` is done with its handshake (or gone): let the next one in. Idempotent."""
        if conn.holds_slot:
            conn.holds_slot = False
            self.busy -= 1
            if conn.hold_timer is not None:
                conn.hold_timer.cancel()
                conn.hold_timer = None
        self._next()

    def close(self) -> None:
        """The listener stops: drop every connection still waiting."""
        while self.queue:
            _, conn = self.queue.popleft()
            conn.drop()
        self.keepalive.close()

    def _next(self) -> None:
        now = time.monotonic()
        while self.queue and self.busy < self.limit:
            since, conn = self.queue.popleft()
            if conn.gone:
                continue
            if now - since > self.wait_s:
                self._refuse(conn)
                continue
            self._admit(conn)

    def _admit(self, conn: GatedConnection) -> None:
        self.busy += 1
        self.peak = max(self.peak, self.busy)
        self.admitted += 1
        conn.holds_slot = True
        conn.hold_timer = asyncio.get_running_loop().call_later(self.hold_s, self._overstay, conn)
        conn.admit()

    def _overstay(self, conn: GatedConnection) -> None:
        conn.hold_timer = None
        if conn.holds_slot:
            self.overstayed += 1
            conn.drop()
            self.release(conn)

    def _refuse(self, conn: GatedConnection) -> None:
        self.refused += 1
        conn.drop()


class GatedConnection(FastFrames, ServerConnection):
    """A websockets server connection that waits at the gate, then does its own TLS.

    The listener is opened without TLS; ``connection_made`` gets the plain TCP transport, pauses
    reading (the client's TLS hello waits in the kernel) and queues at the gate. Admitted, it takes
    the socket from that transport, runs TLS on it with OpenSSL (``runtime.tlsio``) and only then
    becomes a websockets connection, over a :class:`~runtime.tlsio.TLSTransport`.
    """

    gate: Gate
    tls: ssl.SSLContext | None = None
    tls_timeout_s: float = 10.0

    holds_slot = False
    hold_timer: asyncio.TimerHandle | None = None
    gone = False
    _raw: asyncio.Transport | None = None
    _started = False
    sink: Callable[[Frame], None] | None = None
    """Takes each data frame as it is read, instead of the queue ``recv`` reads
    (``Link.deliver``)."""
    _upgrading: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        self._raw = raw
        raw.pause_reading()
        self.gate.arrive(self)

    def admit(self) -> None:
        raw = self._raw
        assert raw is not None
        if raw.is_closing():
            self.gone = True
            self.gate.release(self)
            return
        if self.tls is None:
            self._start(raw)
            raw.resume_reading()
            return
        task = asyncio.get_running_loop().create_task(self._upgrade(raw, self.tls))
        self._upgrading = task
        _upgrades.add(task)
        task.add_done_callback(self._upgraded)

    async def _upgrade(self, raw: asyncio.Transport, tls: ssl.SSLContext) -> None:
        # OpenSSL takes the socket itself (runtime.tlsio): 10 KiB less per connection than
        # asyncio's start_tls, and fewer Python steps per frame.
        try:
            sock = tls.wrap_socket(
                take_socket(raw), server_side=True, do_handshake_on_connect=False
            )
        except Exception:
            self.gone = True
            raw.abort()
            self.gate.release(self)
            return
        finally:
            self._raw = None  # closed either way: the TLS socket is the connection now
        try:
            async with asyncio.timeout(self.tls_timeout_s):
                await handshake(sock)
        except (Exception, asyncio.CancelledError):
            # A client that gave up, a scanner, a bad certificate on its side, or dropped by
            # the gate: it cost one TLS try.
            self.gone = True
            sock.close()
            self.gate.release(self)
            return
        transport = TLSTransport(asyncio.get_running_loop(), sock, self)
        self._start(transport)
        transport.start_reading()

    def _upgraded(self, task: asyncio.Task[None]) -> None:
        self._upgrading = None
        _upgrades.discard(task)

    def _start(self, transport: asyncio.Transport) -> None:
        self._started = True
        super().connection_made(transport)

    def handshake_done(self) -> None:
        self.gate.release(self)

    def process_event(self, event: Any) -> None:
        sink = self.sink
        if sink is not None and isinstance(event, Frame) and event.opcode in DATA_OPCODES:
            sink(event)
            return
        super().process_event(event)

    def start_keepalive(self) -> None:
        """The WebSocket upgrade is done (``websockets`` calls this just before the handler).

        Keep neither the upgrade request's nor the response's headers (about 3 KiB per
        connection, read by no one after the upgrade), and ping from the listener's one
        keepalive loop instead of a task per connection.
        """
        if self.request is not None:
            self.request.headers = _NO_HEADERS  # the parser's frame holds the request itself
        self.response = None
        self.gate.keepalive.add(self)

    def drop(self) -> None:
        """Close at once, without a close handshake: before TLS the client sees its connection
        closed and backs off; a handshake that overstayed is cut the same way."""
        self.gone = True
        if self._started and self.transport is not None:
            self.transport.abort()
        elif self._upgrading is not None:
            self._upgrading.cancel()
        elif self._raw is not None:
            self._raw.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.gate.keepalive.discard(self)
        if self.holds_slot:
            self.gate.release(self)
        if self._started:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._started:
            self._fast_received(data)

    def _ws_received(self, data: bytes) -> None:
        ServerConnection.data_received(self, data)

    def eof_received(self) -> None:
        if self._started:
            super().eof_received()


_upgrades: set[asyncio.Task[Any]] = set()
_NO_HEADERS = Headers()
"""Every connection's upgrade request's headers, once the upgrade is done (read by no one)."""


def connection_class(
    gate: Gate, tls: ssl.SSLContext | None, tls_timeout_s: float
) -> type[GatedConnection]:
    """A :class:`GatedConnection` subclass bound to one listener's gate and TLS context."""
    return type(
        "ListenerConnection",
        (GatedConnection,),
        {"gate": gate, "tls": tls, "tls_timeout_s": tls_timeout_s},
    )


def handshake_done(ws: Any) -> None:
    """Tell the gate (if the connection came through one) that this handshake is over."""
    done = getattr(ws, "handshake_done", None)
    if done is not None:
        with contextlib.suppress(Exception):
            done()
