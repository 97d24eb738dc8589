"""A run's life on the NS: created, its steps opened and counted, ended; time limits; server tasks.

A run is created in one transaction with one instance per target. Each instance gets a *route*:
the name of the Task Server that serves its computer, or ``@ns`` for the NS's built-in task
service. Instances that can never run (a client task on a device) are born ``failed`` with the
reason "no agent". Each step of a run in flight is a ``Stage`` (``server.stages``) counting, per
route, what is still out; the roll-up (``server.rollup``) counts it down, and at zero the run
ends (``finish``). A sweep ends runs whose deadline (plus a grace for roll-up) has passed:
nothing stays ``running`` forever. Server jobs are driven by ``server.jobs.run_server_job``;
server tasks run here, once, through ``server.tasktypes``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import defaultdict
from typing import Any

from protocol.jobs import JobEvent, JobMachine, JobState, time_limit_reason
from protocol.messages import Event, Report
from protocol.states import InstanceState, RunState, is_terminal, run_outcome
from protocol.tasks import Kind
from runtime.runner import Outcome, ScriptRun
from server.interface import CoreParts
from server.jobs import SERVER_JOB, job_needs_agents, plan_instances, run_server_job
from server.metrics import NSMetrics
from server.routes import BUILTIN
from server.stages import ActiveRun, JobTimeUp, RouteCount, Stage, new_stage
from server.store import Change, NewInstance
from server.tasktypes import SERVER_RUNNERS, ServerContext

ROLLUP_GRACE_S = 10.0
"""How long after a deadline the sweep waits for results already on their way."""


async def _cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end, taking on none of its outcome (its exception is
    read, so never reported as lost); a cancellation of the waiting task itself (the NS
    stopping) still propagates, where ``suppress(BaseException)`` around ``await`` hid it."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()


class Runs(CoreParts):
    """Creating, stepping, ending and sweeping runs (a part of ``NotificationServer``)."""

    server_runs: dict[int, ScriptRun]
    """Scripts of server tasks running now, by instance id (so a stop can end them)."""
    metrics: NSMetrics

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
                await self.finish(run_id)

    async def start_run(
        self,
        definition: dict[str, Any],
        computers: list[dict[str, Any]],
        schedule: str | None = None,
    ) -> dict[str, Any]:
        """Create a run of a task or client job (``definition``) on ``computers`` and start it
        (``schedule``: the schedule that fired it, kept on the run)."""
        kind = definition["kind"]
        deadline = time.time() + float(definition["timeout_s"])
        if kind == SERVER_JOB:
            return await self._start_server_job(definition, computers, deadline, schedule)
        if kind == Kind.SERVER:
            instances = [NewInstance(None, "(server)", None)]
            no_agent: list[str] = []
        else:
            instances, no_agent = plan_instances(definition, computers)
        run_id = await self.db.create_run(
            definition, instances, deadline, targets=[c["id"] for c in computers], schedule=schedule
        )
        stage = new_stage(deadline, [i.route for i in instances if not is_terminal(i.status)])
        self.active[run_id] = ActiveRun(kind, str(definition.get("type", "")), {"": stage})
        self.log.info("run_started", run_id=run_id, task=definition["name"], targets=len(instances))
        if stage.remaining == 0:
            await self.finish(run_id)
        elif kind == Kind.SERVER:
            instance = (await self.db.instances(run_id))[0]
            self.spawn(self._run_server_task(run_id, instance["id"], definition))
        else:
            for route in sorted({i.route for i in instances if i.route is not None}):
                self.spawn(self.dispatch_route(route))
        return {"run_id": run_id, "targets": len(instances), "no_agent": no_agent}

    async def _start_server_job(
        self,
        definition: dict[str, Any],
        computers: list[dict[str, Any]],
        deadline: float,
        schedule: str | None = None,
    ) -> dict[str, Any]:
        no_agent = (
            sorted(c["name"] for c in computers if not c["has_agent"])
            if job_needs_agents(definition["job"])
            else []
        )
        run_id = await self.db.create_run(
            definition,
            [],
            deadline,
            targets=[c["id"] for c in computers],
            first_step=False,
            schedule=schedule,
        )
        active = ActiveRun(SERVER_JOB, deadline=deadline)
        self.active[run_id] = active
        self.log.info("job_started", run_id=run_id, job=definition["name"], targets=len(computers))
        active.runner = self._run_job(
            run_id, definition, [c["id"] for c in computers], None, computers=computers
        )
        return {"run_id": run_id, "targets": len(computers), "no_agent": no_agent}

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
            except JobTimeUp as up:
                await self.job_time_up(run_id, up.machine)
            except Exception as exc:
                self.log.exception("server_job_failed", run_id=run_id)
                reason = (
                    f"server job {definition.get('name')!r} (run {run_id}) failed on the NS: {exc}"
                )
                await self.db.write_log("error", reason, f"run {run_id}")
                await self.end_run(run_id, InstanceState.FAILED, reason)

        return self.spawn(guarded())

    async def open_step(
        self,
        run_id: int,
        step: str,
        task: dict[str, Any],
        instances: list[NewInstance],
        machine: dict[str, Any],
    ) -> Stage:
        """A server job enters a step: store it with the job's state, count it, dispatch it;
        :class:`JobTimeUp` (nothing stored) if the job's own time limit was reached."""
        if time.time() >= self.active[run_id].deadline:
            raise JobTimeUp(step, machine)
        deadline = time.time() + float(task["timeout_s"])
        await self.db.start_step(run_id, step, task, deadline, instances, machine)
        stage = new_stage(deadline, [i.route for i in instances if not is_terminal(i.status)])
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

    async def finish(self, run_id: int, status: RunState | None = None) -> None:
        """End a run: ``status`` if given (server jobs, stop), else from its instances."""
        active = self.active.pop(run_id, None)
        if status is None:
            rows = await self.db.instance_states(run_id)
            status = run_outcome([r["status"] for r in rows])
        # Step rows whose result never arrived (lost with a relay) must not read "running" forever.
        await self.db.end_instances(run_id, InstanceState.FAILED, "no result before the run ended")
        await self.db.finish_run(run_id, status)
        self.metrics.run_ended(str(status))
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
        self.metrics.instances_ended(str(state), sum(1 for r in rows if r["parent_id"] is None))
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
                by_route[r["route"]].append(r["wire"])  # the id relays know it by
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
                self.log.warning(
                    "cancel_failed",
                    run_id=run_id,
                    route=route,
                    error=str(exc) or type(exc).__name__,
                )
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
            await _cancelled(active.runner)
            run = await self.db.run(run_id)
            if run is not None and run["machine"] is not None:
                machine = JobMachine(run["definition"]["job"]["program"], run["machine"])
                if machine.state in (JobState.READY, JobState.WAITING):
                    machine.handle(JobEvent.STOP)
                    await self.db.save_machine(run_id, machine.snapshot())
        count = await self.end_instances(run_id, state, reason)
        if run_id in self.active:
            final = RunState.STOPPED if state == InstanceState.STOPPED else RunState.FAILED
            await self.finish(run_id, final)
        return count

    async def job_time_up(self, run_id: int, waiting: dict[str, Any] | None = None) -> None:
        """A server job reached its own time limit (the sweep; or ``open_step`` refused its next
        step, whose machine is ``waiting``). The NS decides here, with no grace: results that come
        later are late. Its runner stops, so no further step opens; the open step's unfinished
        instances end ``timed_out`` with a reason naming the limit and the step (their scripts
        are killed downstream, as for a stop, and their late results ignored: terminal is
        final); the job's state becomes ``timed_out``; the run ends ``failed``."""
        active = self.active.get(run_id)
        if active is None:
            return
        runner = active.runner
        if runner is not None and runner is not asyncio.current_task():
            await _cancelled(runner)
        run = await self.db.run(run_id)
        if run is None or run_id not in self.active:
            return  # the job ended by itself just before
        definition = run["definition"]
        machine = JobMachine(definition["job"]["program"], waiting or run["machine"])
        current, limit_s = machine.current, float(definition["timeout_s"])
        reason = (
            time_limit_reason(limit_s, current.step, started=waiting is None)
            if current is not None
            else f"the job's time limit of {limit_s:g} s was reached"
        )
        if machine.state in (JobState.READY, JobState.WAITING):
            machine.handle(JobEvent.TIME_UP, {"reason": reason})
            await self.db.save_machine(run_id, machine.snapshot())
        self.log.info("job_time_up", run_id=run_id, reason=reason)
        await self.end_run(run_id, InstanceState.TIMED_OUT, reason)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for run_id, active in list(self.active.items()):
                if active.kind == SERVER_JOB and now >= active.deadline:
                    try:
                        await self.job_time_up(run_id)
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
                            await self.finish(run_id)
                    except Exception:
                        self.log.exception("sweep_failed", run_id=run_id)

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
                self.log.exception(
                    "server_task_failed",
                    run_id=run_id,
                    instance_id=instance_id,
                    type=definition["type"],
                )
                outcome = Outcome.failed(f"the server task failed: {exc}", started_at=started)
        await self.on_reports([outcome.report(instance_id)])
