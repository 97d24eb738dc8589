"""One WebSocket connection that speaks taskfleet messages, for every role.

This is the only place that turns frames into messages and back: decoding and limits come
from ``protocol.codec``, so a bad frame is a :class:`~protocol.errors.ProtocolError` with
its close code, and the caller closes that one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve

from protocol import PROTOCOL_VERSION, codec
from protocol.errors import HandshakeError, ProtocolError, RemoteError
from protocol.messages import Error, Hello, Message, Welcome
from protocol.session import (
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_NORMAL,
    Role,
    check_hello,
)

HANDSHAKE_TIMEOUT_S = 10.0


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
        self.peer = peer
        self._n = 0
        self._waiting: dict[str, asyncio.Future[Message]] = {}

    def next_id(self) -> str:
        """A fresh message id for this connection."""
        self._n += 1
        return str(self._n)

    async def send(self, message: Message) -> None:
        """Send one message as one binary frame."""
        await self.ws.send(codec.encode(message))

    async def recv(self) -> Message:
        """Receive and decode one message. Raises ProtocolError or ConnectionClosed."""
        raw = await self.ws.recv()
        # A text frame is refused by the codec (FrameError), like any other non-msgpack frame.
        return codec.decode(raw, self.limits)  # type: ignore[arg-type]

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

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close with a code and a reason (reasons are cut to fit a close frame)."""
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason.encode()[:120].decode(errors="ignore"))

    async def refuse(self, exc: ProtocolError, reply_to: str = "") -> None:
        """Tell the peer why (an ``error`` message), then close with the error's code."""
        with contextlib.suppress(Exception):
            await self.send(
                Error(id=self.next_id(), reply_to=reply_to, code=exc.code, message=exc.message)
            )
        await self.close(exc.close_code, exc.message)


async def connect(
    url: str,
    *,
    role: Role,
    identity: str,
    token: str,
    info: dict[str, Any] | None = None,
    capabilities: list[str] | None = None,
    compression: bool = False,
    open_timeout_s: float = 10.0,
    limits: codec.Limits = codec.DEFAULT_LIMITS,
) -> tuple[Link, Welcome]:
    """Open a connection, say ``hello`` and return the link and the ``welcome``.

    Raises RemoteError when the server refuses the hello (its code says why), OSError or
    websockets errors when the server cannot be reached.
    """
    ws = await ws_connect(
        url,
        compression="deflate" if compression else None,
        max_size=limits.max_frame_bytes,
        open_timeout=open_timeout_s,
        proxy=None,
        ping_interval=20,
        ping_timeout=20,
        user_agent_header=f"taskfleet/{PROTOCOL_VERSION}",
    )
    link = Link(ws, peer=url, limits=limits)
    hello = Hello(
        id=link.next_id(),
        version=PROTOCOL_VERSION,
        role=str(role),
        identity=identity,
        credentials={"token": token},
        capabilities=capabilities or [],
        info=info or {},
    )
    try:
        await link.send(hello)
        reply = await asyncio.wait_for(link.recv(), open_timeout_s)
    except BaseException:
        await link.close()
        raise
    if isinstance(reply, Error):
        await link.close()
        raise RemoteError(reply.code, reply.message)
    if not isinstance(reply, Welcome):
        await link.close()
        raise RemoteError("bad_handshake", f"expected 'welcome', got {reply.TYPE!r}")
    return link, reply


async def accept(
    ws: ServerConnection,
    *,
    token: str,
    roles: frozenset[Role],
    log: Any,
    deadline_s: float = HANDSHAKE_TIMEOUT_S,
) -> tuple[Link, Hello] | None:
    """Read and check the ``hello`` of a new connection within the deadline.

    On refusal, sends ``error``, closes with the documented code, logs, and returns None.
    """
    addr = ws.remote_address
    peer = f"{addr[0]}:{addr[1]}" if addr else "?"
    link = Link(ws, peer=peer)
    try:
        first = await asyncio.wait_for(link.recv(), deadline_s)
        hello = check_hello(first, token=token, roles=roles)
    except TimeoutError:
        log.warning("handshake_timeout", peer=peer, deadline_s=deadline_s)
        await link.refuse(
            HandshakeError(
                f"no hello within {deadline_s:g} s",
                code="handshake_timeout",
                close_code=CLOSE_HANDSHAKE_TIMEOUT,
            )
        )
        return None
    except ProtocolError as exc:
        log.warning("handshake_refused", peer=peer, code=exc.code, reason=exc.message)
        await link.refuse(exc)
        return None
    except websockets.ConnectionClosed:
        return None
    link.peer = f"{hello.role}:{hello.identity}@{peer}"
    return link, hello


async def listen(
    handler: Callable[[ServerConnection], Awaitable[None]],
    host: str,
    port: int,
    *,
    compression: bool = False,
) -> tuple[Server, int]:
    """Start a WebSocket listener; return it and the port it bound (for port 0)."""
    server = await ws_serve(
        handler,
        host,
        port,
        compression="deflate" if compression else None,
        max_size=codec.DEFAULT_LIMITS.max_frame_bytes,
        ping_interval=20,
        ping_timeout=20,
        server_header="taskfleet",
    )
    bound = next(iter(server.sockets)).getsockname()[1]
    return server, int(bound)


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
