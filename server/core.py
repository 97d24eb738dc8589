"""The Notification Server: assembled from its parts, started, served, stopped.

``NotificationServer`` owns the process's listeners, its database, the built-in task service
and the background tasks. What it does with them lives in its parts, one concern each:

- ``server.runs``: a run's life (create, open steps, end, time limits, server tasks);
- ``server.dispatch``: sending pending instances to their routes in batches;
- ``server.rollup``: applying results and presence, telling watchers;
- ``server.connections`` and ``server.auth``: who connects, and what they may do;
- ``server.admin_api``: the admin operations; ``server.jobs``: server jobs.
- ``server.schedules``: firing schedules; ``server.retention``: purging old rows.

The parts below the core see it through ``server.interface.NS`` and never import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter, defaultdict
from typing import Any

from protocol.identity import fingerprint
from protocol.messages import Report
from protocol.session import Role
from protocol.workauth import master_work_key
from runtime import heap, logs
from runtime.gate import HANDSHAKES_AT_ONCE, WAIT_AT_MOST_S, Gate
from runtime.keys import load_or_create, public_bytes
from runtime.link import HANDSHAKE_TIMEOUT_S, ConnectionCap, Link, listen
from runtime.runner import ScriptRun
from runtime.tls import ClientTrust, ensure_certificates, file_fingerprint, server_context
from server.auth import bootstrap_admin
from server.connections import ADMIN_ONLY, ALL_ROLES, after_presence, serve
from server.console import Console, http_hook
from server.dispatch import Dispatcher
from server.guards import AdminSessions, Alerts
from server.hierarchy import Hierarchy
from server.interface import NS
from server.metrics import NSMetrics
from server.retention import Purger
from server.rollup import Rollup
from server.routes import BUILTIN, BuiltinRoute, Route
from server.runs import Runs
from server.schedules import Clock, Scheduler, WallClock
from server.stages import ActiveRun
from server.store import Change, Store
from server.store.dbapi import is_postgres_url
from server.store.lease import LEASE_S, Lease, holder_name, redispatch, timings
from server.store.pgdb import PostgresDatabase
from taskserver.relay import Relay
from taskserver.store import RelayStore

ADMIN_HANDSHAKES_AT_ONCE = 8
ADMIN_WAITING_AT_MOST = 64
ADMIN_HANDSHAKES_PER_ADDRESS = 2
"""The admin listener's gate: a handful of administrators, never a fleet (and one address
flooding it keeps two places when others come)."""


class BuiltinUpstream:
    """What the built-in task service rolls up into: the NS itself."""

    def __init__(self, ns: NS):
        self.ns = ns

    async def deliver(self, reports: list[Report]) -> None:
        await self.ns.on_reports(reports, route=BUILTIN)

    async def presence(self, online: list[str], offline: list[str], full: bool) -> None:
        await self.ns.on_presence(None, online, offline, full)


class NotificationServer(Runs, Dispatcher, Rollup):
    """The NS. ``await start()``, then it serves until ``await stop()``."""

    def __init__(
        self,
        *,
        data_dir: str,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "ns",
        compression: bool = False,
        flush_ms: int = 10,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        insecure: bool = False,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        max_connections_per_address: int = 20_000,
        max_handshakes: int = HANDSHAKES_AT_ONCE,
        max_pending_keys: int = 1_000,
        agent_rate_per_s: float = 200.0,
        admin_rate_per_s: float = 50.0,
        smtp: dict[str, Any] | None = None,
        ts_grace_s: float = 10.0,
        min_free_bytes: int = 16 << 20,
        admin_port: int | None = None,
        retention: dict[str, float | None] | None = None,
        clock: Clock | None = None,
        console: bool = False,
        database: str | None = None,
        parent: str | None = None,
        parent_trust: ClientTrust | None = None,
        enrol_token: str = "",
        lease_timeout_s: float = LEASE_S,
    ):
        self.data_dir = data_dir
        self.retention = retention or {}
        """Keep time per kind (runs, audit, log, messages; None: for ever), over the defaults
        of ``server.retention``."""
        self.clock: Clock = clock or WallClock()
        """The schedules' clock (tests pass one they drive)."""
        self.scheduler: Scheduler | None = None
        self.purger: Purger | None = None
        self.db_path = database or os.path.join(data_dir, "server.db")
        """Where every NS table lives: ``DATA/server.db`` (SQLite), or the ``postgresql://`` URL
        given as ``--database`` (``server.store.base.open_database`` tells them apart)."""
        self.lease_timings = timings(lease_timeout_s)
        """On PostgreSQL, the lease's times (``--lease-timeout-s``; ``server.store.lease``)."""
        self.smtp = smtp or {}
        """SMTP server for send-email: host, port, security (none|starttls|tls), user, password, sender."""
        self.ts_grace_s = ts_grace_s
        """How long agents stay with a TS that went away before they move (and their work with
        them), counted from when the NS saw it go or from the NS's own start (``started_at``)."""
        self.started_at = 0.0
        """When this NS began to serve (wall clock): it cannot have seen a TS go before then."""
        self.min_free_bytes = min_free_bytes
        """Below this much free disk under the data folder, new runs are refused (reads go on)."""
        self.handshake_timeout_s = handshake_timeout_s
        self.insecure = insecure
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.tls_fingerprint = ""
        self.ca_file = ""
        self.connection_cap = ConnectionCap(max_connections_per_address)
        self.gate = Gate(
            limit=max_handshakes,
            wait_s=min(WAIT_AT_MOST_S, handshake_timeout_s),
            open_per_address=max_connections_per_address,
        )
        """At most this many handshakes at once; a burst waits its turn before TLS (runtime.gate)."""
        self.admin_port = admin_port
        """A second listener for administrators only (None: none; 0: any free port), with a
        gate of its own, so a burst of agents at the main port never keeps an admin out."""
        self.admin_gate = Gate(
            limit=ADMIN_HANDSHAKES_AT_ONCE,
            waiting=ADMIN_WAITING_AT_MOST,
            wait_s=min(WAIT_AT_MOST_S, handshake_timeout_s),
            per_address=ADMIN_HANDSHAKES_PER_ADDRESS,
            open_per_address=max_connections_per_address,
        )
        self.admin_url = ""
        self._admin_server: Any = None
        self.max_pending_keys = max_pending_keys
        self.agent_rate_per_s = agent_rate_per_s
        self.admin_rate_per_s = admin_rate_per_s
        self.refused: Counter[str] = Counter()
        self.tickle_on_return: set[str] = set()
        """Agents a tickle missed (offline then): tickled when a relay next reports them online,
        as they may come back straight to their TS, not through a registration."""
        self.trust_alerts = Alerts()
        """Key-mismatch and wrong-role-token alerts, coalesced per name and per address."""
        self.admin_sessions = AdminSessions()
        """Open admin connections by name: revoking or replacing a token ends them at once."""
        self.first_admin_token: str | None = None
        self.server_id = ""
        self.public_key = b""
        self.work_master = b""
        """The master work key (``protocol.workauth``), derived once from the signing key."""
        self.host = host
        self.port = port
        self.name = name
        self.compression = compression
        self.flush_ms = flush_ms
        self.log = logs.get("server")
        self.url = ""
        self.store: Store | None = None
        self.relay: Relay | None = None
        self._relay_store: RelayStore | None = None
        self.routes: dict[str, Route] = {}
        self.active: dict[int, ActiveRun] = {}
        self.watchers: dict[int, dict[Link, bool]] = defaultdict(dict)
        self.server_runs: dict[int, ScriptRun] = {}
        self._route_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.assign_lock = asyncio.Lock()
        self.pending_cancels: dict[str, list[int]] = defaultdict(list)
        self._server: Any = None
        self._ssl_context: Any = None
        self.message_watchers: set[Link] = set()
        self._changes: dict[int, list[Change]] = {}
        self._ts_load: Counter[str] | None = None
        self._changes_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.lease: Lease | None = None
        """On PostgreSQL: whether this NS is the active one of a pair (``server.store.lease``)."""
        self.standing_by = False
        """Waiting for the lease: listeners bound but not accepting, nothing read or written."""
        self.stood_down = ""
        """Why this NS stopped acting (it lost the lease); ``admin.roles`` starts a standby."""
        self.failure: BaseException | None = None
        """What ended a standby's takeover (raised by ``admin.roles`` once stopped)."""
        self.ended = asyncio.Event()
        """Set when this NS must stop: it stood down, or a takeover failed."""
        self.hierarchy = Hierarchy(
            self, parent_url=parent, trust=parent_trust, enrol_token=enrol_token
        )
        """Its children and its parent (``--parent``): docs/hierarchy.md."""
        self.metrics = NSMetrics(self)
        """``/metrics``, ``/healthz`` and ``/readyz``: on the admin listener if there is one
        (administrators only reach it), else on the main one (``runtime.metrics``)."""
        self.console = console
        """The web console on the main listener too (``--console``); it is always on the admin
        listener. Every listener checks browsers' Origin (``server.console``)."""
        metrics_gate = self.gate if admin_port is None else self.admin_gate
        for gate in (self.gate, self.admin_gate):
            gate.http = http_hook(
                secure=not insecure,
                console=Console() if gate is self.admin_gate or console else None,
                metrics=self.metrics.endpoint.process_request if gate is metrics_gate else None,
                log=self.log,
            )

    @property
    def db(self) -> Store:
        assert self.store is not None, "the server is not started"
        return self.store

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        logs.bind_role("server", self.name)
        os.makedirs(self.data_dir, exist_ok=True)
        # The listeners are bound first (not yet serving): a taken address ends the start before
        # the first admin token is made (it would be written to admin.token and never shown).
        self._ssl_context = self._tls()
        await self._start_listener(serving=False)
        self.key = load_or_create(os.path.join(self.data_dir, "server.key"))
        self.public_key = public_bytes(self.key)
        self.work_master = master_work_key(self.key.private_bytes_raw())
        self.server_id = f"{self.name}:{fingerprint(self.public_key)}"
        self.url = self._url(self.port)
        if is_postgres_url(self.db_path):  # one of a pair, maybe: active only with the lease
            self.lease = Lease(
                self.db_path,
                holder_name(self.name),
                self._identity(),
                log=self.log,
                **self.lease_timings,
            )
            if not await self.lease.try_acquire():
                self.standing_by = True
                self.log.warning(
                    "standby",
                    url=self.url,
                    reason="another NS holds the lease",
                    active=self.lease.active_holder,
                    lease_timeout_s=self.lease.lease_s,
                )
                self.spawn(self._standby())
                return
        await self._activate()

    def _identity(self) -> str:
        """What the two NS of a pair must share: name, signing key, TLS certificate."""
        return f"{self.server_id} tls={self.tls_fingerprint or '-'}"

    async def _standby(self) -> None:
        """As the standby: wait for the lease (fencing an active one that stopped renewing),
        then take over."""
        assert self.lease is not None
        try:
            await self.lease.acquire()
            self.standing_by = False
            self.log.warning("taking_over", url=self.url, previous=self.lease.active_holder)
            await self._activate()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.log.exception("takeover_failed")
            self.failure = exc
            self.ended.set()

    def _stand_down(self, reason: str) -> None:
        """The lease is lost: stop accepting and close every link at once (writes are already
        refused by the lease); ``admin.roles`` then stops this NS and starts a standby."""
        self.stood_down = reason
        self.hierarchy.halt()
        for server in (self._server, self._admin_server):
            if server is not None:
                server.close()
        self.log.warning(
            "stood_down", reason=reason, url=self.url, holder=self.lease and self.lease.holder
        )
        self.ended.set()

    async def _activate(self) -> None:
        """Serve as the active NS: resume what the database says is running, then accept."""
        if self.lease is not None:  # renewed from now on, the migrations included
            self.spawn(self.lease.keep(self._stand_down))
        # Opened (and migrated) only by the active NS: a standby of a newer release waits
        # without changing the schema under an older active one.
        self.store = await Store.open(self.db_path)
        self.log.info("store_opened", store=self.store.dialect, at=self.store.db.description)
        self.store.read_seconds = self.metrics.query_read
        self.store.write_seconds = self.metrics.query_write
        if self.lease is not None:
            assert isinstance(self.store.db, PostgresDatabase)
            await self.lease.install(self.store.db)
        self.first_admin_token = await bootstrap_admin(self)
        await self.db.reset_presence()
        self._relay_store = await RelayStore.open(
            os.path.join(self.data_dir, "builtin-taskservice.db")
        )
        await self._start_task_service()
        if self.lease is not None:  # what the built-in service held is in the other's folder
            again = await redispatch(self.db.db, BUILTIN)
            if again:
                self.log.info("builtin_work_dispatched_again", instances=again)
        await self._resume_runs()
        self.started_at = time.time()
        if self.stood_down:  # lost the lease meanwhile: never start serving
            return
        for server in (self._server, self._admin_server):
            if server is not None:
                await server.start_serving()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="ns-sweep")
        # Registration bursts leave the heap large; settle it when no run is in flight.
        self.spawn(heap.trim_periodically(quiet=self._idle))
        self.spawn(self.dispatch_route(BUILTIN))
        self.scheduler = Scheduler(self, self.clock)
        self.spawn(self.scheduler.run())
        self.purger = Purger(self, self.retention)
        self.spawn(self.purger.loop())
        await self.hierarchy.start()
        self.log.info(
            "server_listening",
            url=self.url,
            admin_url=self.admin_url or None,
            active_runs=len(self.active),
        )

    def _tls(self) -> Any:
        """The listeners' TLS context (None with ``insecure``), its certificate made if needed."""
        ssl_context = None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(
                "give both --tls-cert and --tls-key, or neither (a certificate is then made)"
            )
        if not self.insecure:
            cert, key = self.tls_cert, self.tls_key
            if not cert or not key:
                cert, key, self.ca_file = ensure_certificates(
                    os.path.join(self.data_dir, "tls"), self.name
                )
            ssl_context = server_context(cert, key)
            self.tls_fingerprint = file_fingerprint(cert)
        else:
            self.log.warning(
                "insecure_listener", reason="--insecure: plain ws://, no TLS; use only for tests"
            )
        return ssl_context

    async def _start_task_service(self) -> None:
        assert self._relay_store is not None
        self.relay = Relay(
            BUILTIN,
            self._relay_store,
            log=logs.get("builtin-taskservice"),
            flush_ms=self.flush_ms,
            agent_rate_per_s=self.agent_rate_per_s,
        )
        await self.relay.start()
        self.relay.set_upstream(BuiltinUpstream(self))
        self.routes[BUILTIN] = BuiltinRoute(self.relay)

    async def _start_listener(self, serving: bool = True) -> None:
        self._server, self.port = await self._listen(self.port, ALL_ROLES, self.gate, serving)
        if self.admin_port is not None:
            self._admin_server, self.admin_port = await self._listen(
                self.admin_port, ADMIN_ONLY, self.admin_gate, serving, "--admin-port PORT"
            )
            self.admin_url = self._url(self.admin_port)

    async def _listen(
        self,
        port: int,
        roles: frozenset[Role],
        gate: Gate,
        serving: bool = True,
        option: str = "--listen HOST:PORT",
    ) -> tuple[Any, int]:
        """One listener on ``port`` for ``roles``, behind ``gate``; returns it and its port
        (``serving`` false: bound only, until ``start_serving``)."""
        return await listen(
            lambda ws: serve(self, ws, roles),
            self.host,
            port,
            compression=self.compression,
            ssl_context=self._ssl_context,
            gate=gate,
            tls_timeout_s=self.handshake_timeout_s,
            start_serving=serving,
            option=option,
        )

    def _url(self, port: int) -> str:
        return f"{'ws' if self.insecure else 'wss'}://{self.host}:{port}"

    async def _stop_listeners(self) -> None:
        for server, gate in ((self._server, self.gate), (self._admin_server, self.admin_gate)):
            if server is not None:
                server.close()
                gate.close()
                await server.wait_closed()

    SERVICES = ("scheduler", "task-service", "listeners")
    """What ``restart_service`` can restart in place."""

    async def restart_service(self, name: str) -> None:
        """Restart one internal service in place; peers reconnect by themselves."""
        if name == "scheduler":
            if self._sweeper is not None:
                self._sweeper.cancel()
                with contextlib.suppress(BaseException):
                    await self._sweeper
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="ns-sweep")
        elif name == "task-service":
            old = self.relay
            if old is not None:
                for conn in list(old.agents.values()):
                    await conn.link.close(1012, "the task service restarts; reconnect")
                await old.stop()
            await self._start_task_service()
            self.spawn(self.dispatch_route(BUILTIN))
        elif name == "listeners":
            await self._stop_listeners()
            await self._start_listener()
        else:
            raise ValueError(f"unknown service {name!r}; known: {', '.join(self.SERVICES)}")
        self.log.warning("service_restarted", service=name)

    async def stop(self) -> None:
        await self.hierarchy.stop()
        await self._stop_listeners()
        for run in self.server_runs.values():
            run.stop()
        tasks = [t for t in [self._sweeper, *self._tasks] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        if self.relay is not None:
            await self.relay.stop()
        if self._relay_store is not None:
            await self._relay_store.close()
        if self.lease is not None:
            await self.lease.close()
        if self.store is not None:
            await self.store.close()

    async def tickle(self, computers: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """``Dispatcher.tickle``; those it could not reach are tickled when they come back."""
        reached, offline = await Dispatcher.tickle(self, computers)
        self.tickle_on_return.update(offline)
        return reached, offline

    async def on_presence(
        self, taskserver: str | None, online: list[str], offline: list[str], full: bool
    ) -> int:
        """``Rollup.on_presence``, then the agents it reports that must register with the NS
        (``server.connections.after_presence``)."""
        foreign = await Rollup.on_presence(self, taskserver, online, offline, full)
        await after_presence(self, taskserver, online, self.tickle_on_return, foreign=foreign > 0)
        return foreign

    def schedules_changed(self) -> None:
        """A schedule was saved, enabled, disabled or deleted: the scheduler looks again now."""
        if self.scheduler is not None:
            self.scheduler.wake()

    def schedule_now(self) -> float:
        """Now, on the schedules' clock."""
        return self.clock.now()

    async def purge(self, dry_run: bool = False) -> dict[str, Any]:
        """A retention pass now (``dry_run``: only count what it would delete)."""
        assert self.purger is not None, "the server is not started"
        return await (self.purger.count() if dry_run else self.purger.purge())

    def _idle(self) -> bool:
        """No run in flight, here or in the built-in task service, and no handshakes under way
        or waiting: a heap settled in the middle of a connect storm walks every pending
        connection and freezes them (a third of the NS's time with 30,000 agents arriving,
        docs/performance.md "100,000 agents and the cost curve")."""
        return (
            not self.active
            and (self.relay is None or self.relay.idle())
            and not self.gate.busy
            and not len(self.gate.queue)
        )

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, held until it ends; if it fails, say so in the log
        (with the traceback) instead of losing the exception with the task."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._spawned_done)
        return task

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.log.error("background_task_failed", task=task.get_name(), exc_info=exc)
