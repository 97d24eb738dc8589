"""What a relay (a TS, or the NS's built-in task service) shows at ``/metrics``, read from its
state at scrape time: agents connected, work held, the queues between agents and the NS."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.metrics import (
    BATCH_BUCKETS,
    Authorize,
    Endpoint,
    GateCollector,
    gauge,
    histogram,
    new_registry,
)
from taskserver.relay import Relay


class RelayCollector(Collector):
    """One relay's gauges and counters, labelled with the relay's name (``@ns``: built-in)."""

    def __init__(self, relay: Callable[[], Relay | None]):
        self.relay = relay
        """The relay now (a callable: the NS restarts its built-in service in place)."""

    def collect(self) -> Iterable[Metric]:
        relay = self.relay()
        if relay is None:
            return
        name = relay.name
        agents = GaugeMetricFamily(
            "taskfleet_relay_agents", "Agents connected to this relay", labels=["relay"]
        )
        agents.add_metric([name], len(relay.agents))
        yield agents
        held = GaugeMetricFamily(
            "taskfleet_relay_held_instances",
            "Instances this relay holds until the NS has their result",
            labels=["relay"],
        )
        held.add_metric([name], len(relay.held))
        yield held
        queues = GaugeMetricFamily(
            "taskfleet_relay_queue_depth",
            "Items waiting in the relay: inbox (reports before the next flush), upstream (reports"
            " not yet sent to the NS), awaiting_ns (agents' results sent and not yet stored by"
            " the NS), agent_backlog (frames waiting for agents that do not read), local (runs of"
            " the relay's own work)",
            labels=["relay", "queue"],
        )
        for queue, depth in relay.queue_depths().items():
            queues.add_metric([name, queue], depth)
        yield queues
        moved = CounterMetricFamily(
            "taskfleet_relay_reports",
            "Reports this relay took from agents (in), delivered to the NS (delivered), and"
            " instances it took from dispatches (dispatched)",
            labels=["relay", "flow"],
        )
        for flow, count in (
            ("in", relay.stats["reports_in"]),
            ("delivered", relay.stats["delivered"]),
            ("dispatched", relay.stats["dispatched"]),
        ):
            moved.add_metric([name, flow], count)
        yield moved
        refused = CounterMetricFamily(
            "taskfleet_relay_refused",
            "Messages this relay refused, by code (foreign reports, rate limits, bad work)",
            labels=["relay", "code"],
        )
        for code, count in sorted(relay.refused.items()):
            refused.add_metric([name, code], count)
        yield refused


class TSMetrics:
    """A TS's registry and ``/metrics``: its relay, its gate, its link to the NS, and the
    dispatch and roll-up batches (timed per batch)."""

    def __init__(self, ts: Any, authorize: Authorize | None = None):
        self.ts = ts
        self.registry = r = new_registry()
        self.dispatch_seconds = histogram(
            r,
            "taskfleet_relay_dispatch_seconds",
            "Time to take one dispatch from the NS: stored, fanned out, acknowledged",
        )
        self.dispatch_batch = histogram(
            r,
            "taskfleet_relay_dispatch_batch_size",
            "Targets per dispatch taken from the NS",
            buckets=BATCH_BUCKETS,
        )
        self.rollup_seconds = histogram(
            r,
            "taskfleet_relay_rollup_seconds",
            "Time from sending one roll-up batch to the NS to its acknowledgement (stored there)",
        )
        self.rollup_batch = histogram(
            r,
            "taskfleet_relay_rollup_batch_size",
            "Reports per roll-up batch sent to the NS",
            buckets=BATCH_BUCKETS,
        )
        r.register(RelayCollector(lambda: ts.relay))
        r.register(GateCollector(lambda: {"main": ts.gate}))
        r.register(_LinkCollector(ts))
        self.endpoint = Endpoint(r, ready=self.ready, authorize=authorize)

    def ready(self) -> str | None:
        """Ready: its database open, its listener serving, and linked to the NS."""
        ts = self.ts
        if ts.store is None:
            return "the database is not open"
        server = ts._server
        if server is None or not server.is_serving():
            return "the listener is not serving"
        if not ts.connected.is_set():
            # No address: /readyz answers anyone, and a TS's listener faces the agents.
            return "not linked to the NS"
        return None


class _LinkCollector(Collector):
    def __init__(self, ts: Any):
        self.ts = ts

    def collect(self) -> Iterable[Metric]:
        yield gauge(
            "taskfleet_ns_link_up",
            "1 while this TS is linked to its NS (welcomed), else 0",
            1.0 if self.ts.connected.is_set() else 0.0,
        )
