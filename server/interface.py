"""The NS as its parts see it: the narrow interface that keeps ``server/`` free of import circles.

``NotificationServer`` (``server.core``) is assembled from its parts and sits on top. Everything
below it — connection handling (``connections``, ``auth``), the admin operations (``admin_api``),
server jobs (``jobs``), policies and the server task types — is handed the running server and
types it as :class:`NS`: the settings, state and operations they may use, and nothing else. They
never import ``server.core``, so each can be read (and type-checked) without the whole.

:class:`CoreParts` adds what the core's own parts (``runs``, ``dispatch``, ``rollup``) share
among themselves; only they and ``core`` use it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.messages import Event, Hello, Report
from protocol.states import InstanceState, RunState
from runtime.gate import Gate
from runtime.link import ConnectionCap, Link
from server.guards import AdminSessions, Alerts
from server.routes import Route
from server.stages import ActiveRun, Stage
from server.store import Change, NewInstance, Store
from taskserver.relay import Relay


class HierarchyLink(Protocol):
    """The NS's place in a hierarchy of NS (``server.hierarchy.Hierarchy``): its link to a
    parent and its children's links, as the parts below the core use them (docs/hierarchy.md)."""

    parent_connected: bool
    parent_name: str | None
    on_parent_link: list[Callable[[], Awaitable[None]]]

    async def ask_parent(self, op: str, args: dict[str, Any], timeout_s: float = 30) -> Any: ...
    async def ask_child(
        self, name: str, op: str, args: dict[str, Any], timeout_s: float = 30
    ) -> Any: ...
    def connected_children(self) -> list[str]: ...
    async def reconcile(self) -> list[dict[str, Any]]: ...
    def check_child_hello(self, hello: Hello) -> None: ...
    def cut_child(self, name: str, why: str) -> None: ...


class NS(Protocol):
    """The running NS, as connection handling, admin operations, jobs and task types use it."""

    # -- settings (see NotificationServer.__init__ for each) ----------------------------
    name: str
    data_dir: str
    db_path: str
    smtp: dict[str, Any]
    ts_grace_s: float
    started_at: float
    min_free_bytes: int
    handshake_timeout_s: float
    max_pending_keys: int
    agent_rate_per_s: float
    admin_rate_per_s: float
    admin_url: str
    url: str
    SERVICES: tuple[str, ...]

    # -- identity -----------------------------------------------------------------------
    key: Ed25519PrivateKey
    public_key: bytes
    work_master: bytes
    server_id: str

    # -- state --------------------------------------------------------------------------
    log: Any
    relay: Relay | None
    routes: dict[str, Route]
    active: dict[int, ActiveRun]
    watchers: dict[int, dict[Link, bool]]
    message_watchers: set[Link]
    pending_cancels: dict[str, list[int]]
    connection_cap: ConnectionCap
    gate: Gate
    admin_gate: Gate
    refused: Counter[str]
    trust_alerts: Alerts
    admin_sessions: AdminSessions
    assign_lock: asyncio.Lock
    hierarchy: HierarchyLink

    @property
    def db(self) -> Store: ...

    # -- operations ---------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...
    async def restart_service(self, name: str) -> None: ...
    async def raise_message(self, severity: str, text: str, source: str) -> int: ...
    async def on_reports(self, reports: list[Report], route: str | None = None) -> None: ...
    async def on_presence(
        self, taskserver: str | None, online: list[str], offline: list[str], full: bool
    ) -> int: ...
    async def taskserver_load(self) -> Counter[str]: ...
    def forget_taskserver_load(self) -> None: ...
    async def dispatch_route(self, route: str) -> None: ...
    async def reroute(self, computer_id: int, old: str, new: str) -> None: ...
    async def tickle(self, computers: list[dict[str, Any]]) -> tuple[list[str], list[str]]: ...
    async def start_run(
        self,
        definition: dict[str, Any],
        computers: list[dict[str, Any]],
        schedule: str | None = None,
    ) -> dict[str, Any]: ...
    def schedules_changed(self) -> None: ...
    def schedule_now(self) -> float: ...
    async def purge(self, dry_run: bool = False) -> dict[str, Any]: ...
    async def open_step(
        self,
        run_id: int,
        step: str,
        task: dict[str, Any],
        instances: list[NewInstance],
        machine: dict[str, Any],
    ) -> Stage: ...
    def start_stage(self, run_id: int, step: str, task: dict[str, Any]) -> None: ...
    async def finish(self, run_id: int, status: RunState | None = None) -> None: ...
    async def end_instances(
        self, run_id: int, state: InstanceState, reason: str, step: str | None = None
    ) -> int: ...
    async def end_run(self, run_id: int, state: InstanceState, reason: str) -> int: ...


class CoreParts(NS, Protocol):
    """What the core's own parts (``runs``, ``dispatch``, ``rollup``) share among themselves."""

    def _tokens(
        self, run_id: int, computer: str, computer_id: int | None, route: str, mac: str = ""
    ) -> dict[str, str]: ...
    def _notify(self, change: Change) -> None: ...
    def _flush_changes(self) -> None: ...
    async def _send_quietly(self, link: Link, message: Event) -> None: ...
