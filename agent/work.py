"""The agent's work: taking an ``execute``, running it, and running client jobs.

``Work`` is a mixin of :class:`agent.agent.Agent`, whose ``__init__`` sets every attribute
annotated on it (the durability rules are in ``agent.agent``'s docstring): work is checked against
the NS's work key (``_authentic``), stored as received before it runs (``_accept``; work a full
disk cannot take is held back and tried again, ``_hold_back``), run as a plain task or a client
job (``_execute``, ``_run_task``, ``_run_job``; a job's task-server steps go to the relay,
``_ask_relay``), and its result stored and sent (``_finished``). Sending and the progress hold
stay in ``Agent``, which this module does not import.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from agent import __version__
from agent.commands import CommandTable
from agent.live import LiveOutput, send_live
from agent.store import AgentStore, NotStored
from agent.tasktypes import RUNNERS, TaskContext
from protocol.jobs import JobMachine, JobState, RunStep
from protocol.messages import Execute, Report, StepRequest
from protocol.states import InstanceState
from protocol.workauth import WORK_KEY_BYTES, check_mac
from runtime.jobrunner import JobClock, drive, ended_state, job_limit_s
from runtime.link import Link
from runtime.runner import Outcome, ScriptRun


@dataclass
class _Running:
    run: ScriptRun | None
    task: asyncio.Task[None]
    relay_step: bool = False
    """A client job waits for its relay to run a task-server step: a stop is the relay's to
    carry out (it kills the script and answers ``stopped``, with the output)."""
    job: bool = False
    """A client job: a stop between two steps (a step's result being stored and sent) lets that
    result go out, then ends the job; it never cuts the report of a step that ended."""
    ran: ScriptRun | None = None
    """The last script this instance started, kept once it ended: when the agent stops, what it
    printed goes with the result stored for the next start (``_keep_interrupted``)."""


RESTARTED = "agent restarted while the task ran"
"""The reason of an instance whose script the agent's own stop (or crash) ended."""
STOP_GRACE_S = 5.0
"""How long a stopped script's task may take to end (kill, drain its output) before it is
cancelled, and the output with it."""


class Work:
    """The agent's work (see the module docstring): a mixin of ``Agent``."""

    STEP_GRACE_S = 10.0
    STORE_RETRY_S = 0.5
    STORE_RETRY_MAX_S = 15.0
    """Work that could not be stored is tried again after STORE_RETRY_S, doubling up to this."""

    # Set in ``Agent.__init__``; declared here for the type checker only (no class attributes).
    name: str
    log: Any
    store: AgentStore | None
    link: Link | None
    connected: asyncio.Event
    taskserver: str | None
    commands: CommandTable
    simulate: dict[str, float] | None
    work_key: bytes | None
    refused_executes: int
    shutting_down: bool
    _sem: asyncio.Semaphore
    _running: dict[int, _Running]
    _stopping: set[int]
    _step_waiters: dict[str, asyncio.Future[Report]]
    _rng: random.Random
    _after: dict[int, list[Callable[[], Awaitable[None]]]]
    _recent: OrderedDict[int, Report]
    _unstored: dict[int, tuple[Execute, float]]
    _storing: set[int]
    _store_retry: asyncio.Task[None] | None
    # ``Agent``'s own methods, called from here.
    _progress: Callable[[Report], None]
    _send: Callable[[list[Report]], Awaitable[None]]
    keep: Callable[[asyncio.Task[Any]], None]

    # -- work ---------------------------------------------------------------------------

    def _set_work_key(self, config: dict[str, Any]) -> None:
        """Take the work key the NS gave this agent (``protocol.workauth``), if there is one."""
        raw = config.get("work_key")
        try:
            key = bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError:
            key = b""
        if len(key) == WORK_KEY_BYTES:
            self.work_key = key

    async def _authentic(self, message: Execute) -> bool:
        """Whether ``message`` is work the NS authenticated for this agent.

        An agent that holds a work key runs only work whose MAC it checks (a TS relays work but
        cannot invent or alter it); anything else is refused: logged, reported ``failed`` with
        the reason, and nothing runs. An agent given no key yet (registered only with an NS older
        than work authentication) takes work as before, until it gets one.
        """
        key = self.work_key
        if key is None:
            return True
        why = check_mac(
            key,
            message.mac,
            message.instance_id,
            self.name,
            message.run_id,
            message.task,
            message.tokens,
        )
        if why is None:
            return True
        self.refused_executes += 1
        via = self.taskserver or "the built-in task service"
        self.log.warning(
            "execute_refused",
            instance_id=message.instance_id,
            run_id=message.run_id,
            via=via,
            reason=why,
        )
        assert self.store is not None
        if self.store.seen.get(message.instance_id) is None:  # never fail work taken already
            reason = (
                f"refused by the agent: this execute from {via} is not work the NS sent ({why}); "
                "nothing ran. If that task server is older than the NS, upgrade it."
            )
            await self._send(
                [
                    Report(
                        instance_id=message.instance_id,
                        state=InstanceState.FAILED,
                        reason=reason,
                        ended_at=time.time(),
                    )
                ]
            )
        return False

    async def _on_execute(self, message: Execute) -> None:
        assert self.store is not None
        iid = message.instance_id
        if self.store.seen.get(iid) is not None:
            # Sent again (by a relay that took over this agent's work): say again how it ended.
            report = self.store.outbox.get((iid, "")) or self._recent.get(iid)
            if report is not None:
                await self._send([report])
            return
        if self._instant(message):
            # A simulated task with no delay ends here and now: no task of its own, and no
            # received/running progress, which its result would replace before it left anyway.
            await self._finished(iid, self._simulated_outcome(time.time()))
            return
        await self._accept(message)

    async def _accept(self, message: Execute, again: bool = False) -> bool:
        """Store the instance as received, then run it. Only what is stored is seen: work that
        cannot be stored (a full disk) is held back (``_hold_back``) and runs once it can be;
        ``again``: this is the agent trying again, not the relay sending it."""
        assert self.store is not None
        iid = message.instance_id
        if iid in self._storing:
            return True
        if self.store.seen.get(iid) is not None:
            self._unstored.pop(iid, None)
            return True
        self._storing.add(iid)
        try:
            await self.store.mark(iid, InstanceState.RECEIVED)
        except NotStored as exc:
            await self._hold_back(message, exc, again)
            return False
        finally:
            self._storing.discard(iid)
        if self._unstored.pop(iid, None) is not None:
            self.log.info("work_stored", instance_id=iid, run_id=message.run_id)
        self._progress(Report(instance_id=iid, state=InstanceState.RECEIVED))
        self._start(message, None)
        return True

    async def _hold_back(self, message: Execute, exc: NotStored, again: bool) -> None:
        """Work came that the disk cannot take: nothing of it is kept, so nothing is lost either.

        The relay still holds it (and sends it again on the next connection). The agent says so
        each time the relay sends it (a ``pending`` report with the reason, which moves nothing
        and which the NS raises as a message, at most one per agent in ten minutes), and tries
        to store it again, less and less often, until it can or the work's time limit passes
        (then the relay times it out)."""
        iid = message.instance_id
        if iid not in self._unstored:
            self.log.warning(
                "work_not_stored", instance_id=iid, run_id=message.run_id, reason=exc.reason
            )
        self._unstored[iid] = (message, time.time() + message.timeout_s)
        if not again:
            await self._send(
                [Report(instance_id=iid, state=InstanceState.PENDING, reason=exc.reason)]
            )
        if self._store_retry is None or self._store_retry.done():
            self._store_retry = asyncio.create_task(self._store_held_back())
            self.keep(self._store_retry)

    async def _store_held_back(self) -> None:
        delay = self.STORE_RETRY_S
        while self._unstored:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.STORE_RETRY_MAX_S)
            for iid, (message, deadline) in list(self._unstored.items()):
                left = deadline - time.time()
                if left <= 0:
                    del self._unstored[iid]
                    continue
                if not await self._accept(dataclasses.replace(message, timeout_s=left), True):
                    break  # still no room: wait
                delay = self.STORE_RETRY_S

    def _instant(self, message: Execute) -> bool:
        """Whether ``message`` is simulated work that takes no time (``--task-delay-ms 0``)."""
        return (
            self.simulate is not None
            and not self.simulate.get("delay_ms")
            and message.task.get("type") != "client-job"
        )

    def _start(
        self, message: Execute, snapshot: dict[str, Any] | None, restarted: bool = False
    ) -> None:
        task = asyncio.create_task(self._execute(message, snapshot, restarted))
        job = message.task.get("type") == "client-job"
        self._running[message.instance_id] = _Running(None, task, job=job)

    def _stop(self, iid: int) -> None:
        self._unstored.pop(iid, None)  # held back for want of disk: it never runs now
        running = self._running.get(iid)
        if running is None:
            return
        if running.run is not None or running.relay_step or running.job:
            if running.run is not None:
                running.run.stop()
            # The script ends ``stopped`` with the output it had produced, reported as any
            # result (a job's step too, also one the relay runs, which the relay's cancel stops;
            # then the job ends, ``_run_job``). The task is cancelled only if it has not ended a
            # while after.
            self._stopping.add(iid)
            asyncio.get_running_loop().call_later(STOP_GRACE_S, running.task.cancel)
            return
        running.task.cancel()

    async def _execute(
        self, message: Execute, snapshot: dict[str, Any] | None, restarted: bool
    ) -> None:
        assert self.store is not None
        iid = message.instance_id
        deadline = time.time() + message.timeout_s
        try:
            if message.task.get("type") == "client-job":
                outcome = await self._run_job(message, deadline, snapshot, restarted)
            else:
                async with self._sem:
                    # Not stored: after a restart, received and running end the same way.
                    self._progress(
                        Report(instance_id=iid, state=InstanceState.RUNNING, started_at=time.time())
                    )
                    outcome = await self._run_task(
                        iid, message.task, message.tokens, message.timeout_s
                    )
        except asyncio.CancelledError:
            if self.shutting_down:  # not an administrator's stop: reported at the next start
                await self._keep_interrupted(iid)
                raise
            outcome = Outcome(
                InstanceState.STOPPED, reason="stopped by an administrator", ended_at=time.time()
            )
        finally:
            self._running.pop(iid, None)
            self._stopping.discard(iid)
        await self._finished(iid, outcome)

    async def _keep_interrupted(self, iid: int) -> None:
        """The agent stops while a plain instance's script runs: store its result now, with the
        output the script printed, for the next start to send (what a crash leaves unstored is
        reported then too, without output: ``Agent._recover``). A job resumes instead."""
        assert self.store is not None
        running = self._running.get(iid)
        if running is None or running.job or running.ran is None:
            return
        report = Report(
            instance_id=iid,
            state=InstanceState.FAILED,
            reason=RESTARTED,
            output=running.ran.output(),
            ended_at=time.time(),
        )
        try:
            await self.store.finish(report)
        except (sqlite3.Error, OSError):  # not stored: reported at the next start, without output
            self.log.exception("interrupted_result_not_stored", instance_id=iid)

    async def _finished(self, iid: int, outcome: Outcome) -> None:
        """Store an instance's result until the relay acknowledges it, and send it."""
        assert self.store is not None
        report = outcome.report(iid)
        await self.store.finish(report)
        self._recent[iid] = report
        while len(self._recent) > 10_000:
            self._recent.popitem(last=False)
        await self._send([report])
        await self._reported(iid)

    async def _run_task(
        self,
        iid: int,
        task: dict[str, Any],
        tokens: dict[str, str],
        timeout_s: float,
        step: str = "",
    ) -> Outcome:
        """Run one client task here (a plain instance, or a step of a client job). What its
        scripts print goes on live while they run (``agent.live``; not for policies, iid 0)."""
        kind = str(task.get("type"))
        if self.simulate is not None:
            return await self._simulated(timeout_s)
        runner = RUNNERS.get(kind)
        if runner is None:
            return Outcome.failed(
                f"this agent ({__version__}) cannot run task type {kind!r}; upgrade it"
            )
        running = self._running.get(iid)
        live: LiveOutput | None = None

        def track(run: ScriptRun | None) -> None:
            nonlocal live
            if running is not None:
                running.run = run
                running.ran = run or running.ran
            if live is not None:
                live.close()
                live = None
            if run is not None and iid:
                live = LiveOutput(lambda report: send_live(self.link, report), iid, step)
                run.on_output = live.feed

        ctx = TaskContext(task.get("params", {}), tokens, timeout_s, self.commands, self, track)
        try:
            outcome = await runner(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A task type that breaks must still end its instance, with a reason to act on.
            self.log.exception("task_type_failed", type=kind, instance_id=iid or None, step=step)
            now = time.time()
            outcome = Outcome(
                InstanceState.FAILED, reason=f"{kind} failed on the agent: {exc}", ended_at=now
            )
        self._after.setdefault(iid, []).extend(ctx.after_report)
        return outcome

    async def _simulated(self, timeout_s: float) -> Outcome:
        assert self.simulate is not None
        started = time.time()
        delay_s = float(self.simulate.get("delay_ms", 0)) / 1000
        if delay_s:
            await asyncio.sleep(min(delay_s, timeout_s))
        return self._simulated_outcome(started)

    def _simulated_outcome(self, started: float) -> Outcome:
        assert self.simulate is not None
        if self._rng.random() < float(self.simulate.get("fail_rate", 0)):
            return Outcome(InstanceState.FAILED, 1, "", "simulated failure", started, time.time())
        return Outcome(InstanceState.SUCCEEDED, 0, "", "", started, time.time())

    async def _reported(self, iid: int) -> None:
        """Carry out what a task asked to do once its result is reported."""
        for action in self._after.pop(iid, []):
            try:
                await action()
            except Exception:
                self.log.exception("after_report_failed", instance_id=iid)

    # -- client jobs --------------------------------------------------------------------

    async def _run_job(
        self, message: Execute, deadline: float, snapshot: dict[str, Any] | None, restarted: bool
    ) -> Outcome:
        assert self.store is not None
        iid = message.instance_id
        started = time.time()
        machine = JobMachine(message.task["job"]["program"], snapshot)
        if snapshot is None:
            execute = {
                "id": message.id,
                "run_id": message.run_id,
                "instance_id": iid,
                "task": message.task,
                "tokens": message.tokens,
                "timeout_s": message.timeout_s,
            }
            await self.store.start_job(iid, execute, machine.snapshot(), deadline)
            self._progress(Report(instance_id=iid, state=InstanceState.RUNNING, started_at=started))
        pending_restart = restarted and machine.state is JobState.WAITING
        clock = JobClock(deadline, job_limit_s(message.task))

        async def run_step(step: RunStep) -> Outcome:
            nonlocal pending_restart
            if iid in self._stopping:  # stopped between two steps: start no other
                raise asyncio.CancelledError
            if pending_restart:
                pending_restart = False
                return Outcome(
                    InstanceState.FAILED,
                    reason="agent restarted while this step ran",
                    ended_at=time.time(),
                )
            now = time.time()
            self._progress(
                Report(instance_id=iid, step=step.step, state=InstanceState.RUNNING, started_at=now)
            )
            if step.kind == "taskserver":
                return await self._ask_relay(iid, step, message.tokens, clock.step_limit(step))
            async with self._sem:  # the job's time counts while the step waits for a slot
                return await self._run_task(
                    iid, step.task, message.tokens, clock.step_limit(step), step.step
                )

        async def step_ended(step: RunStep, outcome: Outcome, snap: dict[str, Any]) -> None:
            assert self.store is not None
            report = outcome.report(iid, step=step.step)
            await self.store.finish(report, snap)
            await self._send([report])
            await self._reported(iid)
            if iid in self._stopping:  # the step's script was stopped: so is the job
                raise asyncio.CancelledError

        async def job_started(snap: dict[str, Any]) -> None:
            assert self.store is not None
            await self.store.start_job(iid, self.store.jobs[iid]["execute"], snap, deadline)

        ended = await drive(machine, run_step, step_ended, job_started, clock)
        return Outcome(ended_state(ended), None, "", ended.reason, started, time.time())

    async def _ask_relay(
        self, iid: int, step: RunStep, tokens: dict[str, str], timeout_s: float
    ) -> Outcome:
        """Have the relay run a task-server step; ask again after a reconnect, until the time limit."""
        deadline = time.monotonic() + timeout_s + self.STEP_GRACE_S
        running = self._running.get(iid)
        if running is not None:
            running.relay_step = True
        try:
            return await self._relay_step(iid, step, tokens, timeout_s, deadline)
        finally:
            if running is not None:
                running.relay_step = False

    async def _relay_step(
        self, iid: int, step: RunStep, tokens: dict[str, str], timeout_s: float, deadline: float
    ) -> Outcome:
        """Send the step request (again on each new link) until an answer or ``deadline``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Outcome(
                    InstanceState.TIMED_OUT,
                    reason="no result from the task server by the time limit",
                    ended_at=time.time(),
                )
            link = self.link
            if link is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.connected.wait(), min(left, 5.0))
                await asyncio.sleep(0)
                continue
            request = StepRequest(
                id=f"s{uuid.uuid4().hex[:12]}",
                instance_id=iid,
                step=step.step,
                task=step.task,
                tokens=tokens,
                timeout_s=timeout_s,
            )
            waiter: asyncio.Future[Report] = asyncio.get_running_loop().create_future()
            self._step_waiters[request.id] = waiter
            try:
                await link.send(request)
                report = await asyncio.wait_for(waiter, left)
            except (ConnectionError, ConnectionClosed, TimeoutError):
                continue
            finally:
                self._step_waiters.pop(request.id, None)
            return Outcome(
                InstanceState(report.state),
                report.return_code,
                report.output,
                report.reason,
                report.started_at,
                report.ended_at,
            )
