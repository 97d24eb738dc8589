"""Jobs: the rules checked when a job is saved, compilation to a program, and the JobMachine."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from protocol.errors import Problem, ValidationError
from protocol.jobs import (
    FINAL,
    SKIPPED,
    JobCompileError,
    JobEnded,
    JobEvent,
    JobMachine,
    JobState,
    JobStateError,
    RunStep,
    compile_job,
    only_taskserver_steps,
    step_values,
    validate_job,
)
from protocol.tasks import MAX_TIMEOUT_S, Kind

Entry = tuple[str, dict[str, Any]]

RULE_CONDITION_ORDER = "a condition may only test steps that come before it"
RULE_SERVER_JOB = "a server job must hold at least one server or task-server task"


def task(name: str, kind: str = "client", timeout_s: int = 60) -> Entry:
    """A catalog entry for a saved task."""
    types = {
        "client": "run-script",
        "server": "write-server-log",
        "taskserver": "run-script-on-taskserver",
    }
    return (
        "task",
        {"name": name, "type": types[kind], "kind": kind, "timeout_s": timeout_s, "params": {}},
    )


def job(name: str, job_type: str, steps: list[dict[str, Any]], **extra: Any) -> Entry:
    """A catalog entry for a saved job."""
    return ("job", {"name": name, "type": job_type, "description": "", "steps": steps, **extra})


def make_catalog() -> dict[str, Entry]:
    """A fresh catalog (tests may change their own copy)."""
    return dict(
        [
            ("install-app", task("install-app", timeout_s=120)),
            ("registry-fix", task("registry-fix", timeout_s=30)),
            ("report-ok", task("report-ok", timeout_s=10)),
            ("report-failure", task("report-failure", timeout_s=10)),
            ("a", task("a", timeout_s=10)),
            ("b", task("b", timeout_s=20)),
            ("c", task("c", timeout_s=40)),
            ("srv-log", task("srv-log", "server", timeout_s=5)),
            ("srv-fix", task("srv-fix", "server", timeout_s=7)),
            ("ts-scan", task("ts-scan", "taskserver", timeout_s=50)),
            ("ts-copy", task("ts-copy", "taskserver", timeout_s=25)),
            ("client-sub", job("client-sub", "client-job", [{"task": "a"}, {"task": "b"}])),
            (
                "client-mid",
                job("client-mid", "client-job", [{"task": "c"}, {"task": "client-sub"}]),
            ),
            (
                "client-cond",
                job(
                    "client-cond",
                    "client-job",
                    [{"task": "a"}, {"if": "a.status == 'failed'", "then": [{"task": "b"}]}],
                ),
            ),
            ("ts-only", job("ts-only", "client-job", [{"task": "ts-scan"}, {"task": "ts-copy"}])),
            ("server-sub", job("server-sub", "server-job", [{"task": "srv-log"}, {"task": "a"}])),
        ]
    )


CATALOG = make_catalog()

INSTALL_WITH_FIX: dict[str, Any] = {
    "name": "install-with-fix",
    "type": "client-job",
    "steps": [
        {"id": "install", "task": "install-app"},
        {
            "if": "install.status == 'failed'",
            "then": [{"task": "registry-fix"}, {"id": "install-again", "task": "install-app"}],
            "else": [{"task": "report-ok"}],
        },
    ],
}


def doc(job_type: str, steps: Any, name: str = "j", **extra: Any) -> dict[str, Any]:
    """A job document as an administrator would write it."""
    return {"name": name, "type": job_type, "steps": steps, **extra}


def problems_of(document: dict[str, Any], catalog: dict[str, Entry] | None = None) -> list[Problem]:
    """The problems validate_job lists for a document it must refuse."""
    with pytest.raises(ValidationError) as info:
        validate_job(document, (catalog if catalog is not None else CATALOG).get)
    assert info.value.problems, "a refusal lists at least one problem"
    return info.value.problems


def only_problem(document: dict[str, Any], catalog: dict[str, Entry] | None = None) -> Problem:
    """The single problem listed for a document with exactly one thing wrong."""
    problems = problems_of(document, catalog)
    assert len(problems) == 1, problems
    return problems[0]


def compiled(document: dict[str, Any], catalog: dict[str, Entry] | None = None) -> dict[str, Any]:
    """Validate then compile, as the NS does when a job is saved and then run."""
    lookup = (catalog if catalog is not None else CATALOG).get
    return compile_job(validate_job(document, lookup), lookup)


def runs(program: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``run`` instructions of a program, in order."""
    return [ins for ins in program if ins["op"] == "run"]


def result(status: str, return_code: int | None = 0, output: str = "") -> dict[str, Any]:
    """One computer's result for a step."""
    return {"status": status, "return_code": return_code, "output": output}


OK = result("succeeded")
FAIL = result("failed", 1, "boom")


def drive(machine: JobMachine, outcomes: dict[str, dict[str, Any]]) -> tuple[list[str], JobEnded]:
    """Start ``machine`` and answer each step with ``outcomes[step]`` (default: succeeded).

    Returns the steps run, in order, and the final action.
    """
    ran: list[str] = []
    actions = machine.handle(JobEvent.START)
    while True:
        assert len(actions) == 1
        action = actions[0]
        if isinstance(action, JobEnded):
            return ran, action
        ran.append(action.step)
        assert len(ran) < 100, "the machine loops"
        actions = machine.handle(JobEvent.STEP_ENDED, outcomes.get(action.step, OK))


def machine_for(document: dict[str, Any], catalog: dict[str, Entry] | None = None) -> JobMachine:
    """A fresh JobMachine for a validated and compiled job document."""
    return JobMachine(compiled(document, catalog)["program"])


# --- validation: refusals --------------------------------------------------------------------


def test_server_job_of_only_client_tasks_is_refused() -> None:
    """A server job whose task steps are all client tasks is refused, naming the rule and each step."""
    p = only_problem(doc("server-job", [{"task": "a"}, {"task": "b"}]))
    assert p.path == "steps"
    assert RULE_SERVER_JOB in p.message
    assert "every task step (after expanding nested jobs) is a client task" in p.message
    assert "steps[0].task" in p.message and "steps[1].task" in p.message
    assert "save it as a client job instead" in p.message


def test_server_job_of_only_client_tasks_counts_branches() -> None:
    """Client tasks inside a condition's branches count too: still only client tasks, refused."""
    steps = [
        {"task": "a"},
        {"if": "a.status == 'failed'", "then": [{"task": "b"}], "else": [{"task": "c"}]},
    ]
    p = only_problem(doc("server-job", steps))
    assert RULE_SERVER_JOB in p.message
    for where in ("steps[0].task", "steps[1].then[0].task", "steps[1].else[0].task"):
        assert where in p.message


def test_server_job_whose_only_step_is_a_client_job_is_refused() -> None:
    """A server job holding only a nested client job is only client work: refused."""
    p = only_problem(doc("server-job", [{"task": "client-sub"}]))
    assert p.path == "steps"
    assert RULE_SERVER_JOB in p.message
    assert "steps[0].task" in p.message


def test_server_job_of_only_client_tasks_after_expanding_nested_server_job() -> None:
    """Nested server jobs are expanded: if all their task steps are client tasks, refused."""
    catalog = make_catalog()
    catalog["server-clients"] = job("server-clients", "server-job", [{"task": "a"}])
    p = only_problem(doc("server-job", [{"task": "b"}, {"task": "server-clients"}]), catalog)
    assert RULE_SERVER_JOB in p.message
    assert "steps[0].task" in p.message and "steps[1].task" in p.message


def test_client_job_with_server_task_is_refused() -> None:
    """A client job cannot hold a server task; the problem points at that step and names the rule."""
    p = only_problem(doc("client-job", [{"task": "a"}, {"task": "srv-log"}]))
    assert p.path == "steps[1].task"
    assert "a client job cannot hold server task 'srv-log'" in p.message
    assert "rule: a client job holds only client and task-server tasks" in p.message


def test_client_job_with_server_task_in_a_branch_is_refused() -> None:
    """A server task hidden in a condition's branch of a client job is refused at its path."""
    steps = [{"task": "a"}, {"if": "a.status == 'failed'", "else": [{"task": "srv-fix"}]}]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].else[0].task"
    assert "server task 'srv-fix'" in p.message


def test_client_job_with_server_job_is_refused() -> None:
    """A client job cannot hold a server job; the problem names the nested job and the rule."""
    p = only_problem(doc("client-job", [{"task": "a"}, {"job": "server-sub"}]))
    assert p.path == "steps[1].job"
    assert "a client job cannot hold server job 'server-sub'" in p.message
    assert "server jobs are sequenced on the NS" in p.message


@pytest.mark.parametrize("key", ["task", "job"])
def test_reference_to_missing_task_or_job_is_refused(key: str) -> None:
    """A step naming a task or job that does not exist is refused, naming it."""
    p = only_problem(doc("client-job", [{"task": "a"}, {key: "nope"}]))
    assert p.path == f"steps[1].{key}"
    assert "no task or job named 'nope'" in p.message


def test_job_key_naming_a_task_is_refused() -> None:
    """``job = ...`` must name a job: naming a task is refused with the fix."""
    p = only_problem(doc("client-job", [{"job": "a"}]))
    assert p.path == "steps[0].job"
    assert "'a' is a task, not a job; use `task = 'a'`" in p.message


def test_nested_job_naming_a_deleted_task_is_refused() -> None:
    """A nested job that refers to a task that no longer exists makes the job invalid."""
    catalog = make_catalog()
    catalog["stale"] = job("stale", "client-job", [{"task": "gone"}])
    p = only_problem(doc("client-job", [{"task": "stale"}]), catalog)
    assert p.path == "steps[0].task"
    assert "job 'stale' refers to 'gone', which no longer exists" in p.message


def test_duplicate_step_id_is_refused() -> None:
    """Two steps with the same id (explicit or defaulted to the task name) are refused."""
    p = only_problem(doc("client-job", [{"task": "a"}, {"id": "a", "task": "b"}]))
    assert p.path == "steps[1].id"
    assert "duplicate step id 'a' (first at steps[0])" in p.message


def test_same_task_twice_without_ids_is_a_duplicate() -> None:
    """The same task twice with no ids gives the same default id: refused, asking for an id."""
    p = only_problem(doc("client-job", [{"task": "a"}, {"task": "a"}]))
    assert p.path == "steps[1].id"
    assert "duplicate step id 'a'" in p.message
    assert "give each step a unique `id`" in p.message


def test_duplicate_step_id_across_branches_is_refused() -> None:
    """Step ids are unique in the whole job, including across a condition's two branches."""
    steps = [
        {"task": "a"},
        {
            "if": "a.status == 'failed'",
            "then": [{"id": "fix", "task": "b"}],
            "else": [{"id": "fix", "task": "c"}],
        },
    ]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].else[0].id"
    assert "duplicate step id 'fix' (first at steps[1].then[0])" in p.message


def test_condition_that_does_not_parse_is_refused_with_position() -> None:
    """An unparsable condition is refused at its ``if``, with the position and what was expected."""
    steps = [
        {"id": "install", "task": "a"},
        {"if": "install.status = 'failed'", "then": [{"task": "b"}]},
    ]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].if"
    assert "at position 15" in p.message
    assert "expected an operator" in p.message
    assert "found '='" in p.message


def test_condition_naming_a_later_step_is_refused() -> None:
    """A condition may not test a step that comes after it: refused, saying it is defined later."""
    steps = [
        {"task": "a"},
        {"if": "b.status == 'failed'", "then": [{"task": "c"}]},
        {"task": "b"},
    ]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].if"
    assert "refers to step 'b', which cannot have run before this condition" in p.message
    assert "'b' is defined later" in p.message
    assert RULE_CONDITION_ORDER in p.message


def test_condition_naming_a_step_in_its_own_branch_is_refused() -> None:
    """A condition may not test a step inside its own branches."""
    steps = [{"task": "a"}, {"if": "b.status == 'failed'", "then": [{"task": "b"}]}]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].if"
    assert "refers to step 'b'" in p.message
    assert "is defined later" in p.message
    assert RULE_CONDITION_ORDER in p.message


def test_condition_naming_a_step_in_the_other_branch_is_refused() -> None:
    """A condition in an ``else`` branch may not test a step of the ``then`` branch."""
    steps = [
        {"task": "a"},
        {
            "if": "a.status == 'failed'",
            "then": [{"task": "b"}],
            "else": [{"if": "b.status == 'failed'", "then": [{"task": "c"}]}],
        },
    ]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].else[0].if"
    assert "refers to step 'b'" in p.message
    assert "is in another branch" in p.message
    assert RULE_CONDITION_ORDER in p.message


def test_condition_naming_an_unknown_step_is_refused() -> None:
    """A condition testing a step id that appears nowhere says it does not exist."""
    steps = [{"task": "a"}, {"if": "zzz.status == 'failed'", "then": [{"task": "b"}]}]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].if"
    assert "'zzz' does not exist" in p.message


def test_condition_naming_a_step_by_its_task_name_when_it_has_an_id_is_refused() -> None:
    """With an explicit id, the task name is not a step id a condition can test."""
    steps = [
        {"id": "install", "task": "a"},
        {"if": "a.status == 'failed'", "then": [{"task": "b"}]},
    ]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].if"
    assert "refers to step 'a'" in p.message


def test_count_field_in_client_job_is_refused() -> None:
    """``x.total`` is a server-job roll-up: in a client job it is an unknown field, listing the known."""
    steps = [{"task": "a"}, {"if": "a.total > 0", "then": [{"task": "b"}]}]
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps[1].if"
    assert "unknown field 'total' of step 'a'" in p.message
    assert "known: output, return_code, status" in p.message


@pytest.mark.parametrize("fld", ["total", "failed", "succeeded", "status", "return_code", "output"])
def test_count_fields_allowed_in_server_job(fld: str) -> None:
    """In a server job the counts ``total``, ``failed``, ``succeeded`` are known fields too."""
    steps = [{"task": "a"}, {"if": f"a.{fld} != 0", "then": [{"task": "srv-log"}]}]
    validate_job(doc("server-job", steps), CATALOG.get)


def test_unknown_field_in_server_job_is_refused() -> None:
    """A field no step result has is refused in a server job too."""
    steps = [{"task": "a"}, {"if": "a.exit_code == 0", "then": [{"task": "srv-log"}]}]
    p = only_problem(doc("server-job", steps))
    assert "unknown field 'exit_code' of step 'a'" in p.message
    assert "total" in p.message


def test_cycle_through_another_job_is_refused() -> None:
    """Saving A that names B, where B names A, is refused as a cycle showing the chain."""
    catalog = make_catalog()
    catalog["A"] = job("A", "client-job", [{"task": "a"}])
    catalog["B"] = job("B", "client-job", [{"task": "A"}])
    problems = problems_of(doc("client-job", [{"task": "B"}], name="A"), catalog)
    assert [p.path for p in problems] == ["steps[0].task"]
    assert "jobs form a cycle: B → A → B" in problems[0].message


def test_cycle_through_a_client_job_inside_a_server_job_is_refused() -> None:
    """A cycle through a client job nested in a server job is found as well."""
    catalog = make_catalog()
    catalog["A"] = job("A", "client-job", [{"task": "a"}])
    catalog["B"] = job("B", "client-job", [{"task": "A"}])
    catalog["S"] = job("S", "server-job", [{"task": "srv-log"}, {"task": "B"}])
    problems = problems_of(doc("client-job", [{"task": "B"}], name="A"), catalog)
    assert any("jobs form a cycle" in p.message for p in problems)


def test_job_naming_itself_is_refused() -> None:
    """A job that names itself is refused: it refers to itself, a cycle."""
    catalog = make_catalog()
    problems = problems_of(doc("client-job", [{"task": "a"}, {"task": "A"}], name="A"), catalog)
    messages = {(p.path, p.message) for p in problems}
    assert ("steps", "job 'A' refers to itself: jobs form a cycle") in messages
    assert any("jobs form a cycle: A → A" in m for _, m in messages)


def test_job_naming_itself_is_refused_even_when_already_saved() -> None:
    """Replacing a saved job with a version that names itself is refused too."""
    catalog = make_catalog()
    catalog["A"] = job("A", "client-job", [{"task": "a"}])
    problems = problems_of(doc("client-job", [{"task": "A", "id": "again"}], name="A"), catalog)
    assert any("refers to itself" in p.message for p in problems)


@pytest.mark.parametrize("value", ["retry", "", 1, None])
def test_bad_on_failure_is_refused(value: Any) -> None:
    """``on_failure`` must be "stop" or "continue"."""
    p = only_problem(doc("client-job", [{"task": "a", "on_failure": value}]))
    assert p.path == "steps[0].on_failure"
    assert p.message == 'must be "stop" or "continue"'


@pytest.mark.parametrize("value", [0, -5, MAX_TIMEOUT_S + 1, "60", 1.5, True])
def test_bad_step_timeout_is_refused(value: Any) -> None:
    """A step's ``timeout_s`` must be an integer from 1 to the maximum (not a bool or string)."""
    p = only_problem(doc("client-job", [{"task": "a", "timeout_s": value}]))
    assert p.path == "steps[0].timeout_s"
    assert p.message == f"must be an integer from 1 to {MAX_TIMEOUT_S}"


@pytest.mark.parametrize("value", [0, MAX_TIMEOUT_S + 1, "10", False])
def test_bad_job_timeout_is_refused(value: Any) -> None:
    """The job's own ``timeout_s`` must be an integer from 1 to the maximum."""
    p = only_problem(doc("client-job", [{"task": "a"}], timeout_s=value))
    assert p.path == "timeout_s"
    assert "must be an integer from 1 to" in p.message


def test_bad_type_is_refused() -> None:
    """A job's ``type`` must be "server-job" or "client-job"."""
    p = only_problem(doc("both-job", [{"task": "a"}]))
    assert p.path == "type"
    assert "server-job" in p.message and "client-job" in p.message


def test_condition_without_branches_is_refused() -> None:
    """A condition step needs ``then``, ``else`` or both."""
    p = only_problem(doc("client-job", [{"task": "a"}, {"if": "a.status == 'failed'"}]))
    assert p.path == "steps[1]"
    assert "needs `then`, `else` or both" in p.message


@pytest.mark.parametrize("steps", [[], None, "a"])
def test_steps_must_be_a_non_empty_list(steps: Any) -> None:
    """A job needs a non-empty list of steps."""
    p = only_problem(doc("client-job", steps))
    assert p.path == "steps"
    assert "non-empty list" in p.message


def test_several_problems_are_all_listed() -> None:
    """Every problem in a document is listed at once, each at its own path."""
    steps = [
        {"task": "a", "on_failure": "maybe"},
        {"task": "nope"},
        {"id": "a", "task": "b", "timeout_s": 0},
        {"if": "a.status == ", "then": [{"task": "c"}]},
        {"task": "srv-log"},
    ]
    problems = problems_of(doc("client-job", steps, colour="red"))
    paths = [p.path for p in problems]
    for expected in (
        "colour",
        "steps[0].on_failure",
        "steps[1].task",
        "steps[2].id",
        "steps[2].timeout_s",
        "steps[3].if",
        "steps[4].task",
    ):
        assert expected in paths, (expected, paths)
    assert len(problems) == 7
    with pytest.raises(ValidationError) as info:
        validate_job(doc("client-job", steps), CATALOG.get)
    assert "is invalid (6 problem(s))" in str(info.value)


# --- validation: acceptances -----------------------------------------------------------------


def test_install_with_fix_client_job_is_accepted() -> None:
    """The issue's install-with-fix example saves as a client job, in its stored form."""
    stored = validate_job(copy.deepcopy(INSTALL_WITH_FIX), CATALOG.get)
    assert stored == {
        "name": "install-with-fix",
        "type": "client-job",
        "description": "",
        "steps": INSTALL_WITH_FIX["steps"],
    }


def test_server_job_with_server_client_and_nested_client_job_is_accepted() -> None:
    """A server job may mix a server step, a client step and a nested client job."""
    steps = [{"task": "srv-log"}, {"task": "a"}, {"task": "client-sub", "timeout_s": 600}]
    stored = validate_job(doc("server-job", steps, timeout_s=900, description="mix"), CATALOG.get)
    assert stored["type"] == "server-job"
    assert stored["timeout_s"] == 900
    assert stored["description"] == "mix"


def test_server_job_containing_server_job_is_accepted() -> None:
    """A server job may contain another server job."""
    validate_job(doc("server-job", [{"task": "a"}, {"job": "server-sub"}]), CATALOG.get)


def test_server_job_with_client_and_taskserver_tasks_is_accepted() -> None:
    """A task-server task is enough to make a server job more than client tasks."""
    validate_job(doc("server-job", [{"task": "a"}, {"task": "ts-scan"}]), CATALOG.get)


def test_client_job_with_taskserver_tasks_and_nested_client_jobs_is_accepted() -> None:
    """A client job may hold task-server tasks and (nested) client jobs."""
    steps = [{"task": "ts-scan"}, {"task": "client-mid"}, {"job": "ts-only"}]
    validate_job(doc("client-job", steps), CATALOG.get)


def test_condition_after_a_branch_may_test_its_steps() -> None:
    """Steps inside an earlier condition's branch may have run: a later condition may test them."""
    document = copy.deepcopy(INSTALL_WITH_FIX)
    document["steps"].append(
        {"if": "install-again.status == 'failed'", "then": [{"task": "report-failure"}]}
    )
    validate_job(document, CATALOG.get)


def test_replacing_a_saved_job_is_accepted() -> None:
    """Saving a new version of a job under the same name is not a cycle."""
    catalog = make_catalog()
    catalog["A"] = job("A", "client-job", [{"task": "a"}])
    catalog["B"] = job("B", "client-job", [{"task": "A"}])
    validate_job(doc("client-job", [{"task": "c"}], name="A"), catalog.get)


# --- compilation -----------------------------------------------------------------------------


def test_step_ids_default_to_the_task_name() -> None:
    """A step without an id is named after its task; an explicit id wins."""
    program = compiled(doc("client-job", [{"task": "a"}, {"id": "second", "task": "b"}]))["program"]
    assert [(i["step"], i["task"]["name"]) for i in runs(program)] == [("a", "a"), ("second", "b")]


def test_run_instruction_carries_resolved_task() -> None:
    """A ``run`` holds the current task definition, its kind and its on_failure."""
    program = compiled(doc("client-job", [{"task": "ts-scan", "on_failure": "continue"}]))[
        "program"
    ]
    (ins,) = program
    assert ins["op"] == "run"
    assert ins["task"] == CATALOG["ts-scan"][1]
    assert ins["kind"] == Kind.TASKSERVER
    assert ins["on_failure"] == "continue"
    assert ins["tested_next"] is False


def test_nested_same_type_jobs_are_inlined_with_qualified_ids() -> None:
    """Nested jobs of the same type are inlined; their step ids become ``outer/inner``."""
    steps = [{"task": "ts-scan"}, {"task": "client-sub"}, {"id": "again", "job": "client-sub"}]
    program = compiled(doc("client-job", steps))["program"]
    assert [i["step"] for i in runs(program)] == [
        "ts-scan",
        "client-sub/a",
        "client-sub/b",
        "again/a",
        "again/b",
    ]
    assert all(i["kind"] == Kind.CLIENT for i in runs(program)[1:])


def test_doubly_nested_jobs_are_qualified_at_each_level() -> None:
    """Two levels of nesting give ``outer/middle/inner`` ids."""
    program = compiled(doc("client-job", [{"task": "client-mid"}]))["program"]
    assert [i["step"] for i in runs(program)] == [
        "client-mid/c",
        "client-mid/client-sub/a",
        "client-mid/client-sub/b",
    ]


def test_nested_server_job_in_server_job_is_inlined() -> None:
    """A server job inside a server job is inlined too (same level)."""
    program = compiled(doc("server-job", [{"task": "ts-scan"}, {"task": "server-sub"}]))["program"]
    assert [(i["step"], i["kind"]) for i in runs(program)] == [
        ("ts-scan", Kind.TASKSERVER),
        ("server-sub/srv-log", Kind.SERVER),
        ("server-sub/a", Kind.CLIENT),
    ]


def test_inlined_job_conditions_use_qualified_ids() -> None:
    """A nested job's condition reads its own steps under their qualified ids."""
    program = compiled(doc("client-job", [{"task": "client-cond"}]))["program"]
    branch = next(i for i in program if i["op"] == "branch")
    assert branch["scope"] == {"a": "client-cond/a"}
    assert branch["tests"] == ["client-cond/a"]
    assert runs(program)[0]["tested_next"] is True


def test_client_job_inside_server_job_is_one_run_step() -> None:
    """A client job in a server job is one ``run`` of kind client-job holding the compiled client program."""
    steps = [{"task": "srv-log"}, {"id": "deploy", "task": "client-mid"}]
    program = compiled(doc("server-job", steps))["program"]
    assert [i["step"] for i in runs(program)] == ["srv-log", "deploy"]
    ins = runs(program)[1]
    assert ins["kind"] == "client-job"
    sub = ins["task"]["job"]
    assert ins["task"]["name"] == "client-mid"
    assert ins["task"]["kind"] == Kind.CLIENT
    assert sub["type"] == "client-job"
    assert [i["step"] for i in runs(sub["program"])] == ["c", "client-sub/a", "client-sub/b"]
    assert sub["timeout_s"] == 40 + 10 + 20
    assert ins["task"]["timeout_s"] == sub["timeout_s"]


def test_step_timeout_overrides_the_task_timeout() -> None:
    """A step's timeout_s replaces its task's, without changing the saved task."""
    program = compiled(doc("client-job", [{"task": "a", "timeout_s": 3}, {"task": "b"}]))["program"]
    assert [i["task"]["timeout_s"] for i in runs(program)] == [3, 20]
    assert CATALOG["a"][1]["timeout_s"] == 10


def test_step_timeout_overrides_a_nested_client_job_timeout() -> None:
    """A timeout_s on a client-job step in a server job is the whole client job's timeout."""
    steps = [{"task": "srv-log"}, {"task": "client-sub", "timeout_s": 999}]
    ins = runs(compiled(doc("server-job", steps))["program"])[1]
    assert ins["task"]["timeout_s"] == 999
    assert ins["task"]["job"]["timeout_s"] == 999


def test_job_timeout_defaults_to_the_sum_of_step_timeouts() -> None:
    """Without its own timeout_s, a job's timeout is the sum of its steps' timeouts."""
    assert (
        compiled(doc("client-job", [{"task": "a"}, {"task": "b", "timeout_s": 5}]))["timeout_s"]
        == 10 + 5
    )
    assert (
        compiled(doc("client-job", [{"task": "a"}, {"task": "client-sub"}]))["timeout_s"]
        == 10 + 10 + 20
    )


def test_job_timeout_when_given_is_kept() -> None:
    """An explicit job timeout_s is used as is."""
    out = compiled(doc("client-job", [{"task": "a"}], timeout_s=77))
    assert out == {"name": "j", "type": "client-job", "timeout_s": 77, "program": out["program"]}


def test_branch_layout() -> None:
    """A condition compiles to branch, then-part, jump past the else-part, else-part."""
    program = compiled(copy.deepcopy(INSTALL_WITH_FIX))["program"]
    assert [i["op"] for i in program] == ["run", "branch", "run", "run", "jump", "run"]
    assert program[1]["else_pc"] == 5
    assert program[4]["pc"] == 6
    assert program[1]["condition"] == "install.status == 'failed'"


def test_tested_next_marks_exactly_the_tested_step_before_a_condition() -> None:
    """``tested_next`` is true only for a step followed by a condition that references it."""
    program = compiled(copy.deepcopy(INSTALL_WITH_FIX))["program"]
    assert {i["step"]: i["tested_next"] for i in runs(program)} == {
        "install": True,
        "registry-fix": False,
        "install-again": False,
        "report-ok": False,
    }


def test_tested_next_false_when_the_next_condition_tests_another_step() -> None:
    """A step followed by a condition about an earlier step is not tested by it."""
    steps = [{"task": "a"}, {"task": "b"}, {"if": "a.status == 'failed'", "then": [{"task": "c"}]}]
    program = compiled(doc("client-job", steps))["program"]
    assert {i["step"]: i["tested_next"] for i in runs(program)} == {
        "a": False,
        "b": False,
        "c": False,
    }


def test_tested_next_sees_a_condition_after_the_end_of_a_branch() -> None:
    """The last step of a branch is tested by the condition that follows the whole if-step."""
    document = copy.deepcopy(INSTALL_WITH_FIX)
    document["steps"].append(
        {"if": "install-again.status == 'failed'", "then": [{"task": "report-failure"}]}
    )
    program = compiled(document)["program"]
    assert {i["step"]: i["tested_next"] for i in runs(program)} == {
        "install": True,
        "registry-fix": False,
        "install-again": True,
        "report-ok": False,
        "report-failure": False,
    }


def test_deleted_task_raises_compile_error() -> None:
    """Compiling a saved job whose task was deleted since raises JobCompileError naming it."""
    catalog = make_catalog()
    stored = validate_job(
        doc("client-job", [{"task": "a"}, {"id": "second", "task": "b"}]), catalog.get
    )
    del catalog["b"]
    with pytest.raises(JobCompileError, match="step 'second' names 'b', which no longer exists"):
        compile_job(stored, catalog.get)


def test_deleted_task_in_nested_job_raises_compile_error() -> None:
    """A task deleted from inside a nested job is found when compiling too."""
    catalog = make_catalog()
    stored = validate_job(doc("client-job", [{"task": "client-sub"}]), catalog.get)
    del catalog["a"]
    with pytest.raises(JobCompileError, match="'client-sub/a' names 'a'"):
        compile_job(stored, catalog.get)


def test_compiled_program_is_plain_data() -> None:
    """A compiled job survives a JSON round trip unchanged (it is stored and sent)."""
    steps = [{"task": "srv-log"}, {"task": "client-cond"}, {"task": "server-sub"}]
    out = compiled(doc("server-job", steps))
    assert json.loads(json.dumps(out)) == out


# --- the state machine -----------------------------------------------------------------------

LINEAR = doc("client-job", [{"task": "a"}, {"task": "b"}, {"task": "c"}])


def machine_in(state: JobState) -> JobMachine:
    """A machine for LINEAR in the given state (READY/WAITING reached by events, finals restored)."""
    m = machine_for(LINEAR)
    if state is JobState.READY:
        return m
    m.handle(JobEvent.START)
    if state is JobState.WAITING:
        return m
    return JobMachine(m.program, {"state": str(state), "pc": 0, "results": {}, "reason": "x"})


def test_start_from_ready_runs_the_first_step() -> None:
    """START in READY moves to WAITING and asks to run the first step."""
    m = machine_for(LINEAR)
    assert (m.state, m.current) == (JobState.READY, None)
    actions = m.handle(JobEvent.START)
    assert m.state == JobState.WAITING
    assert actions == [RunStep(0, "a", CATALOG["a"][1], "client")]
    assert m.current == actions[0]


def test_step_ended_in_waiting_advances() -> None:
    """STEP_ENDED in WAITING records the result and asks for the next step."""
    m = machine_for(LINEAR)
    m.handle(JobEvent.START)
    actions = m.handle(JobEvent.STEP_ENDED, result("succeeded", 0, "done"))
    assert m.state is JobState.WAITING
    assert [a.step for a in actions if isinstance(a, RunStep)] == ["b"]
    assert m.results == {"a": result("succeeded", 0, "done")}


@pytest.mark.parametrize("state", [JobState.READY, JobState.WAITING])
def test_stop_ends_the_job_stopped(state: JobState) -> None:
    """STOP in READY or WAITING moves to STOPPED with a reason."""
    m = machine_in(state)
    actions = m.handle(JobEvent.STOP)
    assert m.state is JobState.STOPPED
    assert actions == [JobEnded(JobState.STOPPED, "stopped by an administrator")]
    assert m.current is None


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (JobState.READY, JobEvent.STEP_ENDED),
        (JobState.WAITING, JobEvent.START),
        *[(s, e) for s in sorted(FINAL) for e in JobEvent],
    ],
)
def test_illegal_event_raises(state: JobState, event: JobEvent) -> None:
    """An event the transition table does not allow raises JobStateError and changes nothing."""
    m = machine_in(state)
    before = m.snapshot()
    with pytest.raises(JobStateError, match=f"event {event} is not allowed in state {state}"):
        m.handle(event, OK)
    assert m.snapshot() == before


def test_linear_job_runs_steps_in_order_and_succeeds() -> None:
    """A job without conditions runs every step once, in order, and ends SUCCEEDED."""
    m = machine_for(LINEAR)
    ran, end = drive(m, {})
    assert ran == ["a", "b", "c"]
    assert end == JobEnded(JobState.SUCCEEDED)
    assert m.state is JobState.SUCCEEDED
    assert set(m.results) == {"a", "b", "c"}


def test_empty_program_succeeds_at_start() -> None:
    """A program with nothing to run succeeds as soon as it starts."""
    m = JobMachine([])
    assert m.handle(JobEvent.START) == [JobEnded(JobState.SUCCEEDED)]


@pytest.mark.parametrize("status", ["failed", "timed_out", "stopped"])
def test_failed_step_with_stop_fails_the_job(status: str) -> None:
    """A step that did not succeed under on_failure "stop" fails the job; later steps never run."""
    m = machine_for(LINEAR)
    ran, end = drive(m, {"b": result(status, None)})
    assert ran == ["a", "b"]
    assert end.state is JobState.FAILED
    assert end.reason == f"step 'b' ended {status}"
    assert m.state is JobState.FAILED and m.reason == end.reason
    assert "c" not in m.results


def test_failed_step_with_continue_goes_on() -> None:
    """A failed step marked on_failure "continue" does not fail the job."""
    m = machine_for(
        doc("client-job", [{"task": "a"}, {"task": "b", "on_failure": "continue"}, {"task": "c"}])
    )
    ran, end = drive(m, {"b": FAIL})
    assert ran == ["a", "b", "c"]
    assert end.state is JobState.SUCCEEDED
    assert m.results["b"] == FAIL


def test_last_step_failing_with_continue_still_succeeds() -> None:
    """on_failure "continue" on the last step: the job reaches its end and succeeds."""
    m = machine_for(doc("client-job", [{"task": "a", "on_failure": "continue"}]))
    assert drive(m, {"a": FAIL})[1].state is JobState.SUCCEEDED


def test_fix_and_retry_recovers() -> None:
    """install fails → the condition is true → fix and install-again run; the retry succeeds."""
    m = machine_for(copy.deepcopy(INSTALL_WITH_FIX))
    ran, end = drive(m, {"install": FAIL})
    assert ran == ["install", "registry-fix", "install-again"]
    assert end.state is JobState.SUCCEEDED
    assert "report-ok" not in m.results


def test_fix_and_retry_fails_when_the_retry_fails() -> None:
    """If install-again also fails (and nothing tests it), the job fails at install-again."""
    m = machine_for(copy.deepcopy(INSTALL_WITH_FIX))
    ran, end = drive(m, {"install": FAIL, "install-again": FAIL})
    assert ran == ["install", "registry-fix", "install-again"]
    assert end == JobEnded(JobState.FAILED, "step 'install-again' ended failed")


def test_failed_fix_stops_before_the_retry() -> None:
    """A failing fix (not tested by a condition) fails the job before the retry runs."""
    m = machine_for(copy.deepcopy(INSTALL_WITH_FIX))
    ran, end = drive(m, {"install": FAIL, "registry-fix": FAIL})
    assert ran == ["install", "registry-fix"]
    assert end.reason == "step 'registry-fix' ended failed"


def test_else_branch_when_condition_is_false() -> None:
    """When install succeeds the condition is false: only the else branch runs."""
    m = machine_for(copy.deepcopy(INSTALL_WITH_FIX))
    ran, end = drive(m, {})
    assert ran == ["install", "report-ok"]
    assert end.state is JobState.SUCCEEDED


def test_condition_after_a_branch_handles_its_last_step() -> None:
    """A failed retry tested by the condition after the if-step does not fail the job by itself."""
    document = copy.deepcopy(INSTALL_WITH_FIX)
    document["steps"].append(
        {"if": "install-again.status == 'failed'", "then": [{"task": "report-failure"}]}
    )
    m = machine_for(document)
    ran, end = drive(m, {"install": FAIL, "install-again": FAIL})
    assert ran == ["install", "registry-fix", "install-again", "report-failure"]
    assert end.state is JobState.SUCCEEDED


def test_step_not_run_reads_as_skipped() -> None:
    """A step in a branch not taken reads as status "skipped" in a later condition."""
    document = copy.deepcopy(INSTALL_WITH_FIX)
    document["steps"].append(
        {
            "if": "install-again.status == 'skipped' and install-again.return_code == install-again.return_code",
            "then": [{"task": "a"}],
            "else": [{"task": "b"}],
        }
    )
    ran, _ = drive(machine_for(document), {})
    assert ran == ["install", "report-ok", "a"]
    ran, _ = drive(machine_for(document), {"install": FAIL})
    assert ran == ["install", "registry-fix", "install-again", "b"]
    assert SKIPPED == {"status": "skipped", "return_code": None, "output": ""}


def test_condition_reads_output_and_return_code() -> None:
    """Conditions read a step's return_code and output from the recorded result."""
    steps = [
        {"task": "a", "on_failure": "continue"},
        {
            "if": "a.return_code == 3 and a.output contains 'disk full'",
            "then": [{"task": "b"}],
            "else": [{"task": "c"}],
        },
    ]
    ran, _ = drive(
        machine_for(doc("client-job", steps)), {"a": result("failed", 3, "E: disk full")}
    )
    assert ran == ["a", "b"]
    ran, _ = drive(
        machine_for(doc("client-job", steps)), {"a": result("failed", 4, "E: disk full")}
    )
    assert ran == ["a", "c"]


def test_snapshot_restore_resumes_at_the_same_step() -> None:
    """A machine restored from a (JSON-stored) snapshot waits for the same step and goes on alike."""
    program = compiled(copy.deepcopy(INSTALL_WITH_FIX))["program"]
    m = JobMachine(program)
    m.handle(JobEvent.START)
    m.handle(JobEvent.STEP_ENDED, FAIL)  # install failed → registry-fix
    m.handle(JobEvent.STEP_ENDED, OK)  # registry-fix → install-again
    stored = json.loads(json.dumps(m.snapshot()))
    restored = JobMachine(program, stored)
    assert restored.state is JobState.WAITING
    assert restored.current == m.current
    assert restored.current is not None and restored.current.step == "install-again"
    assert restored.results == m.results
    assert restored.handle(JobEvent.STEP_ENDED, OK) == m.handle(JobEvent.STEP_ENDED, OK)
    assert restored.snapshot() == m.snapshot()
    assert restored.snapshot()["state"] == JobState.SUCCEEDED


def test_restore_of_a_failed_job_keeps_its_reason() -> None:
    """A restored final machine keeps its state and reason and accepts no event."""
    m = machine_for(LINEAR)
    drive(m, {"a": FAIL})
    restored = JobMachine(m.program, json.loads(json.dumps(m.snapshot())))
    assert restored.state is JobState.FAILED
    assert restored.reason == "step 'a' ended failed"
    assert restored.current is None
    with pytest.raises(JobStateError):
        restored.handle(JobEvent.START)


def test_snapshot_is_not_changed_by_later_events() -> None:
    """A snapshot is a copy: events handled after it was taken do not change it."""
    m = machine_for(LINEAR)
    m.handle(JobEvent.START)
    m.handle(JobEvent.STEP_ENDED, OK)
    snap = m.snapshot()
    frozen = copy.deepcopy(snap)
    m.handle(JobEvent.STEP_ENDED, FAIL)
    assert snap == frozen
    assert JobMachine(m.program, snap).current == RunStep(1, "b", CATALOG["b"][1], "client")


def test_restore_copies_the_snapshot() -> None:
    """A restored machine does not write into the snapshot it was given."""
    m = machine_for(LINEAR)
    m.handle(JobEvent.START)
    snap = json.loads(json.dumps(m.snapshot()))
    frozen = copy.deepcopy(snap)
    restored = JobMachine(m.program, snap)
    restored.handle(JobEvent.STEP_ENDED, OK)
    assert snap == frozen


# --- server-job roll-ups ---------------------------------------------------------------------


def test_step_values_rolls_up_counts() -> None:
    """step_values counts succeeded, failed and total; status is succeeded only if all succeeded."""
    statuses = ["succeeded", "succeeded", "failed", "timed_out", "succeeded"]
    assert step_values(statuses) == {
        "status": "failed",
        "succeeded": 3,
        "failed": 2,
        "total": 5,
        "return_code": None,
        "output": "",
    }
    assert step_values(["succeeded"] * 3)["status"] == "succeeded"


def test_step_values_of_a_single_server_instance() -> None:
    """For a server step the one instance's return code and output are kept."""
    values = step_values(["failed"], {"return_code": 2, "output": "no disk"})
    assert (values["status"], values["return_code"], values["output"]) == ("failed", 2, "no disk")


SERVER_CHECK = doc(
    "server-job",
    [
        {"id": "check", "task": "a"},
        {"if": "check.failed > 0", "then": [{"task": "srv-fix"}], "else": [{"task": "srv-log"}]},
    ],
)


def test_server_condition_on_failed_count_takes_then_branch() -> None:
    """``check.failed > 0`` on the rolled-up result: one of five failing runs the fix for all."""
    rolled = step_values(["succeeded"] * 4 + ["failed"])
    ran, end = drive(machine_for(SERVER_CHECK), {"check": rolled})
    assert ran == ["check", "srv-fix"]
    assert end.state is JobState.SUCCEEDED


def test_server_condition_on_failed_count_takes_else_branch() -> None:
    """``check.failed > 0`` is false when all five succeeded: the else branch runs."""
    ran, end = drive(machine_for(SERVER_CHECK), {"check": step_values(["succeeded"] * 5)})
    assert ran == ["check", "srv-log"]
    assert end.state is JobState.SUCCEEDED


@pytest.mark.parametrize(("count", "branch"), [(5, "srv-fix"), (4, "srv-log")])
def test_server_condition_on_total(count: int, branch: str) -> None:
    """``check.total == 5`` compares the number of targets of the rolled-up step."""
    document = doc(
        "server-job",
        [
            {"id": "check", "task": "ts-scan"},
            {
                "if": "check.total == 5",
                "then": [{"task": "srv-fix"}],
                "else": [{"task": "srv-log"}],
            },
        ],
    )
    ran, _ = drive(machine_for(document), {"check": step_values(["succeeded"] * count)})
    assert ran == ["check", branch]


def test_server_step_failure_not_tested_fails_the_job() -> None:
    """A rolled-up failure (one of five failed) fails a server job when nothing tests the step."""
    document = doc("server-job", [{"id": "check", "task": "a"}, {"task": "srv-log"}])
    ran, end = drive(machine_for(document), {"check": step_values(["succeeded"] * 4 + ["failed"])})
    assert ran == ["check"]
    assert end == JobEnded(JobState.FAILED, "step 'check' ended failed")


def test_client_job_step_in_server_job_runs_as_one_step() -> None:
    """In a server job the nested client job is one RunStep carrying its program."""
    m = machine_for(
        doc("server-job", [{"task": "srv-log"}, {"id": "deploy", "task": "client-sub"}])
    )
    ran, end = drive(m, {})
    assert ran == ["srv-log", "deploy"]
    assert end.state is JobState.SUCCEEDED
    program = compiled(
        doc("server-job", [{"task": "srv-log"}, {"id": "deploy", "task": "client-sub"}])
    )
    inner = JobMachine(runs(program["program"])[1]["task"]["job"]["program"])
    assert drive(inner, {})[0] == ["a", "b"]


# --- only_taskserver_steps -------------------------------------------------------------------


def test_only_taskserver_steps_true_for_taskserver_job() -> None:
    """A client job made only of task-server steps can run for a device with no agent."""
    assert only_taskserver_steps(
        compiled(doc("client-job", [{"task": "ts-only"}, {"task": "ts-scan", "id": "x"}]))[
            "program"
        ]
    )


def test_only_taskserver_steps_false_with_a_client_step() -> None:
    """One client step anywhere (even in a branch) needs an agent."""
    steps = [
        {"task": "ts-scan"},
        {"if": "ts-scan.status == 'failed'", "then": [{"task": "a"}]},
    ]
    assert not only_taskserver_steps(compiled(doc("client-job", steps))["program"])


def test_only_taskserver_steps_looks_inside_client_job_steps() -> None:
    """A client-job step counts as task-server only when its own program is."""
    ts = compiled(doc("server-job", [{"task": "ts-scan"}, {"task": "ts-only"}]))["program"]
    assert only_taskserver_steps(ts)
    mixed = compiled(doc("server-job", [{"task": "ts-scan"}, {"task": "client-sub"}]))["program"]
    assert not only_taskserver_steps(mixed)
    assert not only_taskserver_steps(compiled(doc("server-job", [{"task": "srv-log"}]))["program"])
