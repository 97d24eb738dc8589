"""The hierarchy's flags on item documents (``protocol.hierflags``): ``replicate`` on tasks,
jobs, policies and filters; ``remote_start`` on tasks and jobs only, and only with
``replicate``; booleans only; each mistake named by its key. A flag is stored only when true,
so a document saved before the hierarchy existed reads the same."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import ValidationError
from protocol.filters import validate_filter
from protocol.jobs import validate_job
from protocol.policies import validate_policy
from protocol.tasks import parse_document, validate_task

TASK = parse_document('name = "t"\ntype = "run-script"\n[params]\nscript = "true"\n')
JOB = {"name": "j", "type": "client-job", "steps": [{"task": "t"}]}
POLICY = {"name": "p", "task": "t", "schedule": {"every_s": 60}}
FILTER = {"name": "f", "query": "computer.online == 1"}


def lookup(name: str) -> tuple[str, dict[str, Any]] | None:
    return ("task", validate_task(TASK).to_dict()) if name == "t" else None


VALIDATORS = {
    "task": lambda doc: validate_task(doc).to_dict(),
    "job": lambda doc: validate_job(doc, lookup),
    "policy": lambda doc: validate_policy(doc, "client"),
    "filter": lambda doc: validate_filter(doc)[0],
}
DOCS = {"task": TASK, "job": JOB, "policy": POLICY, "filter": FILTER}


def problems(kind: str, **flags: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as refused:
        VALIDATORS[kind]({**DOCS[kind], **flags})
    return [(p.path, p.message) for p in refused.value.problems]


@pytest.mark.parametrize("kind", list(DOCS))
def test_replicate_true_is_stored_and_false_or_absent_is_not(kind):
    saved = VALIDATORS[kind]({**DOCS[kind], "replicate": True})
    assert saved["replicate"] is True and "remote_start" not in saved
    assert "replicate" not in VALIDATORS[kind]({**DOCS[kind], "replicate": False})
    assert "replicate" not in VALIDATORS[kind](dict(DOCS[kind]))


@pytest.mark.parametrize("kind", ["task", "job"])
def test_remote_start_goes_with_replicate_on_tasks_and_jobs(kind):
    saved = VALIDATORS[kind]({**DOCS[kind], "replicate": True, "remote_start": True})
    assert (saved["replicate"], saved["remote_start"]) == (True, True)
    assert problems(kind, remote_start=True) == [
        (
            "remote_start",
            "needs replicate = true: only an item the parent NS replicates can be started from it",
        )
    ]
    assert problems(kind, replicate=False, remote_start=True)[0][0] == "remote_start"


@pytest.mark.parametrize("kind", ["policy", "filter"])
def test_remote_start_is_refused_on_policies_and_filters(kind):
    assert problems(kind, replicate=True, remote_start=True) == [
        ("remote_start", "only a task or a job can be started from the parent NS; remove it")
    ]


@pytest.mark.parametrize("kind", list(DOCS))
@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_a_flag_that_is_not_a_boolean_is_named(kind, value):
    assert problems(kind, replicate=value) == [("replicate", "must be true or false")]


@pytest.mark.parametrize("kind", ["task", "job"])
def test_a_remote_start_that_is_not_a_boolean_is_named(kind):
    assert ("remote_start", "must be true or false") in problems(
        kind, replicate=True, remote_start="yes"
    )


def test_the_flags_are_listed_among_the_known_fields():
    assert problems("task", colour="red") == [
        (
            "colour",
            "unknown field (known: description, name, params, remote_start, replicate,"
            " timeout_s, type)",
        )
    ]
    assert "replicate" in problems("filter", colour="red")[0][1]
    assert "replicate" in problems("policy", colour="red")[0][1]
    assert "remote_start, replicate" in problems("job", colour="red")[0][1]
