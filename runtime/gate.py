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

When ``pause_at`` are waiting, the listener stops accepting until half of them are gone (let in,
or closed after ``wait_s``): further clients wait in the kernel's listen queue, then in their own
SYN retries, and cost this process nothing. Without it, 100,000 agents enrolling faster than the
NS could take them kept its one event loop busy accepting, queueing and closing connections
that would never be let in: goodput fell to nothing and the TS links starved with it
(docs/performance.md, "100,000 agents").

A connection holds its slot from the start of TLS until its handler calls ``handshake_done()``
(after the ``welcome``, or when it refuses the peer), or until it closes, or for at most
``hold_s``: then it is cut, so silent peers cannot keep the gate shut. Its TLS handshake must end
within ``tls_timeout_s`` of its arrival (time spent waiting counts, as it does for the client;
at least a second is left once let in), so a socket that never sends a ClientHello is closed
within the handshake deadline; a waiting one is closed once it waited ``wait_s``, whether or not
a slot freed.

One address gets a fair share, not the gate: 200 idle TCP sockets from one address once held
every slot, and every administrator waited behind them for 37 s and more. So

* an address may have at most ``open_per_address`` connections open (waiting, in their
  handshake, or served) plus ``per_address`` more: a socket over that is closed on arrival,
  before any TLS work (the few over ``open_per_address`` still get through, to be told why
  with 4431 by the listener's own cap, ``runtime.link.ConnectionCap``);
* a slot that frees goes first to a waiting connection whose address holds fewer than
  ``per_address`` slots, addresses taken in turn (round robin), so no address waits behind
  another's burst;
* a connection from an address below its share that finds every slot taken frees one: the gate
  cuts the newest handshake (one still in TLS if there is one) of the address holding the most
  slots, if that address holds more than its share. An address alone may use every slot (a
  registration burst from one NAT or one simulator keeps the whole gate): it gives them back
  one by one as others arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import Counter, deque
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
PAUSE_ACCEPTING_AT = 1_024
"""Waiting connections at which the listener stops accepting: about what a busy NS lets in within
``WAIT_AT_MOST_S`` (more would wait only to be closed unserved)."""
WAIT_AT_MOST_S = 6.0
"""Less than a client's open timeout (10 s): a connection that waited longer is likely dead."""
HANDSHAKES_PER_ADDRESS = 16
"""Slots an address keeps when connections from other addresses arrive and the gate is full."""
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
        per_address: int = HANDSHAKES_PER_ADDRESS,
        open_per_address: int = 0,
        pause_at: int = PAUSE_ACCEPTING_AT,
    ):
        if limit < 1 or per_address < 1:
            raise ValueError("a gate must let at least one handshake through")
        self.limit = limit
        self.waiting = waiting
        self.pause_at = pause_at
        """Waiting connections at which the listener stops accepting (0: never); it accepts
        again once ``pause_at // 2`` or fewer wait."""
        self.server: asyncio.Server | None = None
        """The listener's asyncio server (``listening``), paused and resumed by this gate."""
        self.accepting = True
        self.pauses = 0
        """Times the listener stopped accepting because ``pause_at`` connections waited."""
        self.wait_s = wait_s
        self.hold_s = hold_s
        self.per_address = per_address
        self.open_per_address = open_per_address
        """Connections one address may have open (0: no cap); ``per_address`` more are let
        through to be told why by the listener."""
        self.busy = 0
        self.peak = 0
        self.queue = WaitingRoom()
        self.open: Counter[str] = Counter()
        """Open connections by remote address, from arrival to close."""
        self.holding: dict[str, dict[GatedConnection, None]] = {}
        """Connections holding a slot, by address, oldest admitted first."""
        self.over_share = 0
        """Addresses holding more than ``per_address`` slots."""
        self.admitted = 0
        self.refused = 0
        """Closed before TLS: the waiting room was full, or the wait too long."""
        self.capped = 0
        """Closed on arrival: too many connections open from that address."""
        self.preempted = 0
        """Handshakes cut to give their slot to an address below its share."""
        self.overstayed = 0
        """Closed because the handshake took longer than ``hold_s``."""
        self._sweep: asyncio.TimerHandle | None = None
        self.keepalive = Keepalive()
        """Pings the listener's open connections (one task for all of them)."""
        self.http: Any = None
        """websockets' ``process_request`` hook for this listener (``runtime.metrics``): plain
        HTTP requests (``/metrics``, ``/healthz``, ``/readyz``) are answered there, after this
        gate and TLS like any connection; None: every request is a WebSocket upgrade."""

    def stats(self) -> dict[str, int]:
        return {
            "handshakes": self.busy,
            "peak": self.peak,
            "waiting": len(self.queue),
            "admitted": self.admitted,
            "refused": self.refused,
            "capped": self.capped,
            "preempted": self.preempted,
            "overstayed": self.overstayed,
            "pauses": self.pauses,
        }

    def listening(self, server: asyncio.Server) -> None:
        """The asyncio server whose accepting this gate pauses while ``pause_at`` wait."""
        self.server = server

    def arrive(self, conn: GatedConnection) -> None:
        address = conn.address
        cap = self.open_per_address
        if cap and self.open[address] >= cap + self.per_address:
            self.capped += 1
            conn.drop()
            return
        self.open[address] += 1
        conn.counted = True
        conn.arrived = time.monotonic()
        if self.busy < self.limit and not self.queue:
            self._admit(conn)
        elif (
            self.busy >= self.limit
            and self.over_share
            and len(self.holding.get(address, ())) < self.per_address
            and self._preempt()
        ):
            self._admit(conn)
        elif len(self.queue) < self.waiting:
            self.queue.push(address, conn)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(self._sweep_s(), self._expire)
            if self.pause_at and len(self.queue) >= self.pause_at:
                self._pause()
        else:
            self._refuse(conn)

    def release(self, conn: GatedConnection) -> None:
        """``conn`` is done with its handshake (or gone): let the next one in. Idempotent."""
        self._free(conn)
        self._next()

    def leave(self, conn: GatedConnection) -> None:
        """``conn`` is closed: it no longer counts against its address. Idempotent."""
        if conn.counted:
            conn.counted = False
            left = self.open[conn.address] - 1
            if left > 0:
                self.open[conn.address] = left
            else:
                del self.open[conn.address]

    def close(self) -> None:
        """The listener stops: drop every connection still waiting."""
        self.server = None  # closed: never to accept again
        for conn in self.queue.drain():
            conn.drop()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.keepalive.close()

    def _free(self, conn: GatedConnection) -> None:
        if not conn.holds_slot:
            return
        conn.holds_slot = False
        self.busy -= 1
        if conn.hold_timer is not None:
            conn.hold_timer.cancel()
            conn.hold_timer = None
        held = self.holding.get(conn.address)
        if held is not None and held.pop(conn, False) is None:
            if len(held) == self.per_address:
                self.over_share -= 1
            elif not held:
                del self.holding[conn.address]

    def _next(self) -> None:
        now = time.monotonic()
        while self.queue and self.busy < self.limit:
            since, conn = self.queue.pop(self.holding, self.per_address)
            if conn.gone:
                continue
            if now - since > self.wait_s:
                self._refuse(conn)
                continue
            self._admit(conn)
        self._maybe_resume()

    def _expire(self) -> None:
        """Close the connections that waited longer than ``wait_s`` (their clients gave up),
        whether or not a slot freed meanwhile."""
        self._sweep = None
        for conn in self.queue.expire(time.monotonic() - self.wait_s):
            if not conn.gone:
                self._refuse(conn)
        if self.queue:
            self._sweep = asyncio.get_running_loop().call_later(self._sweep_s(), self._expire)
        self._maybe_resume()

    def _pause(self) -> None:
        """Stop accepting: no more reads of the listening sockets (asyncio has no public call to
        pause a server; ``_maybe_resume`` uses its internals to start again)."""
        server = self.server
        if not self.accepting or server is None:
            return
        loop = asyncio.get_running_loop()
        try:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        except (OSError, ValueError):
            return
        self.accepting = False
        self.pauses += 1

    def _maybe_resume(self) -> None:
        if self.accepting or len(self.queue) > self.pause_at // 2:
            return
        self.accepting = True
        server = self.server
        if server is not None and server.sockets:
            # ``_start_serving`` adds the accepting readers back, once ``_serving`` is false: it
            # is false only within this call (websockets answers 503 to an upgrade that finds
            # its server not serving).
            try:
                server._serving = False  # type: ignore[attr-defined]
                server._start_serving()  # type: ignore[attr-defined]
            except (AttributeError, OSError, ValueError):
                server._serving = True  # type: ignore[attr-defined]

    def _sweep_s(self) -> float:
        """How often the waiting room is swept: a quarter of the longest wait, at most 4 a s."""
        return max(self.wait_s / 4, 0.25)

    def _preempt(self) -> bool:
        """Free a slot from the address holding the most, if it holds more than its share: its
        newest handshake still in TLS (the least work lost), else its newest. True if freed."""
        address, held = max(self.holding.items(), key=lambda item: len(item[1]))
        if len(held) <= self.per_address:
            return False
        victim = next((c for c in reversed(held) if not c.started), None)
        if victim is None:
            victim = next(reversed(held))
        self.preempted += 1
        self._free(victim)
        victim.drop()
        return True

    def _admit(self, conn: GatedConnection) -> None:
        self.busy += 1
        self.peak = max(self.peak, self.busy)
        self.admitted += 1
        conn.holds_slot = True
        held = self.holding.setdefault(conn.address, {})
        held[conn] = None
        if len(held) == self.per_address + 1:
            self.over_share += 1
        loop = asyncio.get_running_loop()
        conn.hold_timer = loop.call_later(self.hold_s, self._overstay, conn)
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


class WaitingRoom:
    """Connections waiting for a slot, one queue per address (each in arrival order), the
    addresses taken in turn."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[tuple[float, GatedConnection]]] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def push(self, address: str, conn: GatedConnection) -> None:
        queue = self.queues.get(address)
        if queue is None:
            queue = self.queues[address] = deque()
        queue.append((time.monotonic(), conn))
        self.count += 1

    def pop(
        self, holding: dict[str, dict[GatedConnection, None]], share: int
    ) -> tuple[float, GatedConnection]:
        """The next connection: from the first address (in turn) holding fewer than ``share``
        slots, else from the first address; that address goes to the back of the line.

        An address holding ``share`` slots or more holds a ``1 / share`` part of the gate at
        least, so few are passed over before one below its share is found."""
        chosen = next(iter(self.queues))
        for address in self.queues:
            if len(holding.get(address, ())) < share:
                chosen = address
                break
        queue = self.queues.pop(chosen)
        item = queue.popleft()
        if queue:
            self.queues[chosen] = queue
        self.count -= 1
        return item

    def expire(self, before: float) -> list[GatedConnection]:
        """Take out every connection that arrived before ``before``."""
        gone: list[GatedConnection] = []
        for address in list(self.queues):
            queue = self.queues[address]
            while queue and queue[0][0] < before:
                gone.append(queue.popleft()[1])
            if not queue:
                del self.queues[address]
        self.count -= len(gone)
        return gone

    def drain(self) -> list[GatedConnection]:
        everyone = [conn for queue in self.queues.values() for _, conn in queue]
        self.queues.clear()
        self.count = 0
        return everyone


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
    address = "?"
    """The peer's address (its host, without the port): what the gate's shares count."""
    counted = False
    """Counted in ``gate.open`` (until ``gate.leave``)."""
    arrived = 0.0
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
        peer = raw.get_extra_info("peername")
        if peer:
            self.address = str(peer[0])
        self.gate.arrive(self)

    @property
    def started(self) -> bool:
        """Past TLS: a websockets connection now."""
        return self._started

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
            self.gate.leave(self)
            self.gate.release(self)
            return
        finally:
            self._raw = None  # closed either way: the TLS socket is the connection now
        # The deadline counts from arrival, as the client's own does: waiting took part of it
        # (at least a second is left, for a connection let in at the very end of its wait). A
        # gate told to let connections wait longer than that (a bench's, opened wide) gives
        # each the whole deadline once it is let in.
        timeout_s = self.tls_timeout_s
        if self.gate.wait_s <= timeout_s:
            waited = time.monotonic() - self.arrived
            timeout_s = max(timeout_s - waited, min(1.0, timeout_s))
        try:
            async with asyncio.timeout(timeout_s):
                await handshake(sock)
        except (Exception, asyncio.CancelledError):
            # A client that gave up, a scanner, a socket that never sent a ClientHello, a bad
            # certificate on its side, or dropped by the gate: it cost one TLS try.
            self.gone = True
            sock.close()
            self.gate.leave(self)
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

    async def handshake(
        self, process_request: Any = None, process_response: Any = None, server_header: Any = None
    ) -> None:
        """The opening request, with the gate's ``http`` hook when the listener gives none: a
        plain HTTP request it answers holds its slot until its connection closes (just after
        the answer), like a refused handshake."""
        await super().handshake(process_request or self.gate.http, process_response, server_header)

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
        self.gate.leave(self)
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
