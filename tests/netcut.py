"""A real TCP forwarder on loopback, to cut a link between two real processes on demand.

A child NS is given the forwarder's address as its ``--parent`` URL; the forwarder passes the
bytes through untouched (TLS included, so the child's fingerprint pin still holds) to the parent.
A test then:

- ``cut()``: closes every connection passing through at once (both sides aborted, so each end
  sees its link drop, as when a cable is pulled and the kernel reports it);
- ``block()`` / ``unblock()``: while blocked, a new connection is accepted and closed at once
  (the other end sees its connection attempt fail), so a link stays down for as long as the test
  wants, whatever the child's retry pace.

``accepted`` counts the connections taken so far and ``open`` those passing through now, which a
test waits on (``until(lambda: fwd.open == 1)``) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

CHUNK = 65536


class Forwarder:
    """``async with Forwarder("127.0.0.1", port) as fwd:`` then connect to ``fwd.port``."""

    def __init__(self, host: str, port: int):
        self.target_host = host
        self.target_port = port
        self.port = 0
        self.accepted = 0
        """Connections accepted and forwarded (refused ones while blocked not counted)."""
        self.refused = 0
        """Connections closed on arrival because the forwarder was blocked."""
        self.cuts = 0
        """Connections closed by :meth:`cut`."""
        self.blocked = False
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_url(cls, url: str) -> Forwarder:
        """A forwarder to the host and port of a ``wss://HOST:PORT`` URL."""
        parts = urlsplit(url)
        assert parts.hostname and parts.port, f"no host and port in {url!r}"
        return cls(parts.hostname, parts.port)

    def url(self, like: str) -> str:
        """``like`` (a ``wss://HOST:PORT/...`` URL of the target) pointed at this forwarder."""
        parts = urlsplit(like)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    @property
    def open(self) -> int:
        """Connections passing through now."""
        return len(self._pairs)

    async def start(self) -> Forwarder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aenter__(self) -> Forwarder:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def cut(self) -> int:
        """Abort every connection passing through now, both sides; return how many."""
        pairs = list(self._pairs)
        for down, up in pairs:
            for writer in (down, up):
                writer.transport.abort()
        self._pairs.clear()
        self.cuts += len(pairs)
        return len(pairs)

    def block(self) -> None:
        """Close every new connection on arrival until :meth:`unblock` (open ones stay)."""
        self.blocked = True

    def unblock(self) -> None:
        self.blocked = False

    async def close(self) -> None:
        """Stop listening, cut what passes through, and wait for the pumps to end."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self.cut()
        # Aborted transports end both pumps of every pair; cancelling the serving tasks
        # instead would have asyncio's stream callback report each as an error.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            # Nothing listening there (the target is down): the client sees what it would see
            # connecting to the target itself, a connection that ends at once.
            writer.transport.abort()
            return
        if self.blocked:  # blocked while connecting upstream
            self.refused += 1
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        me = asyncio.current_task()
        assert me is not None
        self._tasks.add(me)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            self._tasks.discard(me)
            for w in pair:
                w.transport.abort()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy ``src`` to ``dst`` until either end closes; then close the write side of ``dst``
    so the other direction's end is seen too."""
    with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if dst.can_write_eof() and not dst.transport.is_closing():
            dst.write_eof()
