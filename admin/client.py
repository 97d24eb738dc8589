"""The admin client: one connection to the NS, requests by ``op``, and run watching."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidMessage

from protocol.codec import Limits
from protocol.errors import RemoteError
from protocol.messages import Event, Request, Response
from protocol.session import Role
from runtime.link import Link, connect
from runtime.servers import ServerList
from runtime.tls import ClientTrust

ADMIN_LIMITS = Limits(
    max_frame_bytes=256 << 20,
    max_str_len=256 << 20,
    max_array_len=1_000_000,
    max_map_len=1_000_000,
    max_depth=64,
)
"""Bounds on what the admin client accepts from the NS: large, for runs of thousands of computers."""
BUSY_RETRY_S = 30.0
"""How long an admin keeps trying when the NS's handshake gate turns it away (runtime.gate)."""


SERVER_URL_FORM = "wss://HOST:PORT (e.g. wss://127.0.0.1:8470)"


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a server URL, with the form to use instead; None when it is one.
    ``URL1,URL2`` (the two NS of an active/standby pair): each must be one."""
    if "," in url:
        urls = [part.strip() for part in url.split(",")]
        if not all(urls):
            return f"{url!r} has an empty address: the form is URL1,URL2 (each {SERVER_URL_FORM})"
        return next((p for p in map(url_problem, urls) if p is not None), None)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return f"{url!r} is not a server URL: the form is {SERVER_URL_FORM}; here: wss://{url}"
    if scheme not in ("ws", "wss"):
        return (
            f"{url!r} is not a server URL: taskfleet speaks WebSocket over TLS, not {scheme}://;"
            f" the form is {SERVER_URL_FORM}; here: wss://{rest}"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"{url!r} is not a server URL ({exc}): the form is {SERVER_URL_FORM}"
    if not parts.hostname:
        return f"{url!r} names no host: the form is {SERVER_URL_FORM}"
    return None


async def speaks_tls(url: str, timeout_s: float = 3.0) -> bool:
    """Whether the server at a ``ws://`` URL answers a TLS handshake (it wants ``wss://``).
    Asked only after a ``ws://`` connection failed, so the common path pays nothing."""
    parts = urlsplit(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS; nothing is sent
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 80, ssl=ctx), timeout_s
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def _turned_away(exc: BaseException) -> bool:
    """A connection the server closed before or during TLS: what a full handshake gate does
    during a registration burst. Not: nothing listening, or a certificate we do not trust."""
    if isinstance(exc, ConnectionRefusedError | ssl.SSLCertVerificationError):
        return False
    if isinstance(exc, InvalidMessage):  # plain ws://: closed before the HTTP response
        exc = exc.__cause__ or exc
    return isinstance(exc, ConnectionError | ssl.SSLError | EOFError)


class AdminClient:
    """``async with AdminClient(url, token) as c: await c.call("tasks.list")``."""

    def __init__(
        self,
        url: str,
        token: str,
        trust: ClientTrust,
        *,
        identity: str = "admin",
        busy_retry_s: float = BUSY_RETRY_S,
    ):
        self.url = url
        self.servers = ServerList(url)
        """Its addresses (``URL1,URL2``: an active/standby pair): the active one answers."""
        self.busy_retry_s = busy_retry_s
        self.token = token
        self.trust = trust
        self.role = ""
        self.identity = identity
        self.link: Link | None = None
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AdminClient:
        # While 10,000 agents register at once, the NS's handshake gate may turn a new connection
        # away before TLS; an administrator's command should wait its turn, not fail.
        if (problem := url_problem(self.url)) is not None:
            raise RemoteError("bad_url", problem)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.busy_retry_s
        delay = 0.2
        probed = not self.url.startswith("ws://") or len(self.servers.urls) > 1
        while True:
            try:
                # Answers come from the server we chose to trust; a run of thousands is big.
                self.link, welcome = await self.servers.connect(
                    connect,
                    role=Role.ADMIN,
                    identity=self.identity,
                    credentials={"token": self.token},
                    trust=self.trust,
                    limits=ADMIN_LIMITS,
                )
                break
            except Exception as exc:
                # Every address of a pair refusing: one is taking over from the other (seconds).
                changing_hands = len(self.servers.urls) > 1 and isinstance(
                    exc, ConnectionRefusedError
                )
                if not _turned_away(exc) and not changing_hands:
                    raise
                if not probed:  # ws:// to a TLS listener also looks turned away: ask once
                    probed = True
                    if await speaks_tls(self.url):
                        raise RemoteError(
                            "speaks_tls",
                            f"the server at {self.url} speaks TLS: use"
                            f" wss://{self.url.partition('://')[2]} (with --server-fingerprint"
                            " or --ca)",
                        ) from None
                if loop.time() + delay > give_up:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        self.role = str(welcome.config.get("role", ""))
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.link is not None:
            if exc[0] is None:
                await self.link.close()
                return
            # Interrupted (Ctrl-C) or failed: a second for the close handshake, not websockets'
            # ten; a busy NS must not keep a person waiting for the prompt.
            try:
                await asyncio.wait_for(self.link.close(), 1.0)
            except TimeoutError:
                self.link.abort()

    async def _read(self) -> None:
        assert self.link is not None
        try:
            while True:
                message = await self.link.recv()
                if self.link.resolve(message):
                    continue
                if isinstance(message, Event):
                    self._events.put_nowait(message)
        except (ConnectionClosed, Exception) as exc:
            self.link.fail_waiters(ConnectionError(f"connection to the server closed: {exc}"))
            self._events.put_nowait(None)

    async def call(self, op: str, timeout_s: float = 60.0, **args: Any) -> Any:
        """Run one operation on the NS; raise RemoteError with the server's message if refused."""
        assert self.link is not None
        try:
            reply = await self.link.request(
                Request(id=self.link.next_id(), op=op, args=args), timeout_s
            )
        except ConnectionClosed as exc:
            # Closed before the request went out: the same error as a reply the close cut off
            # (``_read``), so a caller handles one kind of lost connection, not two.
            raise ConnectionError(f"connection to the server closed: {exc}") from exc
        assert isinstance(reply, Response)
        return reply.data

    async def add_document(self, op: str, path: str) -> Any:
        """Send a document file (TOML or JSON) to an ``*.add`` operation.

        A file that cannot be read is a usage error (``bad_request``), like a bad document.
        """
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise RemoteError("bad_request", f"cannot read {path}: {exc.strerror or exc}") from None
        return await self.call(op, text=text, filename=path)

    async def watch(
        self, run_id: int, instances: bool = True, output: bool = False
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield ``("snapshot", run)`` first, then one ``("instance", change)`` per change (the
        NS sends them in ``instances`` batches), then ``("run", final run)`` when it ends.

        With ``instances`` false the run views carry ``counts`` instead of instance rows, and
        each roll-up yields one ``("counts", {"changes": n, "states": {...}})`` (a run on
        thousands of computers, followed without moving every row to this client).

        With ``output`` also ``("output", {"items": [...]})``: pieces of what the run's scripts
        print while they run (``taskfleet watch --output``)."""
        view = await self.call("run.watch", run_id=run_id, instances=instances, output=output)
        yield "snapshot", view
        if view["status"] != "running":
            yield "run", view
            return
        while True:
            event = await self._events.get()
            if event is None:
                raise RemoteError(
                    "disconnected", "the connection to the server closed while watching"
                )
            if event.run_id != run_id:
                continue
            if event.kind == "run":
                yield "run", await self.call("run.show", run_id=run_id, instances=instances)
                return
            if event.kind == "instances":  # a batch of changes, one per roll-up
                for item in event.data.get("items") or ():
                    yield "instance", item
            else:
                yield event.kind, event.data
