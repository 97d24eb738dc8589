"""TLS with OpenSSL on the socket itself: an asyncio transport over a non-blocking ``SSLSocket``.

asyncio's own TLS (``asyncio.sslproto``) runs OpenSSL over two memory BIOs and moves every record
through Python: the socket's bytes into one BIO, the plaintext out, the ciphertext out of the
other BIO into a plain transport. Each connection keeps two BIO buffers, a read buffer and the
Python objects of that machinery. Here OpenSSL reads and writes the file descriptor itself
(``SSLSocket.recv`` / ``send``), driven by the event loop's readiness callbacks, the way
asyncio's TLS worked before Python 3.7. Measured per idle TLS connection with no WebSocket
(``bench/connmem.py``): 25.7 KiB with ``sslproto``, 15.2 KiB this way; it is also fewer Python
steps per frame (``bench/recvpath.py``; stop 11 in ``bench/HISTORY.md``).

Only what taskfleet's WebSocket connections use is here: a stream transport with flow control
both ways, no half-close (TLS has none), ``close`` with a best-effort ``close_notify``.
Renegotiation is refused (:func:`harden`), so a read never has to wait for a write nor the
other way round, except for a TLS 1.3 key update, which is handled.

Both ends use it: ``runtime.gate`` hands an admitted listener connection's socket to it, and
:class:`Connect` opens clients' ``wss://`` connections with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

READ_SIZE = 16 * 1024
"""The largest plaintext of one TLS record: one ``recv`` returns at most one record."""
WRITE_JOIN_AT_MOST = 256 * 1024
"""Queued writes are joined up to this size into one ``SSL_write`` (one ``send`` syscall)."""

_READ_AGAIN = (ssl.SSLWantReadError, BlockingIOError, InterruptedError)
_WRITE_AGAIN = (ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Refuse renegotiation (TLS 1.2): no read then needs a write, nor a write a read."""
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


class TLSTransport(asyncio.Transport):
    """A stream transport over a connected, handshaken, non-blocking ``SSLSocket``.

    Call :meth:`begin` once: it tells the protocol (``connection_made``) and starts reading.
    """

    __slots__ = (
        "_loop",
        "_sock",
        "_fd",
        "_protocol",
        "_peername",
        "_sockname",
        "_queue",
        "_retry",
        "_size",
        "_high",
        "_low",
        "_protocol_paused",
        "_reading",
        "_writer_on",
        "_read_wants_write",
        "_write_wants_read",
        "_closing",
        "_closed",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, protocol: asyncio.Protocol
    ):
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        try:
            self._peername: Any = sock.getpeername()
        except OSError:
            self._peername = None
        try:
            self._sockname: Any = sock.getsockname()
        except OSError:
            self._sockname = None
        self._queue: list[bytes] = []
        self._retry: bytes | None = None
        """A write OpenSSL could not finish: it must be offered again, the same bytes."""
        self._size = 0
        self._high = self._low = 0
        self.set_write_buffer_limits()  # asyncio's defaults: 64 KiB high, a quarter of it low
        self._protocol_paused = False
        self._reading = False
        self._writer_on = False
        self._read_wants_write = False
        self._write_wants_read = False
        self._closing = False
        self._closed = False

    def begin(self) -> None:
        """Hand the transport to its protocol and start reading."""
        self._protocol.connection_made(self)
        self.start_reading()

    def start_reading(self) -> None:
        """Start reading, once the protocol has the transport."""
        if not self._closing:
            self.resume_reading()
            # OpenSSL may hold bytes that came with the handshake's last flight.
            self._loop.call_soon(self._read_ready)

    # reading

    def _read_ready(self) -> None:
        if self._closed or not self._reading:
            return
        if self._write_wants_read:
            self._write_wants_read = False
            self._flush()
            if self._closed:
                return
        try:
            data = self._sock.recv(READ_SIZE)
        except _READ_AGAIN:
            return
        except ssl.SSLWantWriteError:  # a key update's answer waits for the socket to drain
            self._read_wants_write = True
            self._want_writer()
            return
        except OSError as exc:  # ssl.SSLError is an OSError
            self._fatal(exc)
            return
        try:
            if not data:  # close_notify or EOF
                self._stop_reading()
                self._protocol.eof_received()
                self.close()  # TLS has no half-close
                return
            self._protocol.data_received(data)
        except Exception as exc:  # a bug in the protocol: end this connection, say why
            self._loop.call_exception_handler(
                {
                    "message": "TLSTransport: the protocol failed on data it was given",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
            self._fatal(exc)
            return
        if self._reading and not self._closed and self._sock.pending():
            self._loop.call_soon(self._read_ready)

    def pause_reading(self) -> None:
        self._stop_reading()

    def resume_reading(self) -> None:
        if self._reading or self._closing:
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._read_ready)
        if self._sock.pending():
            self._loop.call_soon(self._read_ready)

    def is_reading(self) -> bool:
        return self._reading

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    # writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closed:
            return
        if self._retry is None and not self._queue:
            try:
                self._sock.send(data)  # SSL_write: all of it, or nothing taken
                return
            except _WRITE_AGAIN:
                self._retry = bytes(data)
                self._size += len(data)
                self._want_writer()
            except ssl.SSLWantReadError:
                self._retry = bytes(data)
                self._size += len(data)
                self._write_wants_read = True
            except OSError as exc:
                self._fatal(exc)
                return
        else:
            self._queue.append(bytes(data))
            self._size += len(data)
        if not self._protocol_paused and self._size > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _write_ready(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            if self._retry is None and not self._queue:
                self._stop_writer()
            self._read_ready()
            if self._closed:
                return
        self._flush()

    def _flush(self) -> None:
        while True:
            if self._retry is None:
                if not self._queue:
                    break
                self._retry = self._take()
            try:
                self._sock.send(self._retry)
            except _WRITE_AGAIN:
                self._want_writer()
                return
            except ssl.SSLWantReadError:
                self._write_wants_read = True
                self._stop_writer()
                return
            except OSError as exc:
                self._fatal(exc)
                return
            self._size -= len(self._retry)
            self._retry = None
        if not self._read_wants_write:
            self._stop_writer()
        if self._protocol_paused and self._size <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if self._closing:
            self._shutdown()

    def _take(self) -> bytes:
        queue = self._queue
        if len(queue) == 1 or len(queue[0]) >= WRITE_JOIN_AT_MOST:
            return queue.pop(0)
        n, total = 0, 0
        while n < len(queue) and total < WRITE_JOIN_AT_MOST:
            total += len(queue[n])
            n += 1
        blob = b"".join(queue[:n])
        del queue[:n]
        return blob

    def _want_writer(self) -> None:
        if not self._writer_on and not self._closed:
            self._writer_on = True
            self._loop.add_writer(self._fd, self._write_ready)

    def _stop_writer(self) -> None:
        if self._writer_on:
            self._writer_on = False
            self._loop.remove_writer(self._fd)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def get_write_buffer_size(self) -> int:
        return self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    # closing

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def close(self) -> None:
        """Stop reading, write what is queued, send ``close_notify``, close the socket."""
        if self._closing or self._closed:
            return
        self._closing = True
        self._stop_reading()
        if self._retry is None and not self._queue:
            self._shutdown()

    def abort(self) -> None:
        """Close at once: queued writes are dropped, no ``close_notify``."""
        self._closing = True
        self._finish(None)

    def _shutdown(self) -> None:
        try:
            self._sock.unwrap()  # sends close_notify; the peer's is not waited for
        except (OSError, ValueError):
            pass
        self._finish(None)

    def _fatal(self, exc: Exception) -> None:
        self._closing = True
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        self._stop_writer()
        self._queue.clear()
        self._retry = None
        self._size = 0
        self._loop.call_soon(self._lost, exc)

    def _lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()

    # the rest of asyncio's transport interface

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._sockname
        if name in ("socket", "ssl_object"):
            return self._sock
        if name == "sslcontext":
            return self._sock.context
        if name == "peercert":
            return self._sock.getpeercert()
        if name == "cipher":
            return self._sock.cipher()
        if name == "compression":
            return self._sock.compression()
        return default


async def handshake(sock: ssl.SSLSocket) -> None:
    """Run the TLS handshake on a non-blocking ``SSLSocket``, waiting on the event loop.

    Bound it with ``asyncio.timeout``; on any error the caller closes the socket.
    """
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            add, remove = loop.add_reader, loop.remove_reader
        except ssl.SSLWantWriteError:
            add, remove = loop.add_writer, loop.remove_writer
        ready = loop.create_future()
        add(fd, _wake, ready)
        try:
            await ready
        finally:
            remove(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def take_socket(raw: asyncio.Transport) -> socket.socket:
    """Take the connected socket out of a plain asyncio transport whose reading is paused.

    The transport is closed on a duplicate of the descriptor, so the connection stays open on
    the socket returned; nothing has been read from it (reading was paused from the start).
    """
    own: socket.socket = raw.get_extra_info("socket")
    sock = socket.socket(fileno=os.dup(own.fileno()))
    sock.setblocking(False)
    raw.set_protocol(asyncio.Protocol())  # its connection_lost is a no-op
    raw.abort()
    return sock


def _literal(host: str, port: int) -> list[tuple[Any, ...]] | None:
    """``getaddrinfo``'s answer for an IP address written out (no scope), without asking it:
    the loop's ``getaddrinfo`` always goes through its thread pool, which cost a connecting
    agent 3-8 % of its CPU for ``127.0.0.1`` (``docs/performance.md``)."""
    if "%" in host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


async def open_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to the first address of ``host`` that answers."""
    loop = asyncio.get_running_loop()
    infos = _literal(host, port) or await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last if last is not None else OSError(f"no address for {host!r}")


class Connect(ws_connect):
    """``websockets``' ``connect`` with ``wss://`` over :class:`TLSTransport`.

    Anything else (``ws://``, a proxy, a given socket) goes the usual way.
    """

    async def open_tcp_connection(self) -> ClientConnection:
        kwargs = self.create_connection_kwargs
        ctx = kwargs.get("ssl")
        if not self.ws_uri.secure or not isinstance(ctx, ssl.SSLContext) or set(kwargs) != {"ssl"}:
            return await super().open_tcp_connection()
        plain = await open_socket(self.ws_uri.host, self.ws_uri.port)
        sock = ctx.wrap_socket(
            plain, server_hostname=self.ws_uri.host, do_handshake_on_connect=False
        )
        try:
            await handshake(sock)
        except BaseException:
            sock.close()
            raise
        connection = self.factory(self.ws_uri)
        TLSTransport(asyncio.get_running_loop(), sock, connection).begin()
        return connection
