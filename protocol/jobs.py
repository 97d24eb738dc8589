"""Jobs: documents, the rules checked when one is saved, compilation, and the job state machine.

A job document (TOML or JSON)::

    name = "install-with-fix"
    type = "client-job"            # or "server-job"
    [[steps]]
    id = "install"                 # optional; defaults to the task's name
    task = "install-app"           # a saved task or job (``job = ...`` is accepted too)
    timeout_s = 120                # optional, overrides the task's
    on_failure = "stop"            # or "continue"
    [[steps]]
    if = "install.status == 'failed'"
    then = [ { task = "registry-fix" }, { id = "install-again", task = "install-app" } ]
    else = [ { task = "report-ok" } ]

Theory of operation
-------------------
:func:`validate_job` checks a document against the saved tasks and jobs (through a
``lookup`` function, so this module does no I/O) and lists every problem by field path.
:func:`compile_job` turns a saved job into a flat *program* for the current definitions:
``run`` instructions (one step, its task resolved), ``branch`` (evaluate a condition, jump
to the ``else`` part when false) and ``jump``. Nested jobs of the same level are inlined,
their step ids qualified as ``outer/inner``; a client job inside a server job stays one
``run`` step whose task is the compiled client job (every computer runs it through).

:class:`JobMachine` runs a program. It is used by the NS for server jobs (a step's result
is the roll-up across computers) and by agents and task servers for client jobs (a step's
result is one computer's). Its whole state is plain data (:meth:`JobMachine.snapshot`), so
the NS and agents store it after every transition and resume after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocol.conditions import ConditionError, evaluate, parse_condition
from protocol.errors import Problem, TaskfleetError, ValidationError
from protocol.hierflags import check_flags, flag_keys
from protocol.tasks import MAX_TIMEOUT_S, Kind

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
_STEP_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


class JobType(StrEnum):
    """The two kinds of job (see DOMAIN.md, "Two kinds of job")."""

    SERVER = "server-job"
    CLIENT = "client-job"


CLIENT_FIELDS = frozenset({"status", "return_code", "output"})
SERVER_FIELDS = CLIENT_FIELDS | {"succeeded", "failed", "total"}

Lookup = Callable[[str], tuple[str, dict[str, Any]] | None]
"""``lookup(name)`` → ``("task", task definition)``, ``("job", job definition)`` or None."""


def is_job_document(doc: Any) -> bool:
    """True when a parsed document is a job (its ``type`` ends in ``-job``)."""
    return isinstance(doc, dict) and doc.get("type") in (JobType.SERVER, JobType.CLIENT)


# -- validation ---------------------------------------------------------------------------


@dataclass
class _Walk:
    job_type: JobType
    lookup: Lookup
    problems: list[Problem] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # step id → path where defined
    task_kinds: list[tuple[str, str]] = field(default_factory=list)  # (path, kind) after expansion
    all_ids: set[str] = field(default_factory=set)  # every step id in the document


def _check_steps(w: _Walk, steps: Any, path: str, available: set[str]) -> set[str]:
    """Check a list of steps; return the ids that may have run after it."""
    if not isinstance(steps, list) or not steps:
        w.problems.append(Problem(path, "must be a non-empty list of steps"))
        return set()
    seen = set(available)
    for i, step in enumerate(steps):
        where = f"{path}[{i}]"
        if not isinstance(step, dict):
            w.problems.append(Problem(where, "must be a table"))
            continue
        if "if" in step:
            seen |= _check_condition_step(w, step, where, seen)
        else:
            sid = _check_task_step(w, step, where)
            if sid is not None:
                seen.add(sid)
    return seen


def _check_condition_step(
    w: _Walk, step: dict[str, Any], where: str, available: set[str]
) -> set[str]:
    for key in step:
        if key not in ("if", "then", "else"):
            w.problems.append(
                Problem(
                    f"{where}.{key}", "unknown field in a condition step (known: if, then, else)"
                )
            )
    text = step["if"]
    fields = SERVER_FIELDS if w.job_type is JobType.SERVER else CLIENT_FIELDS
    if not isinstance(text, str):
        w.problems.append(Problem(f"{where}.if", "must be a string"))
    else:
        try:
            cond = parse_condition(text)
        except ConditionError as exc:
            w.problems.append(Problem(f"{where}.if", str(exc)))
        else:
            for sid, fld in sorted(cond.references()):
                if sid not in available:
                    if sid in w.ids:  # walked already, yet not before: a sibling branch
                        why = "is in another branch, which does not lead here"
                    elif sid in w.all_ids:
                        why = "is defined later"
                    else:
                        why = "does not exist"
                    w.problems.append(
                        Problem(
                            f"{where}.if",
                            f"refers to step {sid!r}, which cannot have run before this condition ({sid!r} {why}); "
                            "a condition may only test steps that come before it",
                        )
                    )
                if fld not in fields:
                    w.problems.append(
                        Problem(
                            f"{where}.if",
                            f"unknown field {fld!r} of step {sid!r}; known: {', '.join(sorted(fields))}",
                        )
                    )
    if "then" not in step and "else" not in step:
        w.problems.append(Problem(where, "a condition step needs `then`, `else` or both"))
    ran = set(available)
    for branch in ("then", "else"):
        if branch in step:
            ran |= _check_steps(w, step[branch], f"{where}.{branch}", available)
    return ran


def _check_task_step(w: _Walk, step: dict[str, Any], where: str) -> str | None:
    for key in step:
        if key not in ("id", "task", "job", "timeout_s", "on_failure"):
            w.problems.append(
                Problem(
                    f"{where}.{key}",
                    "unknown field in a step (known: id, task, job, timeout_s, on_failure)",
                )
            )
    keys = [k for k in ("task", "job") if k in step]
    if len(keys) != 1:
        w.problems.append(
            Problem(
                where,
                "a step names exactly one `task` (a task or a job) or `job`, or is a condition (`if`)",
            )
        )
        return None
    key = keys[0]
    ref = step[key]
    if not isinstance(ref, str) or not ref:
        w.problems.append(Problem(f"{where}.{key}", "must be the name of a saved task or job"))
        return None
    sid = step.get("id", ref)
    if "id" in step and (not isinstance(sid, str) or not _STEP_ID.match(sid)):
        w.problems.append(
            Problem(
                f"{where}.id",
                "must start with a letter or '_' and hold letters, digits, '_' or '-' (at most 64)",
            )
        )
        sid = None
    elif sid in w.ids:
        w.problems.append(
            Problem(
                f"{where}.id",
                f"duplicate step id {sid!r} (first at {w.ids[sid]}); give each step a unique `id`",
            )
        )
    else:
        w.ids[sid] = where
    timeout = step.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or not 1 <= timeout <= MAX_TIMEOUT_S
    ):
        w.problems.append(
            Problem(f"{where}.timeout_s", f"must be an integer from 1 to {MAX_TIMEOUT_S}")
        )
    if step.get("on_failure", "stop") not in ("stop", "continue"):
        w.problems.append(Problem(f"{where}.on_failure", 'must be "stop" or "continue"'))
    found = w.lookup(ref)
    if found is None:
        w.problems.append(Problem(f"{where}.{key}", f"no task or job named {ref!r}; save it first"))
    elif key == "job" and found[0] != "job":
        w.problems.append(
            Problem(f"{where}.job", f"{ref!r} is a task, not a job; use `task = {ref!r}`")
        )
    else:
        _check_reference(w, found, ref, f"{where}.{key}", [])
    return str(sid) if sid is not None else None


def _check_reference(
    w: _Walk, found: tuple[str, dict[str, Any]], ref: str, where: str, chain: list[str]
) -> None:
    what, definition = found
    if what == "task":
        kind = str(definition["kind"])
        if w.job_type is JobType.CLIENT and kind == Kind.SERVER:
            w.problems.append(
                Problem(
                    where,
                    f"a client job cannot hold server task {ref!r} (rule: a client job holds only client and "
                    "task-server tasks, because it runs on each computer)",
                )
            )
        w.task_kinds.append((where, kind))
        return
    sub_type = definition.get("type")
    if ref in chain:
        w.problems.append(Problem(where, "jobs form a cycle: " + " → ".join([*chain, ref])))
        return
    if w.job_type is JobType.CLIENT and sub_type == JobType.SERVER:
        w.problems.append(
            Problem(
                where,
                f"a client job cannot hold server job {ref!r} (rule: server jobs are sequenced on the NS)",
            )
        )
        return
    if w.job_type is JobType.SERVER and sub_type == JobType.CLIENT:
        w.task_kinds.append((where, Kind.CLIENT))  # one barrier step: counts as a client step
    for name in referenced_names(definition.get("steps", [])):
        sub = w.lookup(name)
        if sub is None:
            w.problems.append(
                Problem(where, f"job {ref!r} refers to {name!r}, which no longer exists")
            )
            continue
        if sub_type == JobType.CLIENT and w.job_type is JobType.SERVER:
            # Inside a client job: only cycles matter here; its own rules were checked when saved.
            if sub[0] == "job":
                _check_reference(
                    _Walk(JobType.CLIENT, w.lookup, w.problems), sub, name, where, [*chain, ref]
                )
            continue
        _check_reference(w, sub, name, where, [*chain, ref])


def referenced_names(steps: Any) -> list[str]:
    out: list[str] = []
    stack: list[Any] = [steps]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            if "if" in item:
                stack.extend([item.get("else", []), item.get("then", [])])
            else:
                ref = item.get("task", item.get("job"))
                if isinstance(ref, str):
                    out.append(ref)
    return out


def validate_job(doc: Any, lookup: Lookup) -> dict[str, Any]:
    """Check a job document against the saved tasks and jobs; return its stored form.

    Raises :class:`ValidationError` naming the rule and the offending steps for each problem.
    """
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        raise ValidationError("job document", [Problem("(document)", "must be a table")])
    for key in doc:
        if key not in ("name", "type", "description", "steps", "timeout_s", *flag_keys(True)):
            problems.append(
                Problem(
                    str(key),
                    "unknown field (known: description, name, remote_start, replicate, steps,"
                    " timeout_s, type)",
                )
            )
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(
            Problem("name", "must be 1-128 characters: letters, digits, space, '.', '_', '-'")
        )
    try:
        job_type = JobType(str(doc.get("type")))
    except ValueError:
        problems.append(Problem("type", 'must be "server-job" or "client-job"'))
        raise ValidationError(f"job {name!r}", problems) from None
    timeout = doc.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or not 1 <= timeout <= MAX_TIMEOUT_S
    ):
        problems.append(Problem("timeout_s", f"must be an integer from 1 to {MAX_TIMEOUT_S}"))
    if not isinstance(doc.get("description", ""), str):
        problems.append(Problem("description", "must be a string"))
    flags = check_flags(doc, problems, startable=True)

    def guarded(ref: str) -> tuple[str, dict[str, Any]] | None:
        if ref == name:  # the job refers to itself (or is being replaced by one that does)
            return ("job", doc)
        return lookup(ref)

    w = _Walk(job_type, guarded, problems, all_ids=set(_referenced_ids({"then": doc.get("steps")})))
    _check_steps(w, doc.get("steps"), "steps", set())
    if isinstance(name, str) and name in referenced_names(doc.get("steps", [])):
        problems.append(Problem("steps", f"job {name!r} refers to itself: jobs form a cycle"))
    if (
        job_type is JobType.SERVER
        and w.task_kinds
        and all(k == Kind.CLIENT for _, k in w.task_kinds)
    ):
        where = ", ".join(p for p, _ in w.task_kinds)
        problems.append(
            Problem(
                "steps",
                "a server job must hold at least one server or task-server task, but every task step "
                f"(after expanding nested jobs) is a client task: {where}; save it as a client job instead",
            )
        )
    if problems:
        raise ValidationError(f"job {name!r}", _dedupe(problems))
    out = {
        "name": name,
        "type": str(job_type),
        "description": doc.get("description", ""),
        "steps": doc["steps"],
    }
    if timeout is not None:
        out["timeout_s"] = timeout
    return {**out, **flags}


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


# -- compilation --------------------------------------------------------------------------


class JobCompileError(TaskfleetError):
    """A saved job can no longer be compiled (a task it names was deleted or changed kind)."""


def compile_job(job: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
    """Compile a saved job into a program for the current task definitions.

    The result is plain data: ``{"name", "type", "timeout_s", "program": [...]}``. Each
    instruction is a dict with ``op`` ``run`` (``step``, ``task``, ``kind``, ``on_failure``,
    ``tested_next``), ``branch`` (``condition``, ``scope``, ``else_pc``) or ``jump`` (``pc``).
    """
    job_type = JobType(job["type"])
    program: list[dict[str, Any]] = []
    _emit(program, job["steps"], "", {}, job_type, lookup, [str(job["name"])])
    for pc, ins in enumerate(program):
        if ins["op"] == "run":
            after = pc + 1
            while after < len(program) and program[after]["op"] == "jump":
                after = int(program[after]["pc"])  # the end of a branch: what runs next
            nxt = program[after] if after < len(program) else None
            ins["tested_next"] = bool(
                nxt is not None and nxt["op"] == "branch" and ins["step"] in nxt["tests"]
            )
    total = sum(int(i["task"]["timeout_s"]) for i in program if i["op"] == "run")
    return {
        "name": job["name"],
        "type": str(job_type),
        "timeout_s": int(job.get("timeout_s") or total or 1),
        "program": program,
    }


def _emit(
    program: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    prefix: str,
    scope: dict[str, str],
    job_type: JobType,
    lookup: Lookup,
    chain: list[str],
) -> None:
    scope = dict(scope)
    for step in steps:
        if "if" in step:
            tests = sorted(
                {scope[s] for s, _ in parse_condition(step["if"]).references() if s in scope}
            )
            branch = {
                "op": "branch",
                "condition": step["if"],
                "scope": dict(scope),
                "tests": tests,
                "else_pc": -1,
            }
            program.append(branch)
            _emit(program, step.get("then", []), prefix, scope, job_type, lookup, chain)
            jump = {"op": "jump", "pc": -1}
            program.append(jump)
            branch["else_pc"] = len(program)
            _emit(program, step.get("else", []), prefix, scope, job_type, lookup, chain)
            jump["pc"] = len(program)
            for inner in _referenced_ids(step):
                scope[inner] = prefix + inner
            continue
        ref = str(step.get("task", step.get("job")))
        sid = str(step.get("id", ref))
        qualified = prefix + sid
        scope[sid] = qualified
        found = lookup(ref)
        if found is None:
            raise JobCompileError(
                f"job {chain[0]!r}: step {qualified!r} names {ref!r}, which no longer exists"
            )
        if ref in chain:
            raise JobCompileError("jobs form a cycle: " + " → ".join([*chain, ref]))
        what, definition = found
        on_failure = str(step.get("on_failure", "stop"))
        if what == "task":
            resolved = dict(definition)
            if step.get("timeout_s"):
                resolved["timeout_s"] = int(step["timeout_s"])
            program.append(
                {
                    "op": "run",
                    "step": qualified,
                    "task": resolved,
                    "kind": str(resolved["kind"]),
                    "on_failure": on_failure,
                }
            )
        elif definition["type"] == job_type:
            _emit(
                program, definition["steps"], qualified + "/", {}, job_type, lookup, [*chain, ref]
            )
        else:  # a client job inside a server job: one barrier step
            sub = compile_job(definition, lookup)
            if step.get("timeout_s"):
                sub["timeout_s"] = int(step["timeout_s"])
            task = {
                "name": ref,
                "type": "client-job",
                "kind": Kind.CLIENT,
                "timeout_s": sub["timeout_s"],
                "params": {},
                "job": sub,
            }
            program.append(
                {
                    "op": "run",
                    "step": qualified,
                    "task": task,
                    "kind": "client-job",
                    "on_failure": on_failure,
                }
            )


def _referenced_ids(step: dict[str, Any]) -> list[str]:
    out = []
    stack: list[Any] = [step.get("then", []), step.get("else", [])]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if "if" in item:
                stack.extend([item.get("then", []), item.get("else", [])])
            else:
                out.append(str(item.get("id", item.get("task", item.get("job")))))
    return out


def only_taskserver_steps(program: list[dict[str, Any]]) -> bool:
    """True when every step of a (client job) program runs on a task server: a device can run it."""
    for ins in program:
        if ins["op"] != "run":
            continue
        if ins["kind"] == "client-job":
            if not only_taskserver_steps(ins["task"]["job"]["program"]):
                return False
        elif ins["kind"] != Kind.TASKSERVER:
            return False
    return True


# -- the state machine --------------------------------------------------------------------


class JobState(StrEnum):
    """Where one job execution stands (on one computer for client jobs, on the NS for server jobs)."""

    READY = "ready"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    TIMED_OUT = "timed_out"


class JobEvent(StrEnum):
    """What can happen to a job execution."""

    START = "start"
    STEP_ENDED = "step_ended"
    STOP = "stop"
    TIME_UP = "time_up"
    """The job's own time limit was reached (``time_limit_reason``); its result, if any, is that
    of the step it cut short."""


class JobStateError(TaskfleetError):
    """An event the transition table does not allow in the current state."""


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.TIMED_OUT})


def time_limit_reason(limit_s: float, step: str, *, started: bool = True) -> str:
    """Why a job ended ``timed_out``: its own limit, and the step it was in (``started``) or the
    step it did not start. One wording for agents, relays and the NS."""
    where = f"during step {step!r}" if started else f"before step {step!r} could start"
    return f"the job's time limit of {limit_s:g} s was reached {where}"


@dataclass(frozen=True, slots=True)
class RunStep:
    """Action: run this step (the machine now waits for STEP_ENDED)."""

    pc: int
    step: str
    task: dict[str, Any]
    kind: str


@dataclass(frozen=True, slots=True)
class JobEnded:
    """Action: the job reached a final state."""

    state: JobState
    reason: str = ""


Action = RunStep | JobEnded

SKIPPED = {"status": "skipped", "return_code": None, "output": ""}


class JobMachine:
    """Runs a compiled program. ``handle(event)`` returns the actions to carry out.

    Transition table (anything else raises :class:`JobStateError`):

    ========  ===========  =============================================
    state     event        what happens
    ========  ===========  =============================================
    READY     START        advance to the first step (→ WAITING) or end
    WAITING   STEP_ENDED   record the result; fail, or advance
    READY     STOP         → STOPPED
    WAITING   STOP         → STOPPED
    READY     TIME_UP      → TIMED_OUT
    WAITING   TIME_UP      → TIMED_OUT (the step's result, if given, is recorded)
    ========  ===========  =============================================

    "Advance" evaluates conditions and jumps until a ``run`` instruction (→ WAITING,
    action :class:`RunStep`) or the end (→ SUCCEEDED, action :class:`JobEnded`). A step that
    did not succeed fails the job (→ FAILED) unless it is marked ``on_failure = "continue"``
    or the instruction right after it is a condition that tests it.
    """

    def __init__(self, program: list[dict[str, Any]], snapshot: Mapping[str, Any] | None = None):
        self.program = program
        snap = snapshot or {}
        self.state = JobState(snap.get("state", JobState.READY))
        self.pc = int(snap.get("pc", 0))
        self.results: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in snap.get("results", {}).items()
        }
        self.reason = str(snap.get("reason", ""))

    _TABLE: dict[tuple[JobState, JobEvent], str] = {
        (JobState.READY, JobEvent.START): "_start",
        (JobState.WAITING, JobEvent.STEP_ENDED): "_step_ended",
        (JobState.READY, JobEvent.STOP): "_stop",
        (JobState.WAITING, JobEvent.STOP): "_stop",
        (JobState.READY, JobEvent.TIME_UP): "_time_up",
        (JobState.WAITING, JobEvent.TIME_UP): "_time_up",
    }

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data (store it; pass it back to resume)."""
        return {
            "state": str(self.state),
            "pc": self.pc,
            "results": {k: dict(v) for k, v in self.results.items()},
            "reason": self.reason,
        }

    @property
    def current(self) -> RunStep | None:
        """The step being waited for, if any (to re-issue it after a restart)."""
        if self.state is not JobState.WAITING:
            return None
        ins = self.program[self.pc]
        return RunStep(self.pc, ins["step"], ins["task"], ins["kind"])

    def handle(self, event: JobEvent, result: Mapping[str, Any] | None = None) -> list[Action]:
        """Apply ``event`` (with a step ``result`` for STEP_ENDED); return the actions."""
        name = self._TABLE.get((self.state, event))
        if name is None:
            raise JobStateError(f"event {event} is not allowed in state {self.state}")
        actions: list[Action] = getattr(self, name)(result or {})
        return actions

    def _start(self, result: Mapping[str, Any]) -> list[Action]:
        return self._advance()

    def _stop(self, result: Mapping[str, Any]) -> list[Action]:
        self.state = JobState.STOPPED
        self.reason = "stopped by an administrator"
        return [JobEnded(self.state, self.reason)]

    def _time_up(self, result: Mapping[str, Any]) -> list[Action]:
        """``result``: ``reason`` (``time_limit_reason``) and, when the limit cut a step short,
        that step's ``result``."""
        if self.state is JobState.WAITING and result.get("result") is not None:
            self.results[self.program[self.pc]["step"]] = dict(result["result"])
        self.state = JobState.TIMED_OUT
        self.reason = str(result.get("reason") or "the job's time limit was reached")
        return [JobEnded(self.state, self.reason)]

    def _step_ended(self, result: Mapping[str, Any]) -> list[Action]:
        ins = self.program[self.pc]
        self.results[ins["step"]] = dict(result)
        status = result.get("status")
        if status != "succeeded" and ins["on_failure"] == "stop" and not ins.get("tested_next"):
            self.state = JobState.FAILED
            self.reason = f"step {ins['step']!r} ended {status}"
            return [JobEnded(self.state, self.reason)]
        self.pc += 1
        return self._advance()

    def _advance(self) -> list[Action]:
        while self.pc < len(self.program):
            ins = self.program[self.pc]
            op = ins["op"]
            if op == "run":
                self.state = JobState.WAITING
                return [RunStep(self.pc, ins["step"], ins["task"], ins["kind"])]
            if op == "jump":
                self.pc = int(ins["pc"])
            else:
                values = {local: self.results.get(q, SKIPPED) for local, q in ins["scope"].items()}
                if evaluate(parse_condition(ins["condition"]), values):
                    self.pc += 1
                else:
                    self.pc = int(ins["else_pc"])
        self.state = JobState.SUCCEEDED
        return [JobEnded(self.state)]


def step_values(statuses: list[str], single: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A server-job step's rolled-up result from its instances' states (for conditions)."""
    succeeded = sum(1 for s in statuses if s == "succeeded")
    values: dict[str, Any] = {
        "status": "succeeded" if statuses and succeeded == len(statuses) else "failed",
        "succeeded": succeeded,
        "failed": len(statuses) - succeeded,
        "total": len(statuses),
        "return_code": None,
        "output": "",
    }
    if single is not None:
        values["return_code"] = single.get("return_code")
        values["output"] = single.get("output", "")
    return values
