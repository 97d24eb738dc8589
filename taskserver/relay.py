"""The relay: holds work for agents, fans it out, runs task-server tasks, rolls results up.

One class serves two places: a Task Server process, and the Notification Server's built-in
task service (for agents with no TS). Only the *upstream* differs: a WebSocket link to the NS
for a TS, direct calls into the NS for the built-in one. The roll-up to the NS (the flush and
upstream loops below, the agents' acknowledgements) is the mixin ``taskserver.rollup.Rollup``.

Theory of operation
-------------------
* ``dispatch`` stores the step's targets in ``held`` (one transaction), then sends an
  ``execute`` to each connected agent. Agents that are offline get theirs when they connect.
  A re-sent dispatch is recognised by instance id (``seen``) and not run twice.
* Agent reports enter an in-memory inbox. The *flush loop* takes everything waiting (after
  ``flush_ms``, at ``batch_max`` reports, or at once when the inbox holds the result of every
  instance of a run held here: nothing more of it is coming) and queues it for the NS. An
  agent's result needs no write here: the agent keeps it in its own outbox until it is
  acknowledged, and it is acknowledged only once the NS has stored it. Results this relay makes
  itself (its own task-server work, time-outs) have no such keeper: they go to the ``outbox``
  table first.
* The *upstream loop* sends the queue to the NS in batches. Once the NS has stored a batch,
  the agents whose results it carried are acknowledged, and the held work of those results and
  the batch's outbox rows are deleted, in one transaction. A lost upstream keeps everything
  queued: nothing is dropped, a full queue simply waits (backpressure through the agents' own
  unacknowledged outboxes). A relay that dies with results on their way still holds their work
  when it starts again, sends it again, and each agent answers with the result it kept.
* A sweep times out held work whose deadline passed without an agent to run it.
* Nothing sent to one agent may hold the relay (``_to_agent``): a frame that fits under that
  connection's write limit goes at once; otherwise it waits in that agent's own backlog, and an
  agent that does not read it within ``SEND_STALL_S`` is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from protocol import codec
from protocol.errors import ProtocolError
from protocol.jobs import JobMachine, RunStep
from protocol.messages import (
    Cancel,
    Dispatch,
    Execute,
    Hello,
    Message,
    Report,
    Reports,
    StepRequest,
    StepResult,
    Tickle,
)
from protocol.session import (
    CLOSE_RATE_LIMITED,
    CLOSE_REPLACED,
    REPORT_ITEMS_PER_TOKEN,
    RateLimiter,
    Role,
    Session,
    message_cost,
)
from protocol.states import InstanceState, is_terminal
from runtime.db import SEEN_KEEP_S
from runtime.jobrunner import JobClock, drive, ended_state, job_limit_s
from runtime.link import Link
from runtime.runner import Outcome, ScriptRun
from taskserver.live import LiveQueue
from taskserver.live import fits as live_fits
from taskserver.rollup import FINISHED_KEPT, AckWait, AgentConn, Key, Outgoing, Rollup, Upstream
from taskserver.store import Held, RelayStore
from taskserver.tasktypes import TS_RUNNERS

DEADLINE_GRACE_S = 5.0
SEND_STALL_S = 30.0
"""An agent that reads nothing of its backlog for this long is disconnected."""
FORGET_SEEN_EVERY_S = 3600.0
"""How often the relay forgets instances it took more than ``SEEN_KEEP_S`` ago (at start, then
this often): its ``seen`` table grew by one row per instance, for ever."""


@dataclass
class LocalRun:
    """Work this relay runs itself: the task, and the script running now (to stop it)."""

    task: asyncio.Task[None]
    run: ScriptRun | None = None

    def stop(self) -> None:
        if self.run is not None:
            self.run.stop()
        self.task.cancel()


def _job_step(task: dict[str, Any], step: str) -> dict[str, Any] | None:
    """The ``run`` instruction for ``step`` in a held client job, if there is one."""
    if task.get("type") != "client-job":
        return None
    for ins in task.get("job", {}).get("program", []):
        if ins.get("op") == "run" and ins.get("step") == step:
            return dict(ins)
    return None


class Relay(Rollup):
    """Work relay between the NS and agents. See the module docstring."""

    def __init__(
        self,
        name: str,
        store: RelayStore,
        *,
        log: Any,
        flush_ms: int = 10,
        batch_max: int = 500,
        local_concurrency: int = 8,
        agent_rate_per_s: float = 200.0,
    ):
        self.name = name
        self.store = store
        self.log = log
        self.flush_ms = flush_ms
        self.batch_max = batch_max
        self.held: dict[int, Held] = {}
        self.by_computer: dict[str, dict[int, Held]] = {}
        self.agents: dict[str, AgentConn] = {}
        self.local: dict[int, LocalRun] = {}
        self._cancel_later: dict[str, set[int]] = {}
        self._steps: dict[tuple[int, str], asyncio.Future[Outcome]] = {}
        self._step_runs: dict[tuple[int, str], ScriptRun] = {}
        """The script of each task-server step running for an agent's client job (to stop it)."""
        self._local_sem = asyncio.Semaphore(local_concurrency)
        self._inbox: list[tuple[list[Report], AgentConn | None, str, list[Key]]] = []
        self._held_per_run: Counter[int] = Counter()
        """Instances held per run (``_keep``, ``_forget``): a run whose every held instance has
        its result in the inbox is flushed at once (``Rollup._completes_a_run``)."""
        self._inbox_results: dict[int, set[int]] = {}
        """Per run, the held instances whose result waits in the inbox."""
        self._flush_due = asyncio.Event()
        self._acks_due: dict[int, AgentConn] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acks_since = 0.0
        self._last_stored_at = 0.0
        self._inbox_count = 0
        self._unsent: deque[Outgoing] = deque()
        self._upward: dict[Key, list[AckWait]] = {}
        """Agents' results queued or in flight to the NS, each with the agent messages whose
        acknowledgement waits for it."""
        self._presence_on: set[str] = set()
        self._presence_off: set[str] = set()
        self._presence_full = False
        self._upstream: Upstream | None = None
        self._wake_flush = asyncio.Event()
        self._wake_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.live = LiveQueue(flush_ms / 1000, self._wake_up.set, self._spawn, log)
        """Agents' live output on its way to the NS: apart from results, never stored."""
        self.stats = {"reports_in": 0, "delivered": 0, "dispatched": 0}
        self.agent_rate_per_s = agent_rate_per_s
        self.refused: Counter[str] = Counter()
        # Instances finished lately, by computer: a repeated result is acknowledged, not refused.
        self._finished: OrderedDict[int, str] = OrderedDict()
        # Instances cancelled lately (a stop), by computer: the agent's result, with the output
        # its script had produced, still goes up to the NS, which keeps that output.
        self._cancelled: OrderedDict[int, str] = OrderedDict()

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load what the store kept (held work, undelivered results) and start the loops."""
        held, outbox = await self.store.load()
        for h in held:
            self._keep(h)
        self._unsent.extend(Outgoing(r, seq) for seq, r in outbox)
        restarted: list[Report] = []
        for h in held:
            if h.local:
                if h.started:
                    restarted.append(
                        Report(
                            instance_id=h.instance_id,
                            state=InstanceState.FAILED,
                            computer=h.computer,
                            reason="the task server restarted while this ran",
                            ended_at=time.time(),
                        )
                    )
                else:
                    self._start_local(h)
        if restarted:
            self._report(restarted)
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="relay-flush"),
            asyncio.create_task(self._upstream_loop(), name="relay-upstream"),
            asyncio.create_task(self._sweep_loop(), name="relay-sweep"),
        ]
        self.log.info("relay_started", held=len(held), undelivered=len(outbox))

    async def stop(self) -> None:
        """Stop the loops and local runs (the store is closed by its owner)."""
        for local in self.local.values():
            local.stop()
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(BaseException):
                await task

    def set_upstream(self, upstream: Upstream | None) -> None:
        """Attach (or detach, with None) the NS. On attach, the full presence list is re-sent."""
        self._upstream = upstream
        if upstream is None:
            self.live.clear()
        else:
            self._presence_full = True
            self._presence_on = set(self.agents)
            self._presence_off.clear()
            self._wake_up.set()

    # -- from the NS --------------------------------------------------------------------

    async def dispatch(self, message: Dispatch) -> None:
        """Take one batched step: keep it durably, then fan it out."""
        deadline = time.time() + message.expires_in_s
        runs_here = message.task.get("kind") == "taskserver"
        items = [
            Held(
                t.instance_id,
                message.run_id,
                t.computer,
                message.task,
                t.tokens,
                deadline,
                local=runs_here or t.local,
                mac=t.mac,
            )
            for t in message.targets
        ]
        fresh = await self.store.hold(items)
        self.stats["dispatched"] += len(fresh)
        for h in fresh:
            self._keep(h)
            if h.local:
                self._start_local(h)
            else:
                conn = self.agents.get(h.computer)
                if conn is not None:
                    self._send_execute(conn, h)

    async def cancel(self, instance_ids: list[int]) -> None:
        """Forget held work, stop local runs, and tell agents to kill what they run."""
        per_agent: dict[str, list[int]] = {}
        for iid in instance_ids:
            h = self.held.get(iid)
            if h is not None:
                if not h.local:
                    self._cancelled[iid] = h.computer
                    while len(self._cancelled) > FINISHED_KEPT:
                        self._cancelled.popitem(last=False)
                conn = self.agents.get(h.computer)
                if conn is not None and iid in conn.sent:
                    per_agent.setdefault(h.computer, []).append(iid)
                elif not h.local:
                    # Sent on an earlier connection, maybe: tell the agent when it is back.
                    self._cancel_later.setdefault(h.computer, set()).add(iid)
            self._forget(iid)
            local = self.local.get(iid)
            if local is not None:
                local.stop()
            for key, step in list(self._steps.items()):
                if key[0] == iid and not step.done():
                    # A task-server step run for an agent's client job: its script is killed and
                    # ends ``stopped`` with its output, which is the agent's answer (_answer_step).
                    script = self._step_runs.get(key)
                    if script is not None:
                        script.stop()
                    else:
                        step.cancel()
        await self.store.drop(instance_ids)
        for name, ids in per_agent.items():
            conn = self.agents.get(name)
            if conn is not None:
                self._to_agent(conn, Cancel(id=conn.link.next_id(), instance_ids=ids))

    async def tickle(self, computers: list[str]) -> tuple[int, int]:
        """Tell connected agents to check in; return (reached, offline)."""
        reached = 0
        for name in computers:
            conn = self.agents.get(name)
            if conn is None:
                continue
            if self._to_agent(conn, Tickle(id=conn.link.next_id())):
                reached += 1
        return reached, len(computers) - reached

    # -- agents -------------------------------------------------------------------------

    async def serve_agent(self, link: Link, hello: Hello) -> None:
        """Serve one agent connection (after its ``welcome``) until it closes."""
        name = hello.identity
        old = self.agents.get(name)
        if old is not None:
            await old.link.close(
                CLOSE_REPLACED, "replaced by a newer connection from the same agent"
            )
        conn = AgentConn(name, link)
        self.agents[name] = conn
        self._set_presence(name, True)
        session = Session(Role.AGENT)
        limiter = RateLimiter(self.agent_rate_per_s, self.agent_rate_per_s * 4)
        try:
            late = self._cancel_later.pop(name, None)
            if late:
                self._to_agent(conn, Cancel(id=link.next_id(), instance_ids=sorted(late)))
            for h in list(self.by_computer.get(name, {}).values()):
                if not h.local:  # work this relay runs itself is not the agent's
                    self._send_execute(conn, h)

            def on_message(message: Message) -> None:
                session.check(message)
                if not limiter.allow(time.monotonic(), message_cost(message)):
                    self.refused["rate_limited"] += 1
                    raise ProtocolError(
                        f"more than {self.agent_rate_per_s:g} messages per second"
                        f" (a reports message counts one per {REPORT_ITEMS_PER_TOKEN} items)",
                        code="rate_limited",
                        close_code=CLOSE_RATE_LIMITED,
                    )
                if isinstance(message, Reports):
                    self._accept_agent_reports(conn, message)
                elif isinstance(message, StepRequest):
                    self._step_request(conn, message)

            # Each message is handled as its frame is read (no task wakes per message).
            refused = await link.deliver(on_message)
            if refused is not None:
                raise refused
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            self.log.warning(
                "agent_protocol_error", peer=link.peer, code=exc.code, reason=exc.message
            )
            await link.refuse(exc)
        finally:
            if self.agents.get(name) is conn:
                del self.agents[name]
                self._set_presence(name, False)

    def _accept_agent_reports(self, conn: AgentConn, message: Reports) -> None:
        """Take an agent's reports: only for work this relay gave that computer.

        A result for work that finished lately on that computer is a repeat (acknowledged,
        not stored). Anything else is refused, counted and logged with the peer.
        """
        items: list[Report] = []
        for r in message.items:
            h = self.held.get(r.instance_id)
            if r.live is not None:  # live output: to the NS apart from results, or dropped
                if (
                    h is not None
                    and h.computer == conn.name
                    and not h.local
                    and self._upstream is not None
                    and live_fits(r)
                    and self.live.admit(conn.name)
                ):
                    self.live.add(r.with_computer(conn.name))
                continue
            if h is not None and h.computer == conn.name and not h.local:
                items.append(r.with_computer(conn.name))
                continue
            if h is None and self._cancelled.get(r.instance_id) == conn.name:
                if is_terminal(r.state):  # a stopped instance's result, with its output
                    items.append(r.with_computer(conn.name))
                continue
            if h is None and self._finished.get(r.instance_id) == conn.name:
                continue
            why = (
                "work held for another computer"
                if h is not None
                else "work this relay never gave it"
            )
            self.refused["foreign_report"] += 1
            self.log.warning(
                "report_refused",
                peer=conn.link.peer,
                computer=conn.name,
                instance_id=r.instance_id,
                reason=why,
            )
        # Only results wait in the agent's outbox for an ack; progress needs none.
        results = [(r.instance_id, r.step) for r in message.items if is_terminal(r.state)]
        self._report(items, conn, message.id if results else "", results)

    def _send_execute(self, conn: AgentConn, h: Held) -> None:
        left_s = h.deadline - time.time()
        if left_s <= 0 or h.instance_id in conn.sent:
            return
        conn.sent.add(h.instance_id)
        acks, conn.acks = conn.acks, []
        self._to_agent(
            conn,
            Execute(
                id=conn.link.next_id(),
                run_id=h.run_id,
                instance_id=h.instance_id,
                task=h.task,
                tokens=h.tokens,
                timeout_s=left_s,
                acks=acks,
                mac=h.mac,
            ),
        )

    def _to_agent(self, conn: AgentConn, message: Message) -> bool:
        """Send ``message`` to one agent without ever waiting for that agent to read.

        The relay sends to thousands of agents from one loop (a dispatch's fan-out, the acks).
        Awaiting a send that waits for a peer to drain would let one stalled agent hold every
        other agent's work. So a frame that fits under the connection's write limit is written
        at once (the await cannot block); otherwise, or while earlier frames still wait, it joins
        that agent's backlog, which a task of its own sends in order. An agent that has not
        taken its backlog within ``SEND_STALL_S`` is disconnected; it comes back, re-registers,
        and gets its held work again. Returns False if the connection was found closed.
        """
        data = codec.encode(message)
        if conn.backlog is None:
            if conn.link.send_now(data):
                return True
            if not conn.link.is_open:
                return False
        if conn.backlog is None:
            conn.backlog = deque()
            self._spawn(self._send_backlog(conn))
        conn.backlog.append(data)
        return True

    async def _send_backlog(self, conn: AgentConn) -> None:
        backlog = conn.backlog
        assert backlog is not None
        try:
            while backlog:
                # Returns once the agent has read enough for this frame to fit.
                await asyncio.wait_for(conn.link.send_frame(backlog.popleft()), SEND_STALL_S)
        except TimeoutError:
            self.refused["stalled_agent"] += 1
            self.log.warning(
                "agent_stalled",
                peer=conn.link.peer,
                waiting=len(backlog),
                reason=f"took nothing we sent in {SEND_STALL_S:g} s; disconnected",
            )
            conn.link.abort()
        except ConnectionClosed:
            pass
        finally:
            conn.backlog = None

    # -- task-server tasks, run here ----------------------------------------------------

    def _start_local(self, h: Held) -> None:
        task = asyncio.create_task(self._run_local(h))
        self.local[h.instance_id] = LocalRun(task)
        task.add_done_callback(lambda _: self.local.pop(h.instance_id, None))

    async def _run_local(self, h: Held) -> None:
        """Run a task-server task, or drive a client job for a device, here."""
        iid = h.instance_id
        started = time.time()
        try:
            async with self._local_sem:
                if iid not in self.held:
                    return
                await self.store.mark_started(iid)
                self._report(
                    [
                        Report(
                            instance_id=iid,
                            state=InstanceState.RUNNING,
                            computer=h.computer,
                            started_at=started,
                        )
                    ]
                )
                if h.task.get("type") == "client-job":
                    outcome = await self._run_local_job(h)
                else:
                    outcome = await self._script(iid, h.task, h.tokens, h.deadline - time.time())
        except asyncio.CancelledError:
            outcome = Outcome(
                InstanceState.STOPPED, reason="stopped by an administrator", ended_at=time.time()
            )
        self._report([outcome.report(iid, computer=h.computer)])

    async def _script(
        self,
        iid: int,
        task: dict[str, Any],
        tokens: dict[str, str],
        timeout_s: float,
        step: tuple[int, str] | None = None,
    ) -> Outcome:
        """Run one task-server task here, through the TS's catalog (``step``: it is that step of
        an agent's client job)."""
        runner = TS_RUNNERS.get(str(task.get("type")))
        if runner is None:
            return Outcome.failed(f"this task server cannot run {task.get('type')!r}")
        local = self.local.get(iid)

        def track(run: ScriptRun) -> None:
            if local is not None:
                local.run = run
            if step is not None:
                self._step_runs[step] = run

        return await runner(task.get("params", {}), tokens, timeout_s, track)

    async def _run_local_job(self, h: Held) -> Outcome:
        started = time.time()
        machine = JobMachine(h.task["job"]["program"])
        clock = JobClock(h.deadline, job_limit_s(h.task))

        async def run_step(step: RunStep) -> Outcome:
            now = time.time()
            self._report(
                [
                    Report(
                        instance_id=h.instance_id,
                        step=step.step,
                        state=InstanceState.RUNNING,
                        computer=h.computer,
                        started_at=now,
                    )
                ]
            )
            return await self._script(h.instance_id, step.task, h.tokens, clock.step_limit(step))

        async def step_ended(step: RunStep, outcome: Outcome, snapshot: dict[str, Any]) -> None:
            self._report([outcome.report(h.instance_id, computer=h.computer, step=step.step)])

        ended = await drive(machine, run_step, step_ended, clock=clock)
        return Outcome(ended_state(ended), None, "", ended.reason, started, time.time())

    def _step_request(self, conn: AgentConn, message: StepRequest) -> None:
        """An agent asks this relay to run a task-server step of its client job.

        The relay runs the step as the NS sent it (from the job it holds for that computer, with
        the held tokens), never the task or tokens in the request: scripts come only from the NS.
        """
        h = self.held.get(message.instance_id)
        key = (message.instance_id, message.step)
        step = (
            _job_step(h.task, message.step) if h is not None and h.computer == conn.name else None
        )
        if h is None and self._cancelled.get(message.instance_id) == conn.name:
            # Asked (again) after a stop: the job is over, and its step must not run again.
            outcome = Outcome(
                InstanceState.STOPPED, reason="stopped by an administrator", ended_at=time.time()
            )
            self._spawn(self._answer_step(conn, message, asyncio.sleep(0, outcome)))
            return
        if h is None or step is None or step.get("kind") != "taskserver":
            self.refused["foreign_step"] += 1
            self.log.warning(
                "step_request_refused",
                peer=conn.link.peer,
                computer=conn.name,
                instance_id=message.instance_id,
                step=message.step,
            )
            outcome = Outcome(
                InstanceState.FAILED,
                reason="refused: not a task-server step of work held for this computer",
                ended_at=time.time(),
            )
            self._spawn(self._answer_step(conn, message, asyncio.sleep(0, outcome)))
            return
        task = step["task"]
        timeout_s = max(0.0, min(float(task.get("timeout_s", 300)), h.deadline - time.time()))
        running = self._steps.get(key)
        if running is None:
            running = asyncio.ensure_future(
                self._script(message.instance_id, task, h.tokens, timeout_s, key)
            )
            self._steps[key] = running
            running.add_done_callback(lambda _: self._step_runs.pop(key, None))
            # Keep the answer for a while: an agent that reconnects asks again.
            running.add_done_callback(
                lambda _: asyncio.get_running_loop().call_later(600, self._steps.pop, key, None)
            )
        self._spawn(self._answer_step(conn, message, running))

    async def _answer_step(
        self, conn: AgentConn, message: StepRequest, result: Awaitable[Outcome]
    ) -> None:
        try:
            outcome = (
                await asyncio.shield(result) if isinstance(result, asyncio.Future) else await result
            )
        except asyncio.CancelledError:
            if not (isinstance(result, asyncio.Future) and result.cancelled()):
                raise  # this answer itself was cancelled (the relay stops)
            # The step was stopped before its script started: say so, so the job ends stopped.
            outcome = Outcome(
                InstanceState.STOPPED, reason="stopped by an administrator", ended_at=time.time()
            )
        report = outcome.report(message.instance_id, computer=conn.name, step=message.step)
        self._to_agent(conn, StepResult(id=conn.link.next_id(), reply_to=message.id, result=report))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sweep_loop(self) -> None:
        forgot_at = 0.0
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            if now - forgot_at >= FORGET_SEEN_EVERY_S:
                forgot_at = now
                await self._forget_seen(now - SEEN_KEEP_S)
            expired: list[Report] = []
            for h in list(self.held.values()):
                if now < h.deadline or h.instance_id in self.local:
                    continue
                conn = self.agents.get(h.computer)
                with_agent = conn is not None and h.instance_id in conn.sent
                if with_agent and now < h.deadline + DEADLINE_GRACE_S:
                    continue
                reason = (
                    "no result from the agent by the run's time limit"
                    if with_agent
                    else "the agent did not connect before the run's time limit"
                )
                expired.append(
                    Report(
                        instance_id=h.instance_id,
                        state=InstanceState.TIMED_OUT,
                        computer=h.computer,
                        reason=reason,
                        ended_at=now,
                    )
                )
            if expired:
                self._report(expired)

    async def _forget_seen(self, older_than: float) -> None:
        """Forget instances taken before ``older_than`` (``RelayStore.forget_seen``); a failure is
        logged and tried again at the next round."""
        try:
            forgot = await self.store.forget_seen(older_than)
        except Exception:
            self.log.exception("relay_forget_seen_failed")
            return
        if forgot:
            self.log.info("relay_forgot_seen", instances=forgot)

    # -- bookkeeping --------------------------------------------------------------------

    def _keep(self, h: Held) -> None:
        if h.instance_id not in self.held:
            self._held_per_run[h.run_id] += 1
        self.held[h.instance_id] = h
        self.by_computer.setdefault(h.computer, {})[h.instance_id] = h

    def _forget(self, instance_id: int) -> Held | None:
        h = self.held.pop(instance_id, None)
        if h is not None:
            left = self._held_per_run[h.run_id] - 1
            if left > 0:
                self._held_per_run[h.run_id] = left
            else:
                del self._held_per_run[h.run_id]
            conn = self.agents.get(h.computer)
            if conn is not None:
                conn.sent.discard(instance_id)
            per = self.by_computer.get(h.computer)
            if per is not None:
                per.pop(instance_id, None)
                if not per:
                    del self.by_computer[h.computer]
        return h

    def queue_depths(self) -> dict[str, int]:
        """What waits where, for ``/metrics`` (``taskserver.metrics``; read at scrape time)."""
        backlog = sum(len(c.backlog) for c in self.agents.values() if c.backlog)
        return {
            "inbox": self._inbox_count,
            "upstream": len(self._unsent),
            "awaiting_ns": len(self._upward),
            "agent_backlog": backlog,
            "local": len(self.local),
        }

    def idle(self) -> bool:
        """Nothing held, nothing waiting to go upstream or to be stored: no run in flight here."""
        return not self.held and not self._unsent and not self._inbox and not self._upward
