"""An agent's ``/metrics``, ``/healthz`` and ``/readyz`` (``taskfleet agent --metrics-listen``).

An agent listens nowhere for its work, so its metrics get a listener of their own that answers
only those three paths (a WebSocket upgrade there is refused). It is plain HTTP, behind a small
handshake gate of its own; meant for loopback (a local collector), and from another address
``/metrics`` needs the token of ``--metrics-token-file`` (``runtime.metrics``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from runtime import logs
from runtime.gate import Gate
from runtime.link import listen, split_hostport
from runtime.metrics import Authorize, Endpoint, GateCollector, gauge, new_registry

METRICS_HANDSHAKES_AT_ONCE = 4
METRICS_WAITING_AT_MOST = 16
METRICS_PER_ADDRESS = 2
"""The metrics listener's gate: a collector or two, never a crowd."""


class AgentCollector(Collector):
    """The agent's state, read at scrape time."""

    def __init__(self, agent: Any):
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        agent = self.agent
        store = agent.store
        yield gauge(
            "taskfleet_agent_outbox_size",
            "Results kept until the relay (then the NS) has stored them",
            len(store.outbox) if store is not None else 0,
        )
        yield gauge(
            "taskfleet_agent_running_instances",
            "Instances this agent is running now",
            len(agent._running),
        )
        yield gauge(
            "taskfleet_agent_link_up",
            "1 while the agent has its live link (to its TS, or to the NS), else 0",
            1.0 if agent.connected.is_set() else 0.0,
        )
        yield gauge("taskfleet_agent_policies", "Policies this agent follows", len(agent.policies))


class AgentMetrics:
    """The agent's registry, its endpoint, and the listener that serves it."""

    def __init__(self, agent: Any, authorize: Authorize | None = None):
        self.agent = agent
        self.registry = new_registry()
        self.gate = Gate(
            limit=METRICS_HANDSHAKES_AT_ONCE,
            waiting=METRICS_WAITING_AT_MOST,
            per_address=METRICS_PER_ADDRESS,
        )
        self.registry.register(AgentCollector(agent))
        self.registry.register(GateCollector(lambda: {"metrics": self.gate}))
        self.endpoint = Endpoint(self.registry, ready=self.ready, authorize=authorize)
        self.gate.http = self.endpoint.process_request
        self.server: Any = None
        self.port = 0

    def ready(self) -> str | None:
        """Ready: its database open and its live link up (to its TS, or to the NS)."""
        if self.agent.store is None:
            return "the database is not open"
        if not self.agent.connected.is_set():
            return "no live link yet (registering with the NS)"
        return None

    async def start(self, address: str) -> int:
        """Listen on ``address`` (HOST:PORT; port 0: any free port); return the port."""
        host, port = split_hostport(address, 9470)
        self.server, self.port = await listen(
            _refuse_websocket, host, port, gate=self.gate, option="--metrics-listen HOST:PORT"
        )
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.gate.close()
            await self.server.wait_closed()


async def _refuse_websocket(ws: Any) -> None:
    """Nothing but HTTP here: a WebSocket that got through is closed at once."""
    await ws.close(1008, "this port serves only /metrics, /healthz and /readyz")


async def run_with_metrics(
    agent: Any,
    listen: str | None,
    authorize: Authorize | None,
    main: Callable[[], Awaitable[None]],
) -> None:
    """Run ``main`` (the agent's life), with its metrics listener on ``listen`` if given (a
    listener that cannot open ends the start: ``runtime.link.ListenError``, exit 4)."""
    logs.bind_role("agent", agent.name)  # also for this listener's own events
    if not listen:
        await main()
        return
    metrics = AgentMetrics(agent, authorize)
    port = await metrics.start(listen)
    agent.log.info("metrics_listening", url=f"http://{listen.rsplit(':', 1)[0]}:{port}/metrics")
    try:
        await main()
    finally:
        await metrics.stop()
