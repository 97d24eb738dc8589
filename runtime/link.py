"""One WebSocket connection that speaks taskfleet messages, for every role.

This is the only place that turns frames into messages and back: decoding and limits come
from ``protocol.codec``, so a bad frame is a :class:`~protocol.errors.ProtocolError` with
its close code, and the caller closes that one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
from asyncio import sslproto
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from protocol import PROTOCOL_VERSION, codec
from protocol.errors import FrameError, HandshakeError, ProtocolError, RemoteError
from protocol.identity import NONCE_BYTES, proof_payload, sign, verify
from protocol.messages import Challenge, Error, Hello, Message, Proof, Welcome
from protocol.session import (
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_NORMAL,
    CLOSE_NOT_ALLOWED,
    CLOSE_UNAUTHORIZED,
    Role,
    check_hello,
    public_key_of,
)
from runtime import frames
from runtime.gate import Gate, GatedConnection, connection_class, handshake_done
from runtime.keepalive import WatchedConnection
from runtime.keys import public_bytes
from runtime.tls import ClientTrust
from runtime.tlsio import Connect as ws_connect

HANDSHAKE_TIMEOUT_S = 10.0
FRAME_OVERHEAD = 64
"""A WebSocket frame header plus a TLS record's overhead, rounded up."""
LISTEN_BACKLOG = 2048
"""Connections the kernel holds before we accept them: a burst is accepted, then gated."""

# taskfleet's own connections run TLS on runtime.tlsio; this is for any that still go through
# asyncio's TLS (tlsio.Connect falls back to it for anything but a direct wss:// connect).
# asyncio gives every TLS connection a 256 KiB read buffer, zero-filled (sslproto.py), for the
# life of the connection. A TS with ten thousand agents would spend GiBs on it. taskfleet frames
# from agents are small; a larger frame (a dispatch) is simply read in more steps. Measured per
# idle TLS connection (websockets server, OpenSSL 3.0): 256 KiB -> ~290 KiB, 16 KiB -> 50 KiB,
# 4 KiB -> 38 KiB, against 14.5 KiB without TLS; run times unchanged (bench/HISTORY.md, stop 8).
if hasattr(sslproto.SSLProtocol, "max_size"):
    sslproto.SSLProtocol.max_size = 4 * 1024


class Link:
    """A connection plus message ids and request/reply correlation.

    ``request`` sends a message and waits for the message whose ``reply_to`` names it;
    the owner's read loop must hand every incoming message to :meth:`resolve` first.
    """

    def __init__(
        self,
        ws: ClientConnection | ServerConnection,
        *,
        limits: codec.Limits = codec.DEFAULT_LIMITS,
        peer: str = "",
    ):
        self.ws = ws
        self.limits = limits
        self._after_handshake: tuple[codec.Limits, int | None] | None = None
        """The limits to raise to once the peer is authenticated (``accept``)."""
        self.peer = peer
        self.who = ""
        self._n = 0
        self._write_high = 0
        self._waiting: dict[str, asyncio.Future[Message]] = {}

    def next_id(self) -> str:
        """A fresh message id for this connection."""
        self._n += 1
        return str(self._n)

    async def send(self, message: Message) -> None:
        """Send one message as one binary frame."""
        await self.send_frame(codec.encode(message))

    async def send_frame(self, data: bytes) -> None:
        """Send one already encoded message."""
        if not self.send_now(data):
            await self.ws.send(data)

    def send_now(self, data: bytes) -> bool:
        """Write one frame at once, when the connection is open and the frame fits under its
        write limit; return False (nothing written) otherwise, for ``ws.send`` to wait.

        The common case of ``websockets``' ``send`` without its coroutine, context manager and
        drain (which has nothing to wait for when the frame fits): a TS writes thousands of
        frames per dispatch, an agent one per result. Frames are never fragmented here, so no
        fragmented send can be in progress.
        """
        if not self.is_open or not self.fits(len(data)):
            return False
        frames.send_binary(self.ws, data)
        return True

    @property
    def is_open(self) -> bool:
        """The WebSocket is open: not closing, not closed."""
        return self.ws.protocol.state is State.OPEN

    def fits(self, size: int) -> bool:
        """Whether a frame of ``size`` bytes can be written now without waiting for the peer to
        read: the connection is not paused or closing and stays under its write limit with it."""
        ws = self.ws
        if ws.paused or ws.transport.is_closing():
            return False
        transport = ws.transport
        if self._write_high == 0:
            self._write_high = transport.get_write_buffer_limits()[1]
        return bool(transport.get_write_buffer_size() + size + FRAME_OVERHEAD <= self._write_high)

    def abort(self) -> None:
        """Drop the connection at once, without a close handshake (a peer that does not read)."""
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def recv(self) -> Message:
        """Receive and decode one message. Raises ProtocolError or ConnectionClosed."""
        raw = await self.ws.recv()
        # A text frame is refused by the codec (FrameError), like any other non-msgpack frame.
        return codec.decode(raw, self.limits)  # type: ignore[arg-type]

    def deliver(self, handler: Callable[[Message], None]) -> asyncio.Future[ProtocolError | None]:
        """Hand each message to ``handler`` as its frame is read, instead of :meth:`recv`.

        Only on a connection accepted by :func:`listen` (``runtime.gate``): a frame goes from the
        transport's read straight to ``handler``, no task wakes per message, and the serving
        coroutine waits on one future instead of a stack of ``recv`` calls (a TS serves
        thousands of agents this way). A message must be one unfragmented binary frame here.
        The future ends with the connection (None), or with the first ProtocolError from a frame
        or from ``handler`` (nothing more is handed over; the caller refuses the peer); any other
        exception from ``handler`` ends it with that exception.
        """
        ws = self.ws
        if not isinstance(ws, GatedConnection):
            raise TypeError("deliver needs a connection accepted by runtime.link.listen")
        done: asyncio.Future[ProtocolError | None] = asyncio.get_running_loop().create_future()

        def stop(result: ProtocolError | None, exc: BaseException | None = None) -> None:
            ws.sink = None
            if done.done():
                return
            if exc is not None:
                done.set_exception(exc)
            else:
                done.set_result(result)

        def on_frame(frame: Frame) -> None:
            if done.done():
                return
            if frame.opcode is not Opcode.BINARY or not frame.fin:
                stop(FrameError("a message is one binary frame: no text, no fragments"))
                return
            try:
                handler(codec.decode(frame.data, self.limits))
            except ProtocolError as exc:
                stop(exc)
            except Exception as exc:
                stop(None, exc)

        # Frames read before now wait in websockets' queue: they go first, then the sink.
        queue = ws.recv_messages.frames.queue
        while queue and not done.done():
            on_frame(queue.popleft())
        ws.recv_messages.maybe_resume()
        if not done.done():
            ws.sink = on_frame
            ws.connection_lost_waiter.add_done_callback(lambda _: stop(None))
        return done

    def resolve(self, message: Message) -> bool:
        """If ``message`` answers a pending request, complete it and return True."""
        reply_to = getattr(message, "reply_to", "")
        if reply_to:
            fut = self._waiting.pop(reply_to, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(message)
                return True
        return False

    async def request(self, message: Message, timeout_s: float = 30.0) -> Message:
        """Send ``message`` and wait for its reply; an ``error`` reply raises RemoteError."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[message.id] = fut
        try:
            await self.send(message)
            reply = await asyncio.wait_for(fut, timeout_s)
        finally:
            self._waiting.pop(message.id, None)
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.message)
        return reply

    def fail_waiters(self, exc: BaseException) -> None:
        """The connection ended: every pending request fails with ``exc``."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()

    def handshake_done(self) -> None:
        """The ``welcome`` is out: let the listener's gate start the next waiting handshake."""
        handshake_done(self.ws)

    def hold_to_hello_limits(self) -> None:
        """Until :meth:`lift_hello_limits`, take only frames an unauthenticated peer needs
        (``codec.HELLO_LIMITS``): both the WebSocket frame size and msgpack's object counts."""
        if self._after_handshake is None:
            protocol = self.ws.protocol
            self._after_handshake = (self.limits, protocol.max_message_size)
            self.limits = codec.HELLO_LIMITS
            protocol.max_message_size = min(
                codec.HELLO_LIMITS.max_frame_bytes,
                protocol.max_message_size or codec.HELLO_LIMITS.max_frame_bytes,
            )

    def lift_hello_limits(self) -> None:
        """The peer is authenticated: its frames may be as large as everyone's again."""
        if self._after_handshake is not None:
            self.limits, frame_bytes = self._after_handshake
            self._after_handshake = None
            self.ws.protocol.max_message_size = frame_bytes

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close with a code and a reason (reasons are cut to fit a close frame)."""
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason.encode()[:120].decode(errors="ignore"))

    async def refuse(self, exc: ProtocolError, reply_to: str = "") -> None:
        """Tell the peer why (an ``error`` message), then close with the error's code."""
        self.handshake_done()  # a refused peer does not hold a handshake place while it closes
        with contextlib.suppress(Exception):
            await self.send(
                Error(id=self.next_id(), reply_to=reply_to, code=exc.code, message=exc.message)
            )
        await self.close(exc.close_code, exc.message)


PERMANENT_REFUSALS = frozenset(
    {
        "enrol_token_refused",  # 4401: the token is used up, expired, revoked, unknown, another role's
        "rejected",  # 4401: an admin rejected this key
        "key_mismatch",  # 4401: the name is registered with another key (a reinstalled machine)
        "version_mismatch",  # 4402: one side must be upgraded
        "bad_identity",  # 4403: the name is not a valid computer name
        "untrusted_server",  # ours: a wrong pin, no --server-fingerprint/--ca, plain ws:// refused
    }
)
"""Refusals by (or of) the NS that trying again will not change: a person must act (a new token,
``keys accept`` or ``keys delete``, another pin, an upgrade). Everything else (``pending``, limits,
time-outs, a server that is down) is transient: back off and try again."""


def refused_for_good(exc: BaseException) -> bool:
    """Whether a failed connection to the NS is a refusal no retry will change
    (``PERMANENT_REFUSALS``, or a certificate that does not verify against ``--ca``)."""
    if isinstance(exc, RemoteError):
        return exc.code in PERMANENT_REFUSALS
    return isinstance(exc, ssl.SSLCertVerificationError)


ServerCheck = Callable[[Challenge], str | None]
"""Checks a server's own proof in its ``challenge``; returns a reason to refuse, or None."""


async def connect(
    url: str,
    *,
    role: Role,
    identity: str,
    credentials: dict[str, Any],
    trust: ClientTrust,
    key: Ed25519PrivateKey | None = None,
    check_server: ServerCheck | None = None,
    info: dict[str, Any] | None = None,
    capabilities: list[str] | None = None,
    compression: bool = False,
    open_timeout_s: float = 10.0,
    limits: codec.Limits = codec.DEFAULT_LIMITS,
    source: str | None = None,
) -> tuple[Link, Welcome]:
    """Open a connection the client trusts, say ``hello``, prove ``key`` if challenged.

    ``source``: the local address to connect from (a host with several; default: any).
    Raises RemoteError when the server is not trusted or refuses (its code says why),
    OSError or websockets errors when it cannot be reached.
    """
    extra: dict[str, Any] = {} if source is None else {"local_addr": (source, 0)}
    ws = await ws_connect(
        url,
        ssl=trust.context(url),
        compression="deflate" if compression else None,
        max_size=limits.max_frame_bytes,
        open_timeout=open_timeout_s,
        proxy=None,
        ping_interval=None,  # our listeners ping; the client watches for their silence
        create_connection=WatchedConnection,
        user_agent_header=f"taskfleet/{PROTOCOL_VERSION}",
        **extra,
    )
    link = Link(ws, peer=url, limits=limits)
    try:
        untrusted = trust.check(url, ws.transport)
    except OSError:  # it closed at once: a lost connection
        await link.close()
        raise
    if untrusted is not None:
        await link.close()
        raise RemoteError("untrusted_server", f"refusing {url}: {untrusted}")
    creds = dict(credentials)
    if key is not None:
        creds["public_key"] = public_bytes(key)
    hello = Hello(
        id=link.next_id(),
        version=PROTOCOL_VERSION,
        role=str(role),
        identity=identity,
        credentials=creds,
        capabilities=capabilities or [],
        info=info or {},
    )
    try:
        await link.send(hello)
        proven = check_server is None
        while True:
            reply = await asyncio.wait_for(link.recv(), open_timeout_s)
            if not isinstance(reply, Challenge):
                break
            if check_server is not None:
                proven = True
                reason = check_server(reply)
                if reason is not None:
                    raise RemoteError("untrusted_server", f"refusing {url}: {reason}")
            if key is None:
                raise RemoteError(
                    "bad_handshake", "the server asked for a key proof, but this client has no key"
                )
            payload = proof_payload(
                reply.server, reply.nonce, str(role), identity, public_bytes(key)
            )
            await link.send(
                Proof(id=link.next_id(), reply_to=reply.id, signature=sign(key, payload))
            )
    except BaseException:
        await link.close()
        raise
    if isinstance(reply, Error):
        await link.close()
        raise RemoteError(reply.code, reply.message)
    if not isinstance(reply, Welcome):
        await link.close()
        raise RemoteError("bad_handshake", f"expected 'welcome', got {reply.TYPE!r}")
    if not proven:
        await link.close()
        raise RemoteError(
            "untrusted_server", f"refusing {url}: it welcomed us without proving its key"
        )
    return link, reply


Authenticate = Callable[[Link, Hello], Awaitable[dict[str, Any]]]
"""A role's check of a new peer: returns facts for the caller, or raises HandshakeError."""


async def accept(
    ws: ServerConnection,
    *,
    roles: frozenset[Role],
    authenticate: Authenticate,
    log: Any,
    deadline_s: float = HANDSHAKE_TIMEOUT_S,
) -> tuple[Link, Hello, dict[str, Any]] | None:
    """Read and check the ``hello`` and the peer's credentials, all within the deadline.

    On refusal, sends ``error``, closes with the documented code, logs, and returns None.
    """
    addr = ws.remote_address
    peer = f"{addr[0]}:{addr[1]}" if addr else "?"
    link = Link(ws, peer=peer)
    # Until the peer is authenticated: small frames, few objects (codec.HELLO_LIMITS).
    link.hold_to_hello_limits()

    async def handshake() -> tuple[Hello, dict[str, Any]]:
        hello = check_hello(await link.recv(), roles=roles)
        link.peer = f"{hello.role}:{hello.identity}@{peer}"
        return hello, await authenticate(link, hello)

    try:
        hello, facts = await asyncio.wait_for(handshake(), deadline_s)
    except TimeoutError:
        log.warning("handshake_timeout", peer=link.peer, deadline_s=deadline_s)
        await link.refuse(
            HandshakeError(
                f"no complete handshake within {deadline_s:g} s",
                code="handshake_timeout",
                close_code=CLOSE_HANDSHAKE_TIMEOUT,
            )
        )
        return None
    except ProtocolError as exc:
        log.warning("handshake_refused", peer=link.peer, code=exc.code, reason=exc.message)
        await link.refuse(exc)
        return None
    except ConnectionClosed:
        return None
    link.lift_hello_limits()
    return link, hello, facts


async def challenge(link: Link, hello: Hello, server_id: str, signature: bytes = b"") -> bytes:
    """Make the peer prove the key in its ``hello``; return the key. ``signature`` is our own proof."""
    key = public_key_of(hello)
    nonce = os.urandom(NONCE_BYTES)
    await link.send(
        Challenge(
            id=link.next_id(), reply_to=hello.id, nonce=nonce, server=server_id, signature=signature
        )
    )
    reply = await link.recv()
    if not isinstance(reply, Proof):
        raise HandshakeError(
            f"expected 'proof' after the challenge, got {reply.TYPE!r}",
            code="proof_expected",
            close_code=CLOSE_NOT_ALLOWED,
        )
    if not verify(
        key, reply.signature, proof_payload(server_id, nonce, hello.role, hello.identity, key)
    ):
        raise HandshakeError(
            "the key proof does not verify: the signature is not over this connection's challenge",
            code="bad_proof",
            close_code=CLOSE_UNAUTHORIZED,
        )
    return key


class ConnectionCap:
    """Counts open connections per remote address and refuses those over the cap.

    It counts connections past TLS, to tell an honest client why (4431); the listener's gate
    (``runtime.gate``) caps every socket per address before any TLS work, a little above this."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: Counter[str] = Counter()

    def take(self, address: str) -> bool:
        if self.limit and self.open[address] >= self.limit:
            return False
        self.open[address] += 1
        return True

    def give(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


async def listen(
    handler: Callable[[ServerConnection], Awaitable[None]],
    host: str,
    port: int,
    *,
    compression: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    gate: Gate | None = None,
    tls_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    start_serving: bool = True,
    option: str = "--listen HOST:PORT",
) -> tuple[Server, int]:
    """Start a WebSocket listener (TLS when ``ssl_context``); return it and the bound port.

    With ``start_serving`` false the address is only bound (a taken port fails here, before the
    caller does anything else) and nothing is accepted until ``await server.start_serving()``.
    A listener that cannot be opened raises :class:`ListenError` saying why and what to do
    (``option``: the setting that chose the address, named in the message).

    Connections pass ``gate`` (``runtime.gate``) before TLS: at most ``gate.limit`` handshakes run
    at once, the rest wait their turn. The handler calls :meth:`Link.handshake_done` once it
    has sent its ``welcome``; the caller calls ``gate.close()`` when it stops the listener.
    """
    gate = gate if gate is not None else Gate()
    try:
        server = await ws_serve(
            handler,
            host,
            port,
            ssl=None,  # the gated connection runs TLS itself, once admitted
            create_connection=connection_class(gate, ssl_context, tls_timeout_s),
            compression="deflate" if compression else None,
            max_size=codec.DEFAULT_LIMITS.max_frame_bytes,
            ping_interval=None,  # the gate's keepalive pings every connection, from one task
            server_header="taskfleet",
            backlog=LISTEN_BACKLOG,
            start_serving=start_serving,
        )
    except OSError as exc:
        raise ListenError(_cannot_listen(host, port, exc, option)) from exc
    gate.listening(server.server)
    bound = next(iter(server.sockets)).getsockname()[1]
    return server, int(bound)


class ListenError(RuntimeError):
    """A listener could not be opened on its address; the message says why and what to do."""


def _cannot_listen(host: str, port: int, exc: OSError, option: str) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        how = (
            f"another process listens there (`ss -ltnp 'sport = :{port}'` names it): stop it,"
            f" or give another {option}"
        )
    elif exc.errno == errno.EACCES:
        how = f"ports below 1024 need privileges: give {option} with a port above 1023"
    elif exc.errno == errno.EADDRNOTAVAIL:
        how = f"{host} is not an address of this machine: give {option} with one of its addresses"
    elif isinstance(exc, socket.gaierror):
        how = f"{host} is not a host name this machine resolves: give {option} with an address"
    else:
        how = f"check {option}"
    # asyncio words a bind error "error while attempting to bind on address ...": the cause only
    if exc.errno is not None and exc.errno > 0:
        reason = os.strerror(exc.errno)
    else:
        reason = exc.strerror or str(exc)
    return f"cannot listen on {where}: {reason.lower()}; {how}"


def split_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); ``[::1]:80`` works; a bare host gets the default port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host or "127.0.0.1", int(port)
    return text, default_port
