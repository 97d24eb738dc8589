"""A Task Server process: the relay, a listener for agents, and one link to the NS."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import websockets

from agent import logs
from agent.link import Link, accept, connect, listen
from protocol import PROTOCOL_VERSION
from protocol.errors import ProtocolError, RemoteError
from protocol.messages import Ack, Cancel, Dispatch, Presence, Report, Reports, Tickle, Welcome
from protocol.session import ALLOWED_DOWN, Role, backoff_delays
from taskserver.relay import Relay
from taskserver.store import RelayStore


class RemoteUpstream:
    """The NS, reached over this TS's link."""

    def __init__(self, link: Link):
        self.link = link

    async def deliver(self, reports: list[Report]) -> None:
        await self.link.request(Reports(id=self.link.next_id(), items=reports), timeout_s=60)

    async def presence(self, online: list[str], offline: list[str], full: bool) -> None:
        await self.link.send(
            Presence(id=self.link.next_id(), online=online, offline=offline, full=full)
        )


class TaskServer:
    """One Task Server. ``start`` returns once it listens; ``url`` is where agents reach it."""

    def __init__(
        self,
        *,
        server_url: str,
        data_dir: str,
        name: str,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        compression: bool = False,
        flush_ms: int = 10,
    ):
        self.server_url = server_url
        self.data_dir = data_dir
        self.name = name
        self.token = token
        self.host = host
        self.port = port
        self.advertise = advertise
        self.compression = compression
        self.flush_ms = flush_ms
        self.log = logs.get("taskserver", ts=name)
        self.url = ""
        self.connected = asyncio.Event()
        self._server: Any = None
        self._ns_task: asyncio.Task[None] | None = None
        self.relay: Relay | None = None
        self.store: RelayStore | None = None

    async def start(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        self.store = await RelayStore.open(os.path.join(self.data_dir, "taskserver.db"))
        self.relay = Relay(self.name, self.store, log=self.log, flush_ms=self.flush_ms)
        await self.relay.start()
        self._server, bound = await listen(
            self._serve, self.host, self.port, compression=self.compression
        )
        self.port = bound
        self.url = self.advertise or f"ws://{self.host}:{bound}"
        self._ns_task = asyncio.create_task(self._ns_loop(), name="ts-ns-link")
        self.log.info("taskserver_listening", url=self.url)

    async def stop(self) -> None:
        if self._ns_task is not None:
            self._ns_task.cancel()
            with contextlib.suppress(BaseException):
                await self._ns_task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self.relay is not None:
            await self.relay.stop()
        if self.store is not None:
            await self.store.close()

    async def _serve(self, ws: Any) -> None:
        accepted = await accept(ws, token=self.token, roles=frozenset({Role.AGENT}), log=self.log)
        if accepted is None:
            return
        link, hello = accepted
        await link.send(
            Welcome(
                id=link.next_id(), reply_to=hello.id, version=PROTOCOL_VERSION, server=self.name
            )
        )
        assert self.relay is not None
        await self.relay.serve_agent(link, hello)

    async def _ns_loop(self) -> None:
        delay = backoff_delays(initial_s=0.2, maximum_s=10.0)
        attempt = 0
        assert self.relay is not None
        while True:
            link: Link | None = None
            try:
                link, _ = await connect(
                    self.server_url,
                    role=Role.TASKSERVER,
                    identity=self.name,
                    token=self.token,
                    info={"url": self.url},
                    compression=self.compression,
                )
                self.log.info("ns_connected", server=self.server_url)
                attempt = 0
                self.relay.set_upstream(RemoteUpstream(link))
                self.connected.set()
                await self._read_ns(link)
            except asyncio.CancelledError:
                raise
            except RemoteError as exc:
                self.log.error("ns_refused", code=exc.code, reason=exc.message)
            except (OSError, TimeoutError, websockets.WebSocketException, ProtocolError) as exc:
                self.log.warning("ns_link_lost", error=str(exc) or type(exc).__name__)
            except Exception:
                # A failure here (a full disk, a bug) must not end the TS: log, back off, reconnect.
                self.log.exception("ns_link_failed")
            finally:
                self.relay.set_upstream(None)
                self.connected.clear()
                if link is not None:
                    link.fail_waiters(ConnectionError("link to the NS closed"))
                    await link.close()
            await asyncio.sleep(delay(attempt))
            attempt += 1

    async def _read_ns(self, link: Link) -> None:
        assert self.relay is not None
        allowed = ALLOWED_DOWN[Role.TASKSERVER]
        while True:
            message = await link.recv()
            if link.resolve(message):
                continue
            if message.TYPE not in allowed:
                self.log.warning("ns_sent_unexpected", type=message.TYPE)
                continue
            if isinstance(message, Dispatch):
                await self.relay.dispatch(message)
                await link.send(Ack(id=link.next_id(), reply_to=message.id))
            elif isinstance(message, Cancel):
                await self.relay.cancel(message.instance_ids)
                await link.send(Ack(id=link.next_id(), reply_to=message.id))
            elif isinstance(message, Tickle):
                await self.relay.tickle(message.computers)
