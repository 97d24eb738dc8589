"""What the NS shows at ``/metrics`` (``runtime.metrics`` serves it) and tells ``taskfleet stats``.

Most of it is read from the running server at scrape time (:class:`NSCollector`): connections,
handshake gates, runs in flight, the database's size, the task servers' links. What cannot be
read afterwards is counted as it happens, once per batch (:class:`NSMetrics`): dispatch and
roll-up batch sizes and latencies, instance states reached, runs ended, store query latency.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol.identity import hash_token
from protocol.states import InstanceState, RunState
from runtime.metrics import (
    BATCH_BUCKETS,
    METRICS,
    Endpoint,
    GateCollector,
    counters,
    gauge,
    histogram,
    new_registry,
)
from server.interface import NS
from server.routes import RemoteRoute
from taskserver.metrics import RelayCollector

_STATE = attrgetter("state")


class NSMetrics:
    """The NS's registry, its histograms and counters (per batch), and its ``/metrics``."""

    def __init__(self, ns: NS):
        self.ns = ns
        self.registry = new_registry()
        r = self.registry
        self.dispatch_seconds = histogram(
            r,
            "taskfleet_dispatch_seconds",
            "Time from sending one dispatch (a run's batch of up to 1,000 targets) to its"
            " relay's acknowledgement",
        )
        self.dispatch_batch = histogram(
            r,
            "taskfleet_dispatch_batch_size",
            "Targets per dispatch",
            buckets=BATCH_BUCKETS,
        )
        self.rollup_seconds = histogram(
            r,
            "taskfleet_rollup_seconds",
            "Time to apply one roll-up batch of reports (one transaction) and count it",
        )
        self.rollup_batch = histogram(
            r, "taskfleet_rollup_batch_size", "Reports per roll-up batch", buckets=BATCH_BUCKETS
        )
        query = histogram(
            r,
            "taskfleet_store_query_seconds",
            "Latency of the NS database's queries (read: a SELECT; write: an insert with its"
            " commit; batch: a roll-up batch's whole transaction)",
            labels=["kind"],
        )
        self.query_read = query.labels("read")
        self.query_write = query.labels("write")
        self.query_batch = query.labels("batch")
        self.instances = PromCounter(
            "taskfleet_instances",
            "Instances that reached each state (reported by relays, or ended by the NS)",
            ["state"],
            registry=r,
        )
        self.runs_ended = PromCounter(
            "taskfleet_runs_ended", "Runs that ended, by final state", ["state"], registry=r
        )
        self._instances = {str(state): self.instances.labels(str(state)) for state in InstanceState}
        """Every state's child, looked up once (and exported at 0 from the first scrape on)."""
        for run_state in RunState:
            if run_state != RunState.RUNNING:
                self.runs_ended.labels(str(run_state))
        r.register(NSCollector(ns))
        r.register(RelayCollector(lambda: ns.relay))
        r.register(GateCollector(self._gates))
        self.endpoint = NSEndpoint(self, r, ready=self.ready, authorize=self.authorize)
        self.pg_bytes: tuple[float, int] | None = None
        """On PostgreSQL: when (monotonic) ``pg_database_size`` was last read, and its answer."""

    async def refresh(self) -> None:
        """Read what a scrape or ``stats`` shows that only the database can tell (on
        PostgreSQL, the database's size), at most every :data:`SIZE_EVERY_S`: a flood of
        scrapes costs one query per period. SQLite's files are read at collection itself."""
        store = getattr(self.ns, "store", None)
        if store is None or store.dialect != "postgresql":
            return
        if self.pg_bytes is not None and time.monotonic() - self.pg_bytes[0] < SIZE_EVERY_S:
            return
        try:
            rows = await asyncio.wait_for(
                store.db.fetch("SELECT pg_database_size(current_database())"), SIZE_EVERY_S
            )
        except Exception as exc:  # the size is worth a scrape, not a failed one (nor a slow one)
            self.ns.log.warning("database_size_unread", error=str(exc) or type(exc).__name__)
            return
        self.pg_bytes = (time.monotonic(), int(rows[0][0]))

    def _gates(self) -> dict[str, Any]:
        gates: dict[str, Any] = {"main": self.ns.gate}
        if self.ns.admin_url:
            gates["admin"] = self.ns.admin_gate
        return gates

    # -- counted per batch ----------------------------------------------------------------

    def dispatched(self, targets: int, seconds: float) -> None:
        """One dispatch acknowledged by its relay."""
        self.dispatch_batch.observe(targets)
        self.dispatch_seconds.observe(seconds)

    def rolled_up(self, reports: int, seconds: float, changes: Iterable[Any]) -> None:
        """One roll-up batch applied; ``changes``: what it changed (``server.store.Change``:
        an instance, or a job's step row, reached a state). Counted in C (``Counter`` over
        ``map``), each state's child looked up once: about 10 us per batch plus 0.2 us per
        change (docs/operations.md, "What the metrics cost")."""
        self.rollup_batch.observe(reports)
        self.rollup_seconds.observe(seconds)
        self.query_batch.observe(seconds)
        for state, count in Counter(map(_STATE, changes)).items():
            child = self._instances.get(state)
            if child is None:
                child = self._instances[state] = self.instances.labels(state)
            child.inc(count)

    def instances_ended(self, state: str, count: int) -> None:
        """The NS itself ended ``count`` instances (a time limit, a stop, a lost relay)."""
        if count:
            self.instances.labels(state).inc(count)

    def run_ended(self, state: str) -> None:
        self.runs_ended.labels(state).inc()

    # -- access and readiness -------------------------------------------------------------

    def ready(self) -> str | None:
        """Ready: the database is open and every listener serves."""
        ns: Any = self.ns  # the core's own fields, not in the parts' interface
        if ns.store is None:
            return "the database is not open"
        if ns._server is None or not ns._server.is_serving():
            return "the main listener is not serving"
        if ns.admin_url and (ns._admin_server is None or not ns._admin_server.is_serving()):
            return "the admin listener is not serving"
        return None

    async def authorize(self, token: str) -> bool:
        """Any admin token, whatever its role, may read the metrics from another machine."""
        if getattr(self.ns, "store", None) is None:
            return False
        return await self.ns.db.admin_by_token(hash_token(token)) is not None


SIZE_EVERY_S = 5.0
"""How stale the PostgreSQL database's size shown by a scrape or ``stats`` may be."""


class NSEndpoint(Endpoint):
    """The NS's ``/metrics``: what only the database can tell is read before the scrape."""

    def __init__(self, metrics: NSMetrics, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    async def process_request(self, connection: Any, request: Any) -> Any:
        if request.path.split("?", 1)[0] == METRICS:
            await self.metrics.refresh()
        return await super().process_request(connection, request)


def store_bytes(ns: NS) -> dict[str, int]:
    """The NS database's size: SQLite's file and write-ahead log on disk (``db``, ``wal``), or
    on PostgreSQL the database's own size as the server counts it (``db``: its share of the
    cluster's files; the write-ahead log is the cluster's, not one database's)."""
    store = getattr(ns, "store", None)
    if store is not None and store.dialect == "postgresql":
        metrics = getattr(ns, "metrics", None)
        cached = metrics.pg_bytes if isinstance(metrics, NSMetrics) else None
        return {"db": cached[1] if cached is not None else 0}
    return database_bytes(ns.db_path)


def ns_role(ns: NS) -> dict[str, Any]:
    """Whether this NS is the active one and, on PostgreSQL, which standby waits (as the lease
    row names it, ``server.store.lease``): what the operator of a pair needs from the one NS
    that answers. With SQLite there is no pair (``pair`` false)."""
    lease = getattr(ns, "lease", None)
    if lease is None:
        return {
            "active": True,
            "pair": False,
            "standby": None,
            "standby_seen_s": None,
            "standby_up": False,
        }
    standing_by = bool(getattr(ns, "standing_by", False))
    return {"active": bool(lease.active) and not standing_by, "pair": True, **lease.standby_view()}


def database_bytes(db_path: str) -> dict[str, int]:
    """The NS database's size on disk: its file and its write-ahead log (absent: 0)."""
    sizes = {}
    for part, path in (("db", db_path), ("wal", db_path + "-wal")):
        try:
            sizes[part] = os.stat(path).st_size
        except OSError:
            sizes[part] = 0
    return sizes


def connections(ns: NS) -> dict[str, int]:
    """Open connections past their handshake, by role."""
    agents = len(ns.relay.agents) if ns.relay is not None else 0
    taskservers = sum(1 for r in ns.routes.values() if isinstance(r, RemoteRoute))
    # AdminSessions keeps no total; its sessions by name are a small dict.
    admins = sum(len(links) for links in getattr(ns.admin_sessions, "_links", {}).values())
    return {"agent": agents, "taskserver": taskservers, "admin": admins}


def taskserver_links(ns: NS) -> dict[str, dict[str, Any]]:
    """Each connected TS: its last ping's round trip (the NS's keepalive measures it; 0 before
    the first) and whether the link is open."""
    links: dict[str, dict[str, Any]] = {}
    for name, route in sorted(ns.routes.items()):
        if isinstance(route, RemoteRoute):
            ws = route.link.ws
            links[name] = {
                "rtt_s": float(getattr(ws, "latency", 0.0) or 0.0),
                "open": route.link.is_open,
                "peer": route.link.peer,
            }
    return links


def open_instances(ns: NS) -> int:
    """Instances of runs in flight that have not ended yet (from the runs' step counts)."""
    return sum(stage.remaining for run in ns.active.values() for stage in run.stages.values())


class NSCollector(Collector):
    """The NS's state, read at scrape time."""

    def __init__(self, ns: NS):
        self.ns = ns

    def collect(self) -> Iterable[Metric]:
        ns = self.ns
        conns = GaugeMetricFamily(
            "taskfleet_connections",
            "Open connections past their handshake, by role (handshakes under way and waiting:"
            " taskfleet_handshakes_pending)",
            labels=["role", "state"],
        )
        for role, count in connections(ns).items():
            conns.add_metric([role, "open"], count)
        yield conns
        runs = GaugeMetricFamily(
            "taskfleet_runs_active", "Runs in flight, by kind", labels=["kind"]
        )
        kinds = Counter(str(run.kind) for run in ns.active.values())
        for kind in ("client", "server", "taskserver", "server-job"):
            kinds.setdefault(kind, 0)
        for kind, count in sorted(kinds.items()):
            runs.add_metric([kind], count)
        yield runs
        yield gauge(
            "taskfleet_instances_open",
            "Instances of runs in flight that have not ended yet",
            open_instances(ns),
        )
        size = GaugeMetricFamily(
            "taskfleet_database_bytes",
            "Size of the NS database: SQLite's file and write-ahead log, or PostgreSQL's"
            " pg_database_size (file=db)",
            labels=["file"],
        )
        for part, count in store_bytes(ns).items():
            size.add_metric([part], count)
        yield size
        state = ns_role(ns)
        yield gauge(
            "taskfleet_ns_active",
            "1 while this NS is the active one (a standby answers no scrape)",
            1.0 if state["active"] else 0.0,
        )
        if state["pair"]:
            yield gauge(
                "taskfleet_ns_standby_up",
                "1 while a standby NS tries the lease (it tried within the lease timeout)",
                1.0 if state["standby_up"] else 0.0,
            )
        rtt = GaugeMetricFamily(
            "taskfleet_taskserver_rtt_seconds",
            "Round trip of the last keepalive ping to each connected task server",
            labels=["taskserver"],
        )
        for name, link in taskserver_links(ns).items():
            rtt.add_metric([name], link["rtt_s"])
        yield rtt
        yield counters(
            "taskfleet_refused",
            "Messages and peers the NS refused after their handshake, by code",
            "code",
            dict(ns.refused),
        )
        yield gauge(
            "taskfleet_uptime_seconds",
            "Seconds since this NS began to serve",
            time.time() - ns.started_at if ns.started_at else 0.0,
        )


async def refreshed(ns: NS) -> None:
    """Before ``stats``: read what only the database can tell (``NSMetrics.refresh``)."""
    metrics = getattr(ns, "metrics", None)
    if isinstance(metrics, NSMetrics):
        await metrics.refresh()


def stats(ns: NS) -> dict[str, Any]:
    """What ``taskfleet stats`` shows (the ``stats`` admin op): the same state as the scrape."""
    return {
        "connections": connections(ns),
        "runs_in_flight": len(ns.active),
        "instances_open": open_instances(ns),
        "database_bytes": store_bytes(ns),
        "ns_role": ns_role(ns),
        "taskservers": taskserver_links(ns),
        "uptime_s": round(time.time() - ns.started_at, 1) if ns.started_at else 0.0,
    }
