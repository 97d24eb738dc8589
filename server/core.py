"""The Notification Server: connections by role, runs, batched dispatch, roll-up, time limits.

Theory of operation
-------------------
A run is created in one transaction with one instance per target. Each instance gets a
*route*: the name of the Task Server that serves its computer, or ``@ns`` for the NS's
built-in task service. Instances that can never run (a client task on a device) are born
``failed`` with the reason "no agent". For every route, ``_dispatch_route`` sends the
pending instances as ``dispatch`` batches (one per run and up to ``DISPATCH_CHUNK``
computers) and marks them dispatched when the relay acknowledges; a route that is not
connected gets its batches when it connects. Results come back in ``reports`` batches,
are applied in one transaction each (``Store.apply_reports``), and count down the run's
``remaining``; at zero the run ends. A sweep ends runs whose deadline (plus a grace for
roll-up) has passed: nothing stays ``running`` forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

from protocol.identity import fingerprint
from protocol.jobs import JobEvent, JobMachine, JobState
from protocol.messages import (
    Cancel,
    Dispatch,
    Event,
    Report,
    Target,
    Tickle,
)
from protocol.session import Role
from protocol.states import InstanceState, RunState, is_terminal, run_outcome
from protocol.tasks import Kind
from runtime import heap, logs
from runtime.gate import HANDSHAKES_AT_ONCE, WAIT_AT_MOST_S, Gate
from runtime.keys import load_or_create, public_bytes
from runtime.link import HANDSHAKE_TIMEOUT_S, ConnectionCap, Link, listen
from runtime.runner import Outcome, ScriptRun
from runtime.tls import ensure_certificates, file_fingerprint, server_context
from server.auth import bootstrap_admin
from server.connections import ADMIN_ONLY, ALL_ROLES, serve
from server.jobs import SERVER_JOB, job_needs_agents, plan_instances, run_server_job
from server.store import Change, NewInstance, Pending, Store
from server.tasktypes import SERVER_RUNNERS, ServerContext
from taskserver.relay import Relay
from taskserver.store import RelayStore

BUILTIN = "@ns"
"""Route name of the NS's built-in task service."""

DISPATCH_CHUNK = 1_000
DISPATCH_WINDOW = 4
"""Dispatches a TS may have unacknowledged at once: while it fans one out to its agents, the
next is already on its way (stop-and-wait cost one round trip and one NS write per 1,000)."""
ROLLUP_GRACE_S = 10.0
ADMIN_HANDSHAKES_AT_ONCE = 8
ADMIN_WAITING_AT_MOST = 64
"""The admin listener's gate: a handful of administrators, never a fleet."""
WATCH_EVENT_ITEMS = 1_000
"""Instance changes per `instances` event (a watcher gets one event per roll-up batch)."""


class Route(Protocol):
    """A relay the NS dispatches to: a connected TS, or the built-in task service."""

    async def dispatch(self, message: Dispatch) -> None: ...
    async def cancel(self, instance_ids: list[int]) -> None: ...
    async def tickle(self, computers: list[str]) -> None: ...


class RemoteRoute:
    """A Task Server over its link: each call returns when the TS acknowledged it."""

    def __init__(self, link: Link):
        self.link = link

    async def dispatch(self, message: Dispatch) -> None:
        await self.link.request(message, timeout_s=60)

    async def cancel(self, instance_ids: list[int]) -> None:
        await self.link.request(Cancel(id=self.link.next_id(), instance_ids=instance_ids))

    async def tickle(self, computers: list[str]) -> None:
        await self.link.send(Tickle(id=self.link.next_id(), computers=computers))


class BuiltinRoute:
    """The built-in task service, called in-process."""

    def __init__(self, relay: Relay):
        self.relay = relay

    async def dispatch(self, message: Dispatch) -> None:
        await self.relay.dispatch(message)

    async def cancel(self, instance_ids: list[int]) -> None:
        await self.relay.cancel(instance_ids)

    async def tickle(self, computers: list[str]) -> None:
        await self.relay.tickle(computers)


class BuiltinUpstream:
    """What the built-in task service rolls up into: the NS itself."""

    def __init__(self, ns: NotificationServer):
        self.ns = ns

    async def deliver(self, reports: list[Report]) -> None:
        await self.ns.on_reports(reports, route=BUILTIN)

    async def presence(self, online: list[str], offline: list[str], full: bool) -> None:
        await self.ns.on_presence(None, online, offline, full)


@dataclass
class RouteCount:
    """Unfinished instances of one step on one route (a TS, the built-in service, or the NS)."""

    remaining: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Stage:
    """One step of a run in progress: its deadline and, per route, what is still out."""

    deadline: float
    routes: dict[str, RouteCount] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        return sum(r.remaining for r in self.routes.values())

    def count(self, route: str | None) -> None:
        rc = self.routes.get(route or "")
        if rc is not None and rc.remaining > 0:
            rc.remaining -= 1
            if rc.remaining == 0:
                rc.done.set()

    async def barrier(self) -> None:
        """Wait until every route's instances ended: an asyncio gather across connections.

        Checked again after each wake: work that moved to another route adds a route to wait on.
        """
        while pending := [rc for rc in self.routes.values() if not rc.done.is_set()]:
            await asyncio.gather(*(rc.done.wait() for rc in pending))


@dataclass
class ActiveRun:
    """What the NS keeps in memory about a run that has not ended."""

    kind: str
    task_type: str = ""
    stages: dict[str, Stage] = field(default_factory=dict)
    runner: asyncio.Task[None] | None = None
    deadline: float = float("inf")
    """For server jobs: the job's own time limit, over all its steps."""


def _stage(deadline: float, routes: list[str | None]) -> Stage:
    stage = Stage(deadline)
    for route in routes:
        key = route or ""
        rc = stage.routes.setdefault(key, RouteCount(0))
        rc.remaining += 1
    return stage


class NotificationServer:
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
        ts_grace_s: float = 120.0,
        min_free_bytes: int = 16 << 20,
        admin_port: int | None = None,
    ):
        self.data_dir = data_dir
        self.db_path = os.path.join(data_dir, "server.db")
        self.smtp = smtp or {}
        """SMTP server for send-email: host, port, security (none|starttls|tls), user, password, sender."""
        self.ts_grace_s = ts_grace_s
        """How long agents stay with a TS that went away before they move (and their work with them)."""
        self.min_free_bytes = min_free_bytes
        """Below this much free disk under the data folder, new runs are refused (reads go on)."""
        self.handshake_timeout_s = handshake_timeout_s
        self.insecure = insecure
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.tls_fingerprint = ""
        self.ca_file = ""
        self.connection_cap = ConnectionCap(max_connections_per_address)
        self.gate = Gate(limit=max_handshakes, wait_s=min(WAIT_AT_MOST_S, handshake_timeout_s))
        """At most this many handshakes at once; a burst waits its turn before TLS (runtime.gate)."""
        self.admin_port = admin_port
        """A second listener for administrators only (None: none; 0: any free port), with a
        gate of its own, so a burst of agents at the main port never keeps an admin out."""
        self.admin_gate = Gate(
            limit=ADMIN_HANDSHAKES_AT_ONCE,
            waiting=ADMIN_WAITING_AT_MOST,
            wait_s=min(WAIT_AT_MOST_S, handshake_timeout_s),
        )
        self.admin_url = ""
        self._admin_server: Any = None
        self.max_pending_keys = max_pending_keys
        self.agent_rate_per_s = agent_rate_per_s
        self.admin_rate_per_s = admin_rate_per_s
        self.refused: Counter[str] = Counter()
        self.mismatches_raised: set[tuple[str, str, str]] = set()
        self.first_admin_token: str | None = None
        self.server_id = ""
        self.public_key = b""
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

    @property
    def db(self) -> Store:
        assert self.store is not None, "the server is not started"
        return self.store

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        self.key = load_or_create(os.path.join(self.data_dir, "server.key"))
        self.public_key = public_bytes(self.key)
        self.server_id = f"{self.name}:{fingerprint(self.public_key)}"
        self.store = await Store.open(self.db_path)
        self.first_admin_token = await bootstrap_admin(self)
        await self.store.reset_presence()
        self._relay_store = await RelayStore.open(
            os.path.join(self.data_dir, "builtin-taskservice.db")
        )
        await self._start_task_service()
        await self._resume_runs()
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
        self._ssl_context = ssl_context
        await self._start_listener()
        self.url = self._url(self.port)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="ns-sweep")
        # Registration bursts leave the heap large; settle it when no run is in flight.
        self.spawn(heap.trim_periodically(quiet=self._idle))
        self.spawn(self.dispatch_route(BUILTIN))
        self.log.info(
            "server_listening",
            url=self.url,
            admin_url=self.admin_url or None,
            active_runs=len(self.active),
        )

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

    async def _start_listener(self) -> None:
        self._server, self.port = await self._listen(self.port, ALL_ROLES, self.gate)
        if self.admin_port is not None:
            self._admin_server, self.admin_port = await self._listen(
                self.admin_port, ADMIN_ONLY, self.admin_gate
            )
            self.admin_url = self._url(self.admin_port)

    async def _listen(self, port: int, roles: frozenset[Role], gate: Gate) -> tuple[Any, int]:
        """One listener on ``port`` for ``roles``, behind ``gate``; returns it and its port."""
        return await listen(
            lambda ws: serve(self, ws, roles),
            self.host,
            port,
            compression=self.compression,
            ssl_context=self._ssl_context,
            gate=gate,
            tls_timeout_s=self.handshake_timeout_s,
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
        if self.store is not None:
            await self.store.close()

    async def taskserver_load(self) -> Counter[str]:
        """Computers per TS, counted once from the database, then kept by ``assign``: a
        registration must not count the computers table (10,000 registrations would count it
        10,000 times). ``forget_taskserver_load`` makes the next call count again."""
        if self._ts_load is None:
            self._ts_load = Counter(await self.db.computers_per_taskserver())
        return self._ts_load

    def forget_taskserver_load(self) -> None:
        self._ts_load = None

    def _idle(self) -> bool:
        """No run in flight, here or in the built-in task service."""
        return not self.active and (self.relay is None or self.relay.idle())

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

    def _run_job(
        self,
        run_id: int,
        definition: dict[str, Any],
        *args: Any,
        computers: list[dict[str, Any]] | None = None,
    ) -> asyncio.Task[Any]:
        """Spawn the runner of server job ``run_id``. A runner that breaks ends its run
        ``failed`` at once, instead of leaving it ``running`` until the job's time limit; the
        error is the reason of its unfinished instances and an entry of the server log (which
        administrators read with ``log list``). ``computers``: see :func:`run_server_job`."""

        async def guarded() -> None:
            nonlocal computers
            # Handed over, not kept: the runner lets go of the rows after the first step,
            # rather than this closure holding ten thousand of them for as long as the job runs.
            job = run_server_job(self, run_id, definition, *args, computers=computers)
            computers = None
            try:
                await job
            except Exception as exc:
                self.log.exception("server_job_failed", run_id=run_id)
                reason = (
                    f"server job {definition.get('name')!r} (run {run_id}) failed on the NS: {exc}"
                )
                await self.db.write_log("error", reason, f"run {run_id}")
                await self.end_run(run_id, InstanceState.FAILED, reason)

        return self.spawn(guarded())

    # -- connections --------------------------------------------------------------------

    # -- presence -----------------------------------------------------------------------

    async def on_presence(
        self, taskserver: str | None, online: list[str], offline: list[str], full: bool
    ) -> None:
        if full:
            await self.db.set_all_offline(taskserver, keep=online)
        if online:
            await self.db.set_online(online, True, taskserver)
        if offline:
            await self.db.set_online(offline, False, taskserver)

    # -- runs ---------------------------------------------------------------------------

    async def _resume_runs(self) -> None:
        """After a restart: rebuild the count of every open step; resume server jobs."""
        runs = await self.db.active_runs()
        for row in runs:
            self.active[row["id"]] = ActiveRun(
                row["kind"], str(row["definition"].get("type", "")), deadline=row["deadline"]
            )
        for row in await self.db.open_steps():
            active = self.active.get(row["run_id"])
            if active is None:
                continue
            stage = active.stages.setdefault(row["step"], Stage(row["deadline"]))
            if row["route"] is not None or row["remaining"]:
                stage.routes[row["route"] or ""] = RouteCount(row["remaining"])
        for row in runs:
            run_id, active = row["id"], self.active[row["id"]]
            if row["kind"] == SERVER_JOB:
                active.runner = self._run_job(
                    run_id, row["definition"], row["targets"], row["machine"]
                )
                continue
            if row["kind"] == Kind.SERVER:
                await self.end_run(
                    run_id, InstanceState.FAILED, "the server restarted while this ran"
                )
                continue
            first = active.stages.get("")
            if first is None or first.remaining == 0:
                await self._finish(run_id)

    async def start_run(
        self, definition: dict[str, Any], computers: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Create a run of a task or client job (``definition``) on ``computers`` and start it."""
        kind = definition["kind"]
        deadline = time.time() + float(definition["timeout_s"])
        if kind == SERVER_JOB:
            return await self._start_server_job(definition, computers, deadline)
        if kind == Kind.SERVER:
            instances = [NewInstance(None, "(server)", None)]
            no_agent: list[str] = []
        else:
            instances, no_agent = plan_instances(definition, computers)
        run_id = await self.db.create_run(
            definition, instances, deadline, targets=[c["id"] for c in computers]
        )
        stage = _stage(deadline, [i.route for i in instances if not is_terminal(i.status)])
        self.active[run_id] = ActiveRun(kind, str(definition.get("type", "")), {"": stage})
        self.log.info("run_started", run_id=run_id, task=definition["name"], targets=len(instances))
        if stage.remaining == 0:
            await self._finish(run_id)
        elif kind == Kind.SERVER:
            instance = (await self.db.instances(run_id))[0]
            self.spawn(self._run_server_task(run_id, instance["id"], definition))
        else:
            for route in sorted({i.route for i in instances if i.route is not None}):
                self.spawn(self.dispatch_route(route))
        return {"run_id": run_id, "targets": len(instances), "no_agent": no_agent}

    async def _start_server_job(
        self, definition: dict[str, Any], computers: list[dict[str, Any]], deadline: float
    ) -> dict[str, Any]:
        no_agent = (
            sorted(c["name"] for c in computers if not c["has_agent"])
            if job_needs_agents(definition["job"])
            else []
        )
        run_id = await self.db.create_run(
            definition, [], deadline, targets=[c["id"] for c in computers], first_step=False
        )
        active = ActiveRun(SERVER_JOB, deadline=deadline)
        self.active[run_id] = active
        self.log.info("job_started", run_id=run_id, job=definition["name"], targets=len(computers))
        active.runner = self._run_job(
            run_id, definition, [c["id"] for c in computers], None, computers=computers
        )
        return {"run_id": run_id, "targets": len(computers), "no_agent": no_agent}

    async def open_step(
        self,
        run_id: int,
        step: str,
        task: dict[str, Any],
        instances: list[NewInstance],
        machine: dict[str, Any],
    ) -> Stage:
        """A server job enters a step: store it with the job's state, count it, dispatch it."""
        deadline = time.time() + float(task["timeout_s"])
        await self.db.start_step(run_id, step, task, deadline, instances, machine)
        stage = _stage(deadline, [i.route for i in instances if not is_terminal(i.status)])
        self.active[run_id].stages[step] = stage
        self.start_stage(run_id, step, task)
        return stage

    def start_stage(self, run_id: int, step: str, task: dict[str, Any]) -> None:
        """Send a step's instances on their way (server steps run here)."""
        stage = self.active[run_id].stages[step]
        if task["kind"] == Kind.SERVER:
            self.spawn(self._start_server_step(run_id, step, task))
            return
        for route in sorted(stage.routes):
            if route:
                self.spawn(self.dispatch_route(route))

    async def _start_server_step(self, run_id: int, step: str, task: dict[str, Any]) -> None:
        rows = await self.db.instance_states(run_id, step)
        for row in rows:
            if row["status"] == InstanceState.PENDING:
                await self._run_server_task(run_id, row["id"], task)

    def _tokens(
        self, run_id: int, computer: str, computer_id: int | None, route: str, mac: str = ""
    ) -> dict[str, str]:
        return {
            "COMPUTERNAME": computer,
            "COMPUTERID": str(computer_id or ""),
            "TASKSERVER": self.name if route == BUILTIN else route,
            "RUNID": str(run_id),
            "MACADDRESS": mac,
        }

    async def dispatch_route(self, route: str) -> None:
        """Send every pending, undispatched instance of ``route`` in batches, if it is connected.

        Read a chunk, send it, read the next: the TS fans out the first thousand while the NS
        reads the rest (reading all ten thousand first held the first agent back ~0.05 s)."""
        async with self._route_locks[route]:
            handle = self.routes.get(route)
            if handle is None:
                return
            # A TS takes its dispatches in order, several in flight; the built-in service is
            # called in-process and takes one at a time.
            window = asyncio.Semaphore(DISPATCH_WINDOW if isinstance(handle, RemoteRoute) else 1)
            failed: list[BaseException] = []
            sending: set[asyncio.Task[None]] = set()
            tasks: dict[tuple[int, str], tuple[dict[str, Any], float] | None] = {}

            async def send(message: Dispatch, ids: list[int]) -> None:
                try:
                    await handle.dispatch(message)
                except Exception as exc:
                    failed.append(exc)
                    return
                finally:
                    window.release()
                await self.db.mark_dispatched(ids)

            after = 0
            while not failed:
                rows = await self.db.undispatched(route, after, DISPATCH_CHUNK)
                if not rows:
                    break
                after = rows[-1].id
                groups: dict[tuple[int, str], list[Pending]] = defaultdict(list)
                for r in rows:
                    groups[(r.run_id, r.step)].append(r)
                for (run_id, step), items in groups.items():
                    if (run_id, step) not in tasks:
                        tasks[(run_id, step)] = await self.db.step_task(run_id, step)
                    found = tasks[(run_id, step)]
                    if found is None:
                        continue
                    task, deadline = found
                    expires_in_s = deadline - time.time()
                    if expires_in_s <= 0:
                        continue
                    local_capable = task.get("type") == "client-job"
                    await window.acquire()
                    if failed:
                        window.release()
                        break
                    link_id = (
                        handle.link.next_id()
                        if isinstance(handle, RemoteRoute)
                        else f"b{run_id}.{items[0].id}"
                    )
                    message = Dispatch(
                        id=link_id,
                        run_id=run_id,
                        task=task,
                        expires_in_s=expires_in_s,
                        targets=[
                            Target(
                                instance_id=r.id,
                                computer=r.computer,
                                computer_id=r.computer_id or 0,
                                tokens=self._tokens(
                                    run_id, r.computer, r.computer_id, route, r.mac
                                ),
                                local=local_capable and not r.has_agent,
                            )
                            for r in items
                        ],
                    )
                    sender = asyncio.create_task(send(message, [r.id for r in items]))
                    sending.add(sender)
                    sender.add_done_callback(sending.discard)
                if len(rows) < DISPATCH_CHUNK:
                    break
            if sending:
                await asyncio.gather(*sending)
            if failed:
                # The rest stays undispatched and goes when the route is back (the relay drops
                # repeats by instance id).
                self.log.warning(
                    "dispatch_failed", route=route, error=str(failed[0]) or type(failed[0]).__name__
                )

    async def on_reports(self, reports: list[Report], route: str | None = None) -> None:
        """Apply a batch of reports (one transaction), tell watchers, count steps, end runs."""
        before = self.db.refused
        changes = await self.db.apply_reports(reports, route)
        if self.db.refused > before:
            self.refused["foreign_report"] += self.db.refused - before
            self.log.warning("reports_refused", route=route, count=self.db.refused - before)
        ended: list[int] = []
        inventories: list[int] = []
        for change in changes:
            self._notify(change)
            if change.parent_id is not None or not is_terminal(change.state):
                continue
            active = self.active.get(change.run_id)
            if (
                active is not None
                and active.task_type == "send-basic-inventory"
                and change.state == "succeeded"
            ):
                inventories.append(change.instance_id)
            stage = active.stages.get(change.step) if active is not None else None
            if active is None or stage is None:
                continue
            stage.count(change.route)
            if stage.remaining == 0:
                del active.stages[change.step]
                if active.kind != SERVER_JOB:
                    ended.append(change.run_id)
        if inventories:
            await self.db.save_inventories(inventories)
        for run_id in ended:
            await self._finish(run_id)

    async def reroute(self, computer_id: int, old: str, new: str) -> None:
        """An agent moved from relay ``old`` to ``new``: its unfinished work goes with it.

        The old relay is told to forget it (now, or when it comes back); the counts of the steps
        waiting on it move to the new route, so their barriers still close.
        """
        rows = await self.db.reroute(computer_id, old, new)
        if not rows:
            return
        for r in rows:
            stage = self.active.get(r["run_id"])
            counts = stage.stages.get(r["step"]) if stage is not None else None
            if counts is not None and old in counts.routes and counts.routes[old].remaining > 0:
                rc = counts.routes.get(new)
                if rc is None or rc.done.is_set():
                    counts.routes[new] = RouteCount(1)
                else:
                    rc.remaining += 1
                counts.count(old)
        ids = [r["id"] for r in rows]
        handle = self.routes.get(old)
        if handle is None:
            self.pending_cancels[old].extend(ids)
        else:
            self.spawn(handle.cancel(ids))
        self.log.info(
            "work_rerouted", computer_id=computer_id, old=old, new=new, instances=len(ids)
        )
        self.spawn(self.dispatch_route(new))

    async def tickle(self, computers: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """Tell these agents to check in now; return (reached, offline) names."""
        by_route: dict[str, list[str]] = defaultdict(list)
        offline: list[str] = []
        for c in computers:
            route = c["taskserver"] or BUILTIN
            if c["online"] and route in self.routes:
                by_route[route].append(c["name"])
            else:
                offline.append(c["name"])
        for route, names in by_route.items():
            await self.routes[route].tickle(names)
        return [n for names in by_route.values() for n in names], offline

    async def raise_message(self, severity: str, text: str, source: str) -> int:
        """Keep a message and push it to the admins who watch messages."""
        message_id = await self.db.raise_message(severity, text, source)
        data = {"id": message_id, "severity": severity, "text": text, "source": source}
        for link in list(self.message_watchers):
            self.spawn(
                self._send_quietly(
                    link, Event(id=link.next_id(), run_id=0, kind="message", data=data)
                )
            )
        return message_id

    def _notify(self, change: Change) -> None:
        """Queue a change for the run's watchers. Changes queued in one pass of the event loop
        (a roll-up batch, a stop) go out together: one ``instances`` event per watcher that
        follows every instance, one ``counts`` event per watcher that follows the totals."""
        if not self.watchers.get(change.run_id):
            return
        self._changes.setdefault(change.run_id, []).append(change)
        if self._changes_handle is None:
            self._changes_handle = asyncio.get_running_loop().call_soon(self._flush_changes)

    def _flush_changes(self) -> None:
        if self._changes_handle is not None:
            self._changes_handle.cancel()
            self._changes_handle = None
        pending, self._changes = self._changes, {}
        for run_id, changes in pending.items():
            subs = self.watchers.get(run_id)
            if not subs:
                continue
            detailed: list[tuple[str, dict[str, Any]]] = []
            summary: list[tuple[str, dict[str, Any]]] = []
            if any(subs.values()):
                items = [
                    {
                        "instance_id": c.instance_id,
                        "parent_id": c.parent_id,
                        "step": c.step,
                        "computer": c.computer,
                        "state": c.state,
                        "return_code": c.return_code,
                        "reason": c.reason,
                    }
                    for c in changes
                ]
                detailed = [
                    ("instances", {"items": items[i : i + WATCH_EVENT_ITEMS]})
                    for i in range(0, len(items), WATCH_EVENT_ITEMS)
                ]
            if not all(subs.values()):
                states = Counter(c.state for c in changes if c.parent_id is None)
                summary = [("counts", {"changes": len(changes), "states": dict(states)})]
            for link, detail in list(subs.items()):
                self.spawn(self._send_events(link, run_id, detailed if detail else summary))

    async def _send_events(
        self, link: Link, run_id: int, events: list[tuple[str, dict[str, Any]]]
    ) -> None:
        with contextlib.suppress(Exception):
            for kind, data in events:
                await link.send(Event(id=link.next_id(), run_id=run_id, kind=kind, data=data))

    async def _send_quietly(self, link: Link, message: Any) -> None:
        with contextlib.suppress(Exception):
            await link.send(message)

    async def _finish(self, run_id: int, status: RunState | None = None) -> None:
        """End a run: ``status`` if given (server jobs, stop), else from its instances."""
        active = self.active.pop(run_id, None)
        if status is None:
            rows = await self.db.instance_states(run_id)
            status = run_outcome([r["status"] for r in rows])
        # Step rows whose result never arrived (lost with a relay) must not read "running" forever.
        await self.db.end_instances(run_id, InstanceState.FAILED, "no result before the run ended")
        await self.db.finish_run(run_id, status)
        self.log.info("run_ended", run_id=run_id, status=str(status))
        self._flush_changes()  # the run's last instance events go before its end
        for link in list(self.watchers.pop(run_id, {})):
            self.spawn(
                self._send_quietly(
                    link,
                    Event(
                        id=link.next_id(), run_id=run_id, kind="run", data={"status": str(status)}
                    ),
                )
            )
        if active is not None:
            for stage in active.stages.values():
                for rc in stage.routes.values():
                    rc.done.set()

    async def end_instances(
        self, run_id: int, state: InstanceState, reason: str, step: str | None = None
    ) -> int:
        """Force unfinished instances (of a run, or one step) to ``state``; cancel them downstream."""
        rows = await self.db.end_instances(run_id, state, reason, step)
        by_route: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            self._notify(
                Change(
                    r["id"],
                    run_id,
                    r["computer"],
                    state,
                    None,
                    reason,
                    r["step"],
                    r["parent_id"],
                    r["route"],
                )
            )
            if r["route"] and r["parent_id"] is None:
                by_route[r["route"]].append(r["id"])
            run = self.server_runs.get(r["id"])
            if run is not None:
                run.stop()
        for route, ids in by_route.items():
            handle = self.routes.get(route)
            if handle is None:
                self.pending_cancels[route].extend(ids)
                continue
            try:
                await handle.cancel(ids)
            except Exception as exc:
                self.pending_cancels[route].extend(ids)
                self.log.warning("cancel_failed", route=route, error=str(exc) or type(exc).__name__)
        active = self.active.get(run_id)
        if active is not None:
            for name in [step] if step is not None else list(active.stages):
                stage = active.stages.pop(name, None) if name is not None else None
                if stage is not None:
                    for rc in stage.routes.values():
                        rc.remaining = 0
                        rc.done.set()
        return sum(1 for r in rows if r["parent_id"] is None)

    async def end_run(self, run_id: int, state: InstanceState, reason: str) -> int:
        """Stop a whole run (admin stop, server restart): every unfinished instance ends ``state``."""
        active = self.active.get(run_id)
        if (
            active is not None
            and active.runner is not None
            and active.runner is not asyncio.current_task()
        ):
            active.runner.cancel()
            with contextlib.suppress(BaseException):
                await active.runner
            run = await self.db.run(run_id)
            if run is not None and run["machine"] is not None:
                machine = JobMachine(run["definition"]["job"]["program"], run["machine"])
                if machine.state in (JobState.READY, JobState.WAITING):
                    machine.handle(JobEvent.STOP)
                    await self.db.save_machine(run_id, machine.snapshot())
        count = await self.end_instances(run_id, state, reason)
        if run_id in self.active:
            final = RunState.STOPPED if state == InstanceState.STOPPED else RunState.FAILED
            await self._finish(run_id, final)
        return count

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for run_id, active in list(self.active.items()):
                if active.kind == SERVER_JOB and now > active.deadline + ROLLUP_GRACE_S:
                    try:
                        await self.end_run(
                            run_id, InstanceState.TIMED_OUT, "the job's time limit passed"
                        )
                    except Exception:
                        self.log.exception("sweep_failed", run_id=run_id)
                    continue
                for step, stage in list(active.stages.items()):
                    if now <= stage.deadline + ROLLUP_GRACE_S:
                        continue
                    try:
                        await self.end_instances(
                            run_id, InstanceState.TIMED_OUT, "no result by the time limit", step
                        )
                        if (
                            active.kind != SERVER_JOB
                            and run_id in self.active
                            and not active.stages
                        ):
                            await self._finish(run_id)
                    except Exception:
                        self.log.exception("sweep_failed", run_id=run_id)

    # -- server tasks -------------------------------------------------------------------

    async def _target_names(self, run_id: int) -> list[str]:
        run = await self.db.run(run_id)
        ids = run["targets"] if run is not None else []
        return [c["name"] for c in await self.db.computers_by_id(ids)] if ids else []

    async def _run_server_task(
        self, run_id: int, instance_id: int, definition: dict[str, Any]
    ) -> None:
        """Run a server task here, once, through the NS's catalog (``server.tasktypes``)."""
        tokens = self._tokens(run_id, socket.gethostname(), None, BUILTIN)
        started = time.time()
        await self.on_reports(
            [Report(instance_id=instance_id, state=InstanceState.RUNNING, started_at=started)]
        )

        def track(run: ScriptRun | None) -> None:
            if run is None:
                self.server_runs.pop(instance_id, None)
            else:
                self.server_runs[instance_id] = run

        ctx = ServerContext(
            self,
            run_id,
            instance_id,
            definition.get("params", {}),
            tokens,
            float(definition["timeout_s"]),
            track,
            await self._target_names(run_id),
        )
        runner = SERVER_RUNNERS.get(str(definition["type"]))
        if runner is None:
            outcome = Outcome.failed(
                f"this server cannot run {definition['type']!r}", started_at=started
            )
        else:
            try:
                outcome = await runner(ctx)
            except Exception as exc:
                self.log.exception("server_task_failed", run_id=run_id, type=definition["type"])
                outcome = Outcome.failed(f"the server task failed: {exc}", started_at=started)
        await self.on_reports([outcome.report(instance_id)])
