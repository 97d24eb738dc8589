"""Seeing inside a running role: Prometheus metrics, liveness and readiness, over plain HTTP on
the role's own listener.

Every role answers three paths on its listener (the NS on its admin port when it has one; the
agent, which listens nowhere, on ``--metrics-listen``):

- ``GET /metrics``: the text exposition format of the role's own registry (one
  :class:`prometheus_client.CollectorRegistry` per component, never the library's global one,
  so several components in one process do not clash);
- ``GET /healthz``: 200 while the process serves at all;
- ``GET /readyz``: 200 when the role can do its work (its database open, its listener up, a TS
  linked to its NS), else 503 with a one-line reason.

The listeners are WebSocket servers. A plain HTTP request reaches :meth:`Endpoint.process_request`
through websockets' ``process_request`` hook (``runtime.gate.Gate.http``), after the handshake gate
and after TLS, exactly like a WebSocket connection: it waits its turn at the gate and counts
against its address's share, so it cannot bypass the limits that protect the listener.

Access (:func:`may_read`): open from a loopback address; from any other address ``/metrics``
needs ``Authorization: Bearer <token>`` (on the NS any admin token, whatever its role; on a TS or
an agent the token in ``--metrics-token-file``; without that file, loopback only).
``/healthz`` and ``/readyz`` say no more than "up" or one reason, and answer everyone: load
balancers and supervisors ask them without credentials.

Most metrics are computed at scrape time from the component's own state (a custom collector);
the few counted as they happen are counted per batch, never per report or per frame.
"""

from __future__ import annotations

import gc
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

METRICS = "/metrics"
HEALTH = "/healthz"
READY = "/readyz"
PATHS = frozenset({METRICS, HEALTH, READY})

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Seconds, for batches and queries: a millisecond (a small query) to 30 s (a stalled relay)."""
BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000)
"""Items per batch: dispatches carry up to 1,000 targets, roll-ups up to 500 reports."""
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

Ready = Callable[[], str | None]
"""The role's readiness: None when ready, else the reason it is not (one line)."""
Authorize = Callable[[str], Awaitable[bool]]
"""Whether a bearer token may read ``/metrics`` from a non-loopback address."""


def new_registry() -> CollectorRegistry:
    """A component's own registry, with the process's memory and CPU (``process_*``), the
    collector's counts (``python_gc_*``) and its pauses (``taskfleet_gc_pause_seconds``)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(GC_PAUSES)
    return registry


def histogram(
    registry: CollectorRegistry,
    name: str,
    doc: str,
    labels: Iterable[str] = (),
    buckets: Iterable[float] = LATENCY_BUCKETS,
) -> Histogram:
    """A histogram in ``registry`` (counted as events happen: use it per batch, not per item)."""
    return Histogram(name, doc, list(labels), registry=registry, buckets=tuple(buckets))


class GCPauses(Collector):
    """How long the garbage collector stopped the process, by generation.

    Counted by a ``gc.callbacks`` hook in plain lists (no lock: a collection can start anywhere,
    also inside a metric's own locked update) and turned into a histogram at scrape time. One
    per process, registered in every component's registry.
    """

    def __init__(self) -> None:
        self.counts = [[0] * (len(GC_BUCKETS) + 1) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self._started = 0.0
        self.installed = False

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self._on_gc)
            self.installed = True

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = min(int(info.get("generation", 0)), 2)
        counts = self.counts[generation]
        for i, bound in enumerate(GC_BUCKETS):
            if took <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.sums[generation] += took

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            "taskfleet_gc_pause_seconds",
            "Time the garbage collector stopped the process, by generation",
            labels=["generation"],
        )
        for generation in range(3):
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*GC_BUCKETS, float("inf")), self.counts[generation], strict=True
            ):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric([str(generation)], buckets, self.sums[generation])
        yield family


GC_PAUSES = GCPauses()
GC_PAUSES.install()


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP, as the listener saw it) is this machine's own loopback,
    IPv4-mapped IPv6 included. Anything unparsable is not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def may_read(address: str, authorization: str | None, authorize: Authorize | None) -> bool:
    """The access rule for ``/metrics``: any request from loopback; from elsewhere only with a
    bearer token ``authorize`` accepts (no ``authorize``: loopback only)."""
    if is_loopback(address):
        return True
    token = bearer(authorization)
    if token is None or authorize is None:
        return False
    return await authorize(token)


def token_file_check(path: str | None) -> Authorize | None:
    """``--metrics-token-file``: the token in ``path`` (read once, at start), compared in
    constant time; None without a file (loopback only). An unreadable or empty file raises
    ValueError naming it."""
    if not path:
        return None
    try:
        with open(path) as fh:
            expected = fh.read().strip()
    except OSError as exc:
        raise ValueError(
            f"cannot read --metrics-token-file {path}: {exc.strerror or exc}; give a file this"
            " user can read, holding the token"
        ) from None
    if not expected:
        raise ValueError(f"--metrics-token-file {path} is empty: write the token in it")

    async def check(token: str) -> bool:
        return hmac.compare_digest(token.encode(), expected.encode())

    return check


def _response(status: int, reason: str, body: bytes, content_type: str, **extra: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["Connection"] = "close"
    for key, value in extra.items():
        headers[key.replace("_", "-")] = value
    return Response(status, reason, headers, body)


def _text(status: int, reason: str, text: str, **extra: str) -> Response:
    return _response(status, reason, (text + "\n").encode(), "text/plain; charset=utf-8", **extra)


class Endpoint:
    """A role's ``/metrics``, ``/healthz`` and ``/readyz`` (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Ready,
        authorize: Authorize | None = None,
    ):
        self.registry = registry
        self.ready = ready
        self.authorize = authorize

    async def process_request(self, connection: Any, request: Request) -> Response | None:
        """websockets' ``process_request`` hook: answer our paths, let anything else go on to
        the WebSocket upgrade (None)."""
        path = request.path.split("?", 1)[0]
        if path not in PATHS:
            return None
        if path == HEALTH:
            return _text(200, "OK", "ok")
        if path == READY:
            why = self.ready()
            if why is None:
                return _text(200, "OK", "ready")
            return _text(503, "Service Unavailable", f"not ready: {why}")
        peer = connection.remote_address
        address = str(peer[0]) if peer else ""
        if not await may_read(address, request.headers.get("Authorization"), self.authorize):
            return _text(
                401,
                "Unauthorized",
                "metrics from another machine need Authorization: Bearer <token>"
                " (docs/operations.md, Metrics)",
                WWW_Authenticate='Bearer realm="taskfleet"',
            )
        return _response(200, "OK", generate_latest(self.registry), CONTENT_TYPE_LATEST)


class GateCollector(Collector):
    """The handshake gates of a role's listeners (``runtime.gate``), read at scrape time:
    handshakes in progress and waiting, and what the gate did with every arrival."""

    OUTCOMES = ("admitted", "refused", "capped", "preempted", "overstayed")

    def __init__(self, gates: Callable[[], dict[str, Any]]):
        self.gates = gates
        """Listener name → its gate (a callable: a restarted listener keeps its gate)."""

    def collect(self) -> Iterable[Metric]:
        now = GaugeMetricFamily(
            "taskfleet_handshakes_pending",
            "Connections at a listener's handshake gate: in TLS or the hello now, or waiting",
            labels=["listener", "state"],
        )
        done = CounterMetricFamily(
            "taskfleet_handshakes",
            "Arrivals at a listener's handshake gate, by what became of them (refused: the"
            " waiting room was full or the wait too long; capped: too many from one address)",
            labels=["listener", "outcome"],
        )
        pauses = CounterMetricFamily(
            "taskfleet_listener_accept_pauses",
            "Times a listener stopped accepting because its handshake gate's waiting room was"
            " full (new clients then wait in the kernel's listen queue)",
            labels=["listener"],
        )
        for listener, gate in self.gates().items():
            stats = gate.stats()
            now.add_metric([listener, "in_progress"], stats["handshakes"])
            now.add_metric([listener, "waiting"], stats["waiting"])
            for outcome in self.OUTCOMES:
                done.add_metric([listener, outcome], stats[outcome])
            pauses.add_metric([listener], stats["pauses"])
        yield now
        yield done
        yield pauses


def counters(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    """A counter family from a dict of counts (``name`` without ``_total``)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    """One gauge sample (labels optional)."""
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


class Observer(Protocol):
    """Something that takes a measurement: a histogram (or one of its labelled children)."""

    def observe(self, amount: float) -> None: ...


class _NotObserved:
    def observe(self, amount: float) -> None:
        """Nothing: no histogram attached (a store opened without an NS, in a tool or a test)."""


NOT_OBSERVED: Observer = _NotObserved()
