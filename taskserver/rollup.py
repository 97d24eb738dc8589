"""The roll-up: what a relay sends up to the NS, and the agents' acknowledgements.

``Rollup`` is a mixin of :class:`taskserver.relay.Relay`, whose ``__init__`` sets every
attribute annotated on it (the theory of operation is in ``taskserver.relay``'s docstring):

* ``_report`` queues reports (an agent's, or results the relay makes itself) for the flush loop;
* the *flush loop* takes them in batches, writes the relay's own results to its outbox, and
  queues everything for the NS (``_unsent``);
* the *upstream loop* sends presence and the queued reports to the NS (``Upstream``), in batches
  of at most ``batch_max`` reports and about ``BATCH_BYTES``;
* once the NS has stored an agent's results, that agent is acknowledged, off the critical path
  of a run (``_ack_later``: with its next ``execute``, or in one ``reports_ack`` a little later).

Also the types the relay shares with it: ``AgentConn`` (a connected agent), ``Upstream``,
``Outgoing``, ``AckWait`` and ``Key``.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from protocol.messages import Message, Report, ReportsAck
from protocol.states import is_terminal
from runtime.link import Link
from taskserver.live import LiveQueue
from taskserver.store import Held, RelayStore

BATCH_BYTES = 512 * 1024
"""Roll-up batches stay under this many bytes (estimated), well within the 1 MiB frame limit."""
FINISHED_KEPT = 200_000
ACK_DELAY_S = 1.0
"""How long an agent's stored reports wait for their ack when no ``execute`` carries it..."""
ACK_QUIET_S = 0.25
"""...and then until no report has arrived for this long (a wave of results is still coming in:
the acks would compete with it for the CPU),"""
ACK_AT_MOST_S = 10.0
"""but never longer than this."""


class Outgoing(NamedTuple):
    """A report on its way to the NS."""

    report: Report
    seq: int | None = None
    """Its row in the outbox: a result this relay made itself, which nothing else keeps."""
    held: bool = False
    """An agent's result: the agent keeps it until acknowledged, so its held work stays in the
    database until the NS has stored it (then the agent is acknowledged, and the row goes)."""


Key = tuple[int, str]
"""A result: (instance id, step id or '' for the instance itself)."""


@dataclass
class AckWait:
    """An agent's ``reports`` message with results still on their way to the NS."""

    conn: AgentConn
    message_id: str
    left: int


class Upstream(Protocol):
    """Where a relay's results and presence go (the NS, over a link or in-process)."""

    async def deliver(self, reports: list[Report]) -> None:
        """Return once the NS stored ``reports`` durably; raise if it could not."""

    async def presence(self, online: list[str], offline: list[str], full: bool) -> None:
        """Tell the NS which agents came and went (``full``: ``online`` is the whole list)."""


@dataclass
class AgentConn:
    """A connected agent and the instances sent to it on this connection."""

    name: str
    link: Link
    sent: set[int] = field(default_factory=set)
    acks: list[str] = field(default_factory=list)
    """Its ``reports`` messages stored and not yet acknowledged (see ``Rollup._ack_later``)."""
    backlog: deque[bytes] | None = None
    """Frames waiting for this agent to read what was sent before (see ``Relay._to_agent``)."""


class Rollup:
    """The relay's roll-up to the NS (see the module docstring): a mixin of ``Relay``."""

    # Set in ``Relay.__init__``; declared here for the type checker only (no class attributes).
    store: RelayStore
    log: Any
    flush_ms: int
    batch_max: int
    held: dict[int, Held]
    agents: dict[str, AgentConn]
    stats: dict[str, int]
    _inbox: list[tuple[list[Report], AgentConn | None, str, list[Key]]]
    _inbox_count: int
    _held_per_run: Counter[int]
    _inbox_results: dict[int, set[int]]
    _flush_due: asyncio.Event
    _acks_due: dict[int, AgentConn]
    _ack_timer: asyncio.TimerHandle | None
    _acks_since: float
    _last_stored_at: float
    _unsent: deque[Outgoing]
    _upward: dict[Key, list[AckWait]]
    _presence_on: set[str]
    _presence_off: set[str]
    _presence_full: bool
    _upstream: Upstream | None
    _wake_flush: asyncio.Event
    _wake_up: asyncio.Event
    _finished: OrderedDict[int, str]
    _cancelled: OrderedDict[int, str]
    live: LiveQueue
    # ``Relay``'s own methods, called from here.
    _forget: Callable[[int], Held | None]
    _to_agent: Callable[[AgentConn, Message], bool]

    # -- roll-up ------------------------------------------------------------------------

    def _report(
        self,
        items: list[Report],
        conn: AgentConn | None = None,
        ack: str = "",
        results: list[Key] | None = None,
    ) -> None:
        """Queue reports for the next flush; ``ack`` names the agent message to acknowledge
        once the NS has stored ``results`` (every result it carried, repeats included)."""
        self._inbox.append((items, conn, ack, results or []))
        self._inbox_count += len(items)
        self.stats["reports_in"] += len(items)
        self._wake_flush.set()
        if self._inbox_count >= self.batch_max or self._completes_a_run(items):
            self._flush_due.set()

    def _completes_a_run(self, items: list[Report]) -> bool:
        """Whether ``items`` bring the last result the relay waits for in some run: every
        instance of that run held here has its result in the inbox.

        The barrier of that run's step waits on exactly these results; holding them for the rest
        of ``flush_ms`` would only delay it (and every step after it). While results still
        trickle in, the interval keeps gathering them into batches."""
        complete = False
        for r in items:
            if r.step or not is_terminal(r.state):
                continue
            h = self.held.get(r.instance_id)
            if h is None:
                continue
            waiting = self._inbox_results.setdefault(h.run_id, set())
            waiting.add(r.instance_id)
            complete = complete or len(waiting) >= self._held_per_run[h.run_id]
        return complete

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake_flush.wait()
            if self.flush_ms and not self._flush_due.is_set():
                timer = loop.call_later(self.flush_ms / 1000, self._flush_due.set)
                await self._flush_due.wait()
                timer.cancel()
            self._flush_due.clear()
            self._wake_flush.clear()
            batch, self._inbox, self._inbox_count = self._inbox, [], 0
            self._inbox_results.clear()
            if not batch:
                continue
            # An agent's result (``True``) is kept by the agent until acknowledged; a result
            # this relay made (``False``) is kept by nothing but the outbox.
            final: dict[Key, tuple[Report, bool]] = {}
            progress: list[Report] = []
            for items, conn, _, _ in batch:
                for r in items:
                    key = (r.instance_id, r.step)
                    if not is_terminal(r.state):
                        progress.append(r)
                    elif (
                        r.instance_id in self.held or r.instance_id in self._cancelled
                    ) and key not in final:
                        final[key] = (r, conn is not None)
                    # else: a repeated result for work already finished; acknowledged, not stored.
            own = [r for r, kept in final.values() if not kept]
            theirs = [r for r, kept in final.values() if kept]
            # Progress that its own result overtook in this batch is news to no one upstream.
            progress = [r for r in progress if (r.instance_id, r.step) not in final]
            try:
                seqs = await self.store.finish(own)
            except Exception:
                # Not acknowledged, not dropped: the batch goes back and is tried again.
                self.log.exception("relay_store_failed", reports=len(own))
                self._inbox[:0] = batch
                self._inbox_count += sum(len(items) for items, _, _, _ in batch)
                await asyncio.sleep(1.0)
                self._wake_flush.set()
                continue
            for r, _ in final.values():
                if not r.step:
                    h = self._forget(r.instance_id)
                    if h is not None:
                        self._finished[r.instance_id] = h.computer
                        while len(self._finished) > FINISHED_KEPT:
                            self._finished.popitem(last=False)
            for r in theirs:
                self._upward.setdefault((r.instance_id, r.step), [])
            for _, conn, ack, results in batch:
                if conn is not None and ack:
                    self._ack_when_stored(conn, ack, results)
            self._unsent.extend(Outgoing(r) for r in progress)
            self._unsent.extend(Outgoing(r, seq) for seq, r in zip(seqs, own, strict=True))
            self._unsent.extend(Outgoing(r, held=True) for r in theirs)
            self._wake_up.set()

    def _ack_when_stored(self, conn: AgentConn, message_id: str, results: list[Key]) -> None:
        """Acknowledge an agent's message once the NS has stored every result it carried.

        Until then the agent keeps them: should this relay die first, the agent still has them
        to send again. A repeat of a result already stored upstream is acknowledged at once.
        """
        waiting = [k for k in set(results) if k in self._upward]
        if not waiting:
            self._ack_later(conn, message_id)
            return
        wait = AckWait(conn, message_id, len(waiting))
        for k in waiting:
            self._upward[k].append(wait)

    def _stored_upstream(self, batch: list[Outgoing]) -> None:
        """The NS stored ``batch``: acknowledge the agent messages that waited only for it."""
        for out in batch:
            if not out.held:
                continue
            for wait in self._upward.pop((out.report.instance_id, out.report.step), []):
                wait.left -= 1
                if wait.left == 0:
                    self._ack_later(wait.conn, wait.message_id)

    def _ack_later(self, conn: AgentConn, message_id: str) -> None:
        """Acknowledge an agent's results, once the NS stored them, off the critical path of a
        run: with the next ``execute`` sent to that agent, or in one ``reports_ack`` after
        ``ACK_DELAY_S`` once the reports stop coming (``ACK_QUIET_S``), at most
        ``ACK_AT_MOST_S`` later.

        A result waits in the agent's outbox until then; should the agent reconnect first, it
        sends it again and the relay recognises the repeat (``_finished``, ``seen``).
        """
        conn.acks.append(message_id)
        self._acks_due[id(conn)] = conn
        loop = asyncio.get_running_loop()
        self._last_stored_at = loop.time()
        if self._ack_timer is None:
            self._acks_since = self._last_stored_at
            self._ack_timer = loop.call_later(ACK_DELAY_S, self._acks_now)

    def _acks_now(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet = now - self._last_stored_at
        if quiet < ACK_QUIET_S and now - self._acks_since < ACK_AT_MOST_S:
            self._ack_timer = loop.call_later(ACK_QUIET_S - quiet, self._acks_now)
            return
        self._ack_timer = None
        due, self._acks_due = list(self._acks_due.values()), {}
        self._send_acks(due)

    def _send_acks(self, due: list[AgentConn]) -> None:
        for conn in due:
            if not conn.acks or self.agents.get(conn.name) is not conn:
                continue
            acks, conn.acks = conn.acks, []
            self._to_agent(
                conn, ReportsAck(id=conn.link.next_id(), reply_to=acks[0], more=acks[1:])
            )

    async def _upstream_loop(self) -> None:
        while True:
            await self._wake_up.wait()
            self._wake_up.clear()
            while (upstream := self._upstream) is not None:
                try:
                    if self._presence_on or self._presence_off or self._presence_full:
                        on, off, full = (
                            sorted(self._presence_on),
                            sorted(self._presence_off),
                            self._presence_full,
                        )
                        self._presence_on, self._presence_off, self._presence_full = (
                            set(),
                            set(),
                            False,
                        )
                        await upstream.presence(on, off, full)
                    # Live output goes in batches of its own that nothing here waits for.
                    self.live.send(upstream)
                    if not self._unsent:
                        break
                    batch = self._next_batch()
                    try:
                        await upstream.deliver([out.report for out in batch])
                    except BaseException:
                        self._unsent.extendleft(reversed(batch))
                        raise
                    self.stats["delivered"] += len(batch)
                    self._stored_upstream(batch)
                    await self.store.delivered(
                        [out.seq for out in batch if out.seq is not None],
                        [
                            out.report.instance_id
                            for out in batch
                            if out.held and not out.report.step
                        ],
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.log.warning(
                        "upstream_delivery_failed", error=str(exc) or type(exc).__name__
                    )
                    await asyncio.sleep(0.5)
                    break

    def _next_batch(self) -> list[Outgoing]:
        """Up to ``batch_max`` reports, and never more than ``BATCH_BYTES`` of them."""
        batch: list[Outgoing] = []
        size = 0
        while self._unsent and len(batch) < self.batch_max:
            first = self._unsent[0].report
            cost = 200 + len(first.output.encode()) + len(first.reason)
            if batch and size + cost > BATCH_BYTES:
                break
            batch.append(self._unsent.popleft())
            size += cost
        return batch

    def _set_presence(self, name: str, online: bool) -> None:
        if online:
            self._presence_off.discard(name)
            self._presence_on.add(name)
        else:
            self._presence_on.discard(name)
            self._presence_off.add(name)
        self._wake_up.set()
