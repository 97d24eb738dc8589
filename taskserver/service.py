"""A Task Server process: the relay, a TLS listener for agents, and one link to the NS.

Trust: the TS proves its own Ed25519 key to the NS (and enrols like an agent). An agent is
served only with a ticket the NS signed for it and this TS, and after proving the ticket's key;
the TS in turn proves its key to the agent by signing the agent's nonce. When an admin rejects or
deletes an agent's key, the NS says ``revoke``: the TS closes that agent's link and refuses the
tickets signed for it until then, for as long as they could be valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.frames import CloseCode

from protocol import PROTOCOL_VERSION
from protocol.errors import HandshakeError, ProtocolError, RemoteError
from protocol.identity import proof_payload, sign, ticket_payload, verify
from protocol.messages import (
    Ack,
    Cancel,
    Dispatch,
    Hello,
    Presence,
    Report,
    Reports,
    Revoke,
    Tickle,
    Welcome,
)
from protocol.session import (
    ALLOWED_DOWN,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_UNAUTHORIZED,
    Role,
    backoff_delays,
)
from runtime import heap, logs
from runtime.gate import HANDSHAKES_AT_ONCE, Gate
from runtime.keys import load_or_create, public_bytes
from runtime.link import (
    ConnectionCap,
    Link,
    accept,
    challenge,
    connect,
    listen,
    refused_for_good,
)
from runtime.metrics import Authorize
from runtime.servers import ServerList
from runtime.tls import ClientTrust, ensure_certificates, file_fingerprint, server_context
from taskserver.metrics import TSMetrics
from taskserver.relay import Relay
from taskserver.store import RelayStore

REVOKED_AT_MOST = 100_000
"""Agents whose tickets this TS refuses, at most; past it the soonest to expire are forgotten."""


class RemoteUpstream:
    """The NS, reached over this TS's link."""

    def __init__(self, link: Link, metrics: TSMetrics | None = None):
        self.link = link
        self.metrics = metrics

    async def deliver(self, reports: list[Report]) -> None:
        started = time.perf_counter()
        await self.link.request(Reports(id=self.link.next_id(), items=reports), timeout_s=60)
        if self.metrics is not None:  # per batch (up to 500 reports)
            self.metrics.rollup_batch.observe(len(reports))
            self.metrics.rollup_seconds.observe(time.perf_counter() - started)

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
        trust: ClientTrust,
        enrol_token: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        compression: bool = False,
        flush_ms: int = 10,
        insecure: bool = False,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        max_connections_per_address: int = 20_000,
        max_handshakes: int = HANDSHAKES_AT_ONCE,
        agent_rate_per_s: float = 200.0,
        metrics_authorize: Authorize | None = None,
    ):
        self.server_url = server_url
        self.servers = ServerList(server_url)
        """The NS's addresses (two for an active/standby pair): the NS link follows the active."""
        self.data_dir = data_dir
        self.name = name
        self.trust = trust
        self.enrol_token = enrol_token
        self.host = host
        self.port = port
        self.advertise = advertise
        self.compression = compression
        self.flush_ms = flush_ms
        self.insecure = insecure
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.tls_fingerprint = ""
        self.connection_cap = ConnectionCap(max_connections_per_address)
        self.gate = Gate(limit=max_handshakes, open_per_address=max_connections_per_address)
        """At most this many handshakes at once; a burst waits its turn before TLS (runtime.gate)."""
        self.agent_rate_per_s = agent_rate_per_s
        self.log = logs.get("taskserver", ts=name)
        self.url = ""
        self.connected = asyncio.Event()
        self.key = load_or_create(os.path.join(data_dir, "taskserver.key"))
        self.public_key = public_bytes(self.key)
        self.ns_key_path = os.path.join(data_dir, "server.pub")
        self.ns_public_key = b""
        self._server: Any = None
        self._ns_task: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self.relay: Relay | None = None
        self.store: RelayStore | None = None
        self.revoked: dict[str, int] = {}
        """Agent → the latest ticket expiry the NS voided for it (``revoke``), kept only while
        such a ticket could still be valid; in ``DATA/revoked.json`` too, so a restarted TS
        refuses them before its link to the NS tells it again (agents come straight back to
        their TS with the ticket they hold)."""
        self.revoked_path = os.path.join(data_dir, "revoked.json")
        self._closing: set[asyncio.Task[None]] = set()
        self.refusal: BaseException | None = None
        """Why the NS refused this TS for good (``runtime.link.refused_for_good``): a used-up
        token, a rejected key, a wrong pin. Its link to the NS then stops trying and ``ended`` is
        set, for ``taskfleet taskserver`` to exit (5) saying what to do."""
        self.ended = asyncio.Event()
        self.metrics = TSMetrics(self, metrics_authorize)
        """``/metrics``, ``/healthz``, ``/readyz`` on the agents' listener (``runtime.metrics``);
        from another machine ``/metrics`` needs ``--metrics-token-file``'s token."""
        self.gate.http = self.metrics.endpoint.process_request

    async def start(self) -> None:
        logs.bind_role("taskserver", self.name)
        os.makedirs(self.data_dir, exist_ok=True)
        if os.path.exists(self.ns_key_path):
            with open(self.ns_key_path) as fh:
                self.ns_public_key = bytes.fromhex(fh.read().strip())
        self.revoked = self._load_revoked()
        self.store = await RelayStore.open(os.path.join(self.data_dir, "taskserver.db"))
        self.relay = Relay(
            self.name,
            self.store,
            log=self.log,
            flush_ms=self.flush_ms,
            agent_rate_per_s=self.agent_rate_per_s,
        )
        await self.relay.start()
        ssl_context = None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(
                "give both --tls-cert and --tls-key, or neither (a certificate is then made)"
            )
        if not self.insecure:
            cert, key = self.tls_cert, self.tls_key
            if not cert or not key:
                cert, key, _ = ensure_certificates(os.path.join(self.data_dir, "tls"), self.name)
            ssl_context = server_context(cert, key)
            self.tls_fingerprint = file_fingerprint(cert)
        else:
            self.log.warning(
                "insecure_listener", reason="--insecure: plain ws://, no TLS; use only for tests"
            )
        self._server, bound = await listen(
            self._serve,
            self.host,
            self.port,
            compression=self.compression,
            ssl_context=ssl_context,
            gate=self.gate,
        )
        self.port = bound
        scheme = "ws" if self.insecure else "wss"
        self.url = self.advertise or f"{scheme}://{self.host}:{bound}"
        self._ns_task = asyncio.create_task(self._ns_loop(), name="ts-ns-link")
        self._trimmer = asyncio.create_task(
            heap.trim_periodically(quiet=self._idle), name="ts-heap-trim"
        )
        self.log.info("taskserver_listening", url=self.url, tls_fingerprint=self.tls_fingerprint)

    def _idle(self) -> bool:
        """No run in flight through this TS and no handshakes under way or waiting: a moment to
        settle the heap (``heap.settle``). A full collection in the middle of a reconnect storm
        walks every pending connection and stalls them (as on the NS: ``NotificationServer._idle``)."""
        return (
            (self.relay is None or self.relay.idle())
            and not self.gate.busy
            and not len(self.gate.queue)
        )

    async def stop(self) -> None:
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self._ns_task is not None:
            self._ns_task.cancel()
            with contextlib.suppress(BaseException):
                await self._ns_task
        if self._server is not None:
            self._server.close()
            self.gate.close()
            await self._server.wait_closed()
        if self.relay is not None:
            await self.relay.stop()
        if self.store is not None:
            await self.store.close()

    # -- agents -------------------------------------------------------------------------

    async def _serve(self, ws: Any) -> None:
        address = str(ws.remote_address[0]) if ws.remote_address else "?"
        if not self.connection_cap.take(address):
            self.log.warning(
                "too_many_connections", address=address, limit=self.connection_cap.limit
            )
            await Link(ws, peer=address).refuse(
                HandshakeError(
                    f"too many connections from {address}",
                    code="too_many_connections",
                    close_code=CLOSE_TOO_MANY_CONNECTIONS,
                )
            )
            return
        try:
            accepted = await accept(
                ws, roles=frozenset({Role.AGENT}), authenticate=self._authenticate, log=self.log
            )
            if accepted is None:
                return
            link, hello, _ = accepted
            await link.send(
                Welcome(
                    id=link.next_id(), reply_to=hello.id, version=PROTOCOL_VERSION, server=self.name
                )
            )
            link.handshake_done()
            assert self.relay is not None
            await self.relay.serve_agent(link, hello)
        finally:
            self.connection_cap.give(address)

    async def _authenticate(self, link: Link, hello: Hello) -> dict[str, Any]:
        """Serve an agent only on the NS's word (a ticket) and the agent's proof of its key."""
        creds = hello.credentials
        ticket, signature, nonce = (
            creds.get("ticket"),
            creds.get("ticket_signature"),
            creds.get("nonce"),
        )

        def refuse(why: str) -> HandshakeError:
            return HandshakeError(
                f"ticket refused: {why}", code="bad_ticket", close_code=CLOSE_UNAUTHORIZED
            )

        if not self.ns_public_key:
            raise refuse("this task server has not reached the NS yet; try again shortly")
        if (
            not isinstance(ticket, dict)
            or not isinstance(signature, bytes)
            or not isinstance(nonce, bytes)
        ):
            raise refuse(
                "an agent must present the ticket the NS gave it, its signature and a nonce"
            )
        if not verify(self.ns_public_key, signature, ticket_payload(ticket)):
            raise refuse("the NS's signature does not verify")
        if ticket.get("agent") != hello.identity or ticket.get("taskserver") != self.name:
            raise refuse(f"it is for {ticket.get('agent')!r} at {ticket.get('taskserver')!r}")
        expires = ticket.get("expires_at")
        if not isinstance(expires, int) or expires < time.time():
            raise refuse("it has expired; register with the NS again")
        void_until = self.revoked.get(hello.identity)
        if void_until is not None and expires <= void_until:
            raise refuse(
                "an admin rejected or deleted this agent's key since it was signed;"
                " the agent must be accepted again (`taskfleet keys`)"
            )
        key = hello.credentials.get("public_key")
        if not isinstance(key, bytes) or key.hex() != ticket.get("public_key"):
            raise refuse("it names another key")
        mine = sign(
            self.key, proof_payload(hello.identity, nonce, "taskserver", self.name, self.public_key)
        )
        await challenge(link, hello, self.name, signature=mine)
        return {"public_key": key}

    # -- the NS -------------------------------------------------------------------------

    async def _ns_loop(self) -> None:
        delay = backoff_delays(initial_s=0.2, maximum_s=10.0)
        attempt = 0
        assert self.relay is not None
        while True:
            link: Link | None = None
            try:
                opened = await self.servers.connect(
                    connect,
                    role=Role.TASKSERVER,
                    identity=self.name,
                    credentials={"enrol_token": self.enrol_token} if self.enrol_token else {},
                    key=self.key,
                    trust=self.trust,
                    info={"url": self.url, "tls_fingerprint": self.tls_fingerprint},
                    compression=self.compression,
                )
                link, welcome = opened  # the active NS of the addresses given
                self._remember_ns_key(str(welcome.config.get("server_public_key", "")))
                self.log.info("ns_connected", server=self.servers.current)
                attempt = 0
                self.relay.set_upstream(RemoteUpstream(link, self.metrics))
                self.connected.set()
                await self._read_ns(link)
            except asyncio.CancelledError:
                raise
            except RemoteError as exc:
                self.log.error("ns_refused", code=exc.code, reason=exc.message)
                if refused_for_good(exc):
                    self.refusal = exc
            except (OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
                self.log.warning("ns_link_lost", error=str(exc) or type(exc).__name__)
                if refused_for_good(exc):
                    self.refusal = exc
            except Exception:
                # A failure here (a full disk, a bug) must not end the TS: log, back off, reconnect.
                self.log.exception("ns_link_failed")
            finally:
                self.relay.set_upstream(None)
                self.connected.clear()
                if link is not None:
                    link.fail_waiters(ConnectionError("link to the NS closed"))
                    # Cancelled: the TS stops (``stop``), so it is going away (1001).
                    task = asyncio.current_task()
                    going = task is not None and task.cancelling() > 0
                    await link.close(CloseCode.GOING_AWAY if going else CloseCode.NORMAL_CLOSURE)
            if self.refusal is not None:  # no retry changes it: stop trying, say so
                self.ended.set()
                return
            await asyncio.sleep(delay(attempt))
            attempt += 1

    def _remember_ns_key(self, hex_key: str) -> None:
        key = bytes.fromhex(hex_key) if hex_key else b""
        if key and key != self.ns_public_key:
            self.ns_public_key = key
            with open(self.ns_key_path, "w") as fh:
                fh.write(hex_key + "\n")

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
                started = time.perf_counter()
                await self.relay.dispatch(message)
                await link.send(Ack(id=link.next_id(), reply_to=message.id))
                self.metrics.dispatch_batch.observe(len(message.targets))
                self.metrics.dispatch_seconds.observe(time.perf_counter() - started)
            elif isinstance(message, Cancel):
                await self.relay.cancel(message.instance_ids)
                await link.send(Ack(id=link.next_id(), reply_to=message.id))
            elif isinstance(message, Tickle):
                await self.relay.tickle(message.computers)
            elif isinstance(message, Revoke):
                self.revoke(message.agents)
                await link.send(Ack(id=link.next_id(), reply_to=message.id))

    def revoke(self, agents: dict[str, int]) -> None:
        """Refuse these agents' tickets expiring at or before the time given for each, and close
        their links now. The set is bounded: entries leave once such tickets have expired, and
        past ``REVOKED_AT_MOST`` the soonest to expire go first."""
        assert self.relay is not None
        now = time.time()
        for name, until in agents.items():
            self.revoked[name] = max(until, self.revoked.pop(name, until))
            conn = self.relay.agents.get(name)
            if conn is not None:
                self.log.info("agent_revoked", agent=name, computer=name)
                task = asyncio.create_task(
                    conn.link.close(CLOSE_UNAUTHORIZED, "this agent's key was revoked by an admin")
                )
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        if len(self.revoked) > REVOKED_AT_MOST or any(u < now for u in self.revoked.values()):
            kept = sorted((u, n) for n, u in self.revoked.items() if u >= now)
            self.revoked = {n: u for u, n in kept[-REVOKED_AT_MOST:]}
        self._save_revoked()

    def _load_revoked(self) -> dict[str, int]:
        """The revocations kept by the last run (those still in force); none if unreadable: the
        NS sends every one again when the link comes up (``server.auth.tell_revoked``)."""
        try:
            with open(self.revoked_path) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        now = time.time()
        if not isinstance(data, dict):
            return {}
        return {str(n): int(u) for n, u in data.items() if isinstance(u, (int, float)) and u >= now}

    def _save_revoked(self) -> None:
        """Write the revocations (a new file put in place: never half a list); a failure is
        logged and the list stays in memory."""
        tmp = self.revoked_path + ".tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump(self.revoked, fh)
            os.replace(tmp, self.revoked_path)
        except OSError as exc:
            self.log.error("revoked_not_saved", error=str(exc))
