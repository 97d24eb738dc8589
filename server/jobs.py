"""Server jobs, sequenced on the NS, and the planning of a step's instances.

``run_server_job`` drives a :class:`protocol.jobs.JobMachine` for one run: each ``run`` action
opens a step (its instances and the job's new state in one transaction), waits at the
barrier until every target finished, failed or timed out, rolls the step up into the values
conditions see, and feeds them back to the machine. The machine's state is stored at every
step, so after an NS restart the job resumes in the step it was in: the step's instances
already exist, so nothing is dispatched twice, and results that arrive are counted.
"""

from __future__ import annotations

from typing import Any

from protocol.jobs import (
    JobEnded,
    JobEvent,
    JobMachine,
    JobState,
    RunStep,
    only_taskserver_steps,
    step_values,
)
from protocol.states import InstanceState, RunState
from protocol.tasks import Kind
from server.interface import NS
from server.routes import BUILTIN
from server.store import NewInstance

SERVER_JOB = "server-job"
"""The ``kind`` stored for server-job runs (tasks use their task kind)."""


def plan_instances(
    task: dict[str, Any], computers: list[dict[str, Any]]
) -> tuple[list[NewInstance], list[str]]:
    """One instance per computer for a client, task-server or client-job step.

    A client step on a computer with no agent cannot run: its instance is born ``failed``
    with the reason "no agent". A client job made only of task-server steps can run on such
    a device: its TS drives the job for it.
    """
    kind = task["kind"]
    device_ok = kind == Kind.TASKSERVER or (
        task.get("type") == "client-job" and only_taskserver_steps(task["job"]["program"])
    )
    instances: list[NewInstance] = []
    no_agent: list[str] = []
    for c in computers:
        route = c["taskserver"] or BUILTIN
        if not c["has_agent"] and not device_ok:
            no_agent.append(c["name"])
            instances.append(
                NewInstance(c["id"], c["name"], None, InstanceState.FAILED, "no agent")
            )
        else:
            instances.append(NewInstance(c["id"], c["name"], route))
    return instances, no_agent


def no_agent_targets(definition: dict[str, Any], computers: list[dict[str, Any]]) -> list[str]:
    """The computers of a run that cannot do their part for want of an agent."""
    if definition["kind"] == SERVER_JOB:
        needs = job_needs_agents(definition["job"])
        return sorted(c["name"] for c in computers if needs and not c["has_agent"])
    if definition["kind"] == Kind.SERVER:
        return []
    return plan_instances(definition, computers)[1]


def job_needs_agents(job: dict[str, Any]) -> bool:
    """True when a server job has a step that a computer without an agent cannot run."""
    for ins in job["program"]:
        if ins["op"] != "run":
            continue
        if ins["kind"] == Kind.CLIENT:
            return True
        if ins["kind"] == "client-job" and not only_taskserver_steps(ins["task"]["job"]["program"]):
            return True
    return False


async def run_server_job(
    ns: NS,
    run_id: int,
    definition: dict[str, Any],
    targets: list[int],
    snapshot: dict[str, Any] | None,
    *,
    computers: list[dict[str, Any]] | None = None,
) -> None:
    """Drive one server job to its end (or resume it after a restart).

    ``computers``: the targets' rows as ``run.start`` just read them (id, name, has_agent,
    taskserver), for planning the first step without reading ten thousand rows again; later
    steps read them afresh (a computer may have moved to another TS meanwhile)."""
    machine = JobMachine(definition["job"]["program"], snapshot)
    log = ns.log.bind(run_id=run_id, job=definition["name"])
    resumed = False
    if machine.state is JobState.READY:
        actions = machine.handle(JobEvent.START)
    elif machine.state is JobState.WAITING:
        current = machine.current
        assert current is not None
        actions = [current]
        resumed = True
        log.info("job_resumed", step=current.step)
    else:
        actions = [JobEnded(machine.state, machine.reason)]
    while True:
        action = actions[0]
        if isinstance(action, JobEnded):
            await ns.db.save_machine(run_id, machine.snapshot())
            status = {
                JobState.SUCCEEDED: RunState.SUCCEEDED,
                JobState.STOPPED: RunState.STOPPED,
            }.get(action.state, RunState.FAILED)
            log.info("job_ended", status=str(status), reason=action.reason)
            await ns.finish(run_id, status)
            return
        assert isinstance(action, RunStep)
        result = await _run_step(ns, run_id, machine, action, targets, resumed, computers)
        resumed, computers = False, None
        actions = machine.handle(JobEvent.STEP_ENDED, result)
        if not isinstance(actions[0], RunStep):
            await ns.db.save_machine(run_id, machine.snapshot())


async def _run_step(
    ns: NS,
    run_id: int,
    machine: JobMachine,
    action: RunStep,
    targets: list[int],
    resumed: bool,
    computers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one step across every target (the barrier) and return its rolled-up values."""
    task = action.task
    active = ns.active[run_id]
    if resumed:
        stage = active.stages.get(action.step)
        if stage is None:
            existing = await ns.db.instance_states(run_id, action.step)
            if (
                not existing
            ):  # the job's state was stored but not its step: cannot happen, but be safe
                resumed = False
        elif task["kind"] == Kind.SERVER:
            # A server script cannot survive the NS that ran it.
            await ns.end_instances(
                run_id, InstanceState.FAILED, "the server restarted while this ran", action.step
            )
        else:
            ns.start_stage(run_id, action.step, task)
            await stage.barrier()
    if not resumed:
        if task["kind"] == Kind.SERVER:
            instances = [NewInstance(None, "(server)", None)]
        else:
            if computers is None:
                computers = await ns.db.computers_by_id(targets)
            instances, _ = plan_instances(task, computers)
        stage = await ns.open_step(run_id, action.step, task, instances, machine.snapshot())
        await stage.barrier()
    if task["kind"] == Kind.SERVER:
        rows = await ns.db.instance_states(run_id, action.step)
        return step_values([r["status"] for r in rows], rows[0] if rows else None)
    statuses: list[str] = []
    for status, n in (await ns.db.instance_counts(run_id, action.step)).items():
        statuses += [status] * n
    return step_values(statuses)
