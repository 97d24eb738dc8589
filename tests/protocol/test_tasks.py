"""Task documents: parsing TOML and JSON, validation listing every problem, tokens."""

from __future__ import annotations

import json

import pytest

from protocol.errors import ValidationError
from protocol.tasks import (
    CATALOG,
    DEFAULT_TIMEOUT_S,
    Kind,
    TaskDefinition,
    output_limit,
    parse_task,
    replace_tokens,
    validate_task,
)

GOOD_TOML = """
name = "hello"
type = "run-script"
timeout_s = 60
description = "Say hello"
[params]
interpreter = "bash"
script = "echo hello from %COMPUTERNAME%"
env = { GREETING = "hi" }
success_codes = [0, 3]
"""

GOOD_DOC = {
    "name": "hello",
    "type": "run-script",
    "timeout_s": 60,
    "description": "Say hello",
    "params": {
        "interpreter": "bash",
        "script": "echo hello from %COMPUTERNAME%",
        "env": {"GREETING": "hi"},
        "success_codes": [0, 3],
    },
}

EXPECTED = TaskDefinition(
    name="hello",
    type="run-script",
    kind=Kind.CLIENT,
    timeout_s=60,
    params={
        "interpreter": "bash",
        "script": "echo hello from %COMPUTERNAME%",
        "env": {"GREETING": "hi"},
        "working_dir": "",
        "run_as": "",
        "success_codes": [0, 3],
        "output_limit_bytes": 65_536,
    },
    description="Say hello",
)


def _problems(text: str, filename: str = "") -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse_task(text, filename=filename)
    problems = {p.path: p.message for p in info.value.problems}
    assert len(problems) == len(info.value.problems), "one problem per path expected"
    return problems


def test_valid_toml_parses() -> None:
    """A valid TOML task parses into a TaskDefinition with its kind and defaults filled in."""
    assert parse_task(GOOD_TOML) == EXPECTED


def test_same_document_as_json_parses_the_same() -> None:
    """The same document as JSON (detected by the leading brace) gives the same definition."""
    assert parse_task(json.dumps(GOOD_DOC, indent=2)) == EXPECTED


def test_json_is_chosen_by_file_suffix() -> None:
    """A .json filename selects the JSON parser: valid TOML in a .json file is a parse error."""
    assert parse_task("\n  " + json.dumps(GOOD_DOC), filename="hello.json") == EXPECTED
    with pytest.raises(ValidationError) as info:
        parse_task(GOOD_TOML, filename="hello.json")
    assert [p.path for p in info.value.problems] == ["(document)"]


def test_to_dict_is_the_plain_form() -> None:
    """to_dict gives the plain map stored by the NS and sent in dispatch."""
    assert EXPECTED.to_dict() == {**GOOD_DOC, "kind": "client", "params": EXPECTED.params}


def test_defaults_are_filled_in() -> None:
    """Omitted timeout, description and optional parameters get their documented defaults."""
    task = parse_task('name = "a"\ntype = "run-script"\n[params]\nscript = "true"\n')
    assert task.timeout_s == DEFAULT_TIMEOUT_S == 300
    assert task.description == ""
    assert task.params == {
        "interpreter": "sh",
        "script": "true",
        "env": {},
        "working_dir": "",
        "run_as": "",
        "success_codes": [0],
        "output_limit_bytes": 65_536,
    }
    noop = parse_task('name = "n"\ntype = "noop"\n')
    assert noop.params == {"delay_ms": 0}
    assert noop.kind is Kind.CLIENT


@pytest.mark.parametrize(
    ("tid", "kind"),
    [
        ("run-script", Kind.CLIENT),
        ("run-script-on-taskserver", Kind.TASKSERVER),
        ("run-script-on-server", Kind.SERVER),
        ("write-server-log", Kind.SERVER),
        ("noop", Kind.CLIENT),
    ],
)
def test_each_type_gets_its_kind(tid: str, kind: Kind) -> None:
    """Each catalog type resolves to the kind that says where it runs."""
    required = {"script": "true", "message": "hi"}
    params = {k: required[k] for k, spec in CATALOG[tid].params.items() if spec.required}
    task = validate_task({"name": "t", "type": tid, "params": params})
    assert task.type == tid
    assert task.kind is kind


def test_catalog_entries_are_well_formed() -> None:
    """Every catalog type is keyed by its own id, has a kind, a doc line and documented params."""
    for tid, ttype in CATALOG.items():
        assert ttype.id == tid
        assert ttype.kind in set(Kind)
        assert ttype.doc
        for name, param in ttype.params.items():
            assert param.required or param.default is not None or name, tid


def test_every_problem_is_listed_by_path() -> None:
    """A document with many problems lists every one of them, each at its field path."""
    problems = _problems(
        """
type = "run-script"
timeout_s = 0
colour = "red"
[params]
interpreter = "perl"
success_codes = [0, "1", 2]
env = { A = "1", B = 2 }
output_limit_bytes = -1
bogus = 1
"""
    )
    assert set(problems) == {
        "name",
        "timeout_s",
        "colour",
        "params.interpreter",
        "params.script",
        "params.success_codes[1]",
        "params.env.B",
        "params.output_limit_bytes",
        "params.bogus",
    }
    assert problems["name"] == "required field is missing"
    assert problems["params.script"] == "required parameter is missing"
    assert "sh, bash, python, powershell, cmd" in problems["params.interpreter"]
    assert problems["params.success_codes[1]"] == "must be an integer"
    assert problems["params.env.B"] == "must be a string"
    assert problems["params.output_limit_bytes"] == "must be at least 0"
    assert problems["timeout_s"] == "must be an integer from 1 to 604800"
    assert problems["colour"].startswith("unknown field")
    assert problems["params.bogus"].startswith("unknown parameter for run-script")


def test_unknown_type_and_bad_fields_are_listed_together() -> None:
    """An unknown type, a non-string description and a too-large timeout are all reported."""
    problems = _problems(
        'name = "x"\ntype = "reboot-everything"\ntimeout_s = 604801\ndescription = 5\n'
    )
    assert set(problems) == {"type", "timeout_s", "description"}
    assert "'reboot-everything'" in problems["type"]
    assert "run-script" in problems["type"]


def test_error_message_lists_every_problem() -> None:
    """The ValidationError text names the task and shows one line per problem."""
    with pytest.raises(ValidationError) as info:
        parse_task('name = "x"\ntype = "noop"\ntimeout_s = "60"\n[params]\ndelay_ms = -5\n')
    text = str(info.value)
    assert text.startswith("task 'x' is invalid (2 problem(s)):")
    assert "  - timeout_s: must be an integer from 1 to 604800" in text
    assert "  - params.delay_ms: must be at least 0" in text


@pytest.mark.parametrize("timeout", ["true", "1.5", '"60"', "0", "604801"])
def test_bad_timeouts_are_refused(timeout: str) -> None:
    """timeout_s must be an integer from 1 to a week; bool, float and str are refused."""
    problems = _problems(f'name = "x"\ntype = "noop"\ntimeout_s = {timeout}\n')
    assert set(problems) == {"timeout_s"}


@pytest.mark.parametrize("name", ["", "-leading-dash", "a/b", "x" * 129])
def test_bad_names_are_refused(name: str) -> None:
    """A name must be 1-128 letters, digits, space, '.', '_' or '-', starting alphanumeric."""
    with pytest.raises(ValidationError) as info:
        validate_task({"name": name, "type": "noop"})
    assert [p.path for p in info.value.problems] == ["name"]


def test_unknown_top_level_field_is_refused() -> None:
    """A field outside name/type/timeout_s/params/description is an error, not ignored."""
    problems = _problems('name = "x"\ntype = "noop"\ntimout_s = 5\n')
    assert list(problems) == ["timout_s"]
    assert "timeout_s" in problems["timout_s"]  # the known fields are listed


def test_unknown_parameter_is_refused() -> None:
    """A parameter the type does not declare is refused and the known ones are listed."""
    problems = _problems('name = "x"\ntype = "noop"\n[params]\ndelay = 5\n')
    assert list(problems) == ["params.delay"]
    assert "delay_ms" in problems["params.delay"]


def test_params_that_is_not_a_table_is_refused() -> None:
    """params given as a scalar is one problem at params."""
    problems = _problems('name = "x"\ntype = "noop"\nparams = 3\n')
    assert problems == {"params": "must be a table"}


def test_toml_syntax_error_is_one_document_problem() -> None:
    """A TOML syntax error is a ValidationError with one (document) problem, not a crash."""
    with pytest.raises(ValidationError) as info:
        parse_task('name = "unterminated\ntype = "noop"\n', filename="bad.toml")
    assert [p.path for p in info.value.problems] == ["(document)"]
    assert "cannot parse" in info.value.problems[0].message
    assert "bad.toml" in str(info.value)


def test_json_syntax_error_is_one_document_problem() -> None:
    """A JSON syntax error is a ValidationError with one (document) problem."""
    with pytest.raises(ValidationError) as info:
        parse_task('{"name": "x",}')
    assert [p.path for p in info.value.problems] == ["(document)"]


def test_non_table_document_is_refused() -> None:
    """A JSON document that is not an object is refused."""
    with pytest.raises(ValidationError) as info:
        validate_task(["name", "x"])
    assert [p.path for p in info.value.problems] == ["(document)"]


def test_replace_tokens_replaces_known_tokens() -> None:
    """The four known tokens are replaced everywhere they occur."""
    tokens = {"COMPUTERNAME": "pc-1", "COMPUTERID": "42", "TASKSERVER": "ts-a", "RUNID": "17"}
    text = "%COMPUTERNAME%/%COMPUTERID%/%TASKSERVER%/%RUNID% %COMPUTERNAME%"
    assert replace_tokens(text, tokens) == "pc-1/42/ts-a/17 pc-1"


def test_replace_tokens_leaves_unknown_alone() -> None:
    """Unknown %X% and known tokens with no value stay as written; %PATH% is not touched."""
    text = "%PATH% %computername% %RUNID% %COMPUTERNAME%"
    assert replace_tokens(text, {"COMPUTERNAME": "pc-1", "PATH": "/bin"}) == (
        "%PATH% %computername% %RUNID% pc-1"
    )


def test_replace_tokens_does_not_recurse() -> None:
    """A value that itself looks like a token is inserted literally, not replaced again."""
    assert replace_tokens("%COMPUTERNAME%", {"COMPUTERNAME": "%RUNID%", "RUNID": "9"}) == "%RUNID%"


def test_output_limit() -> None:
    """output_limit reads output_limit_bytes and falls back to 64 KiB."""
    assert output_limit({"output_limit_bytes": 100}) == 100
    assert output_limit({}) == 65_536
    assert output_limit({"output_limit_bytes": "big"}) == 65_536


@pytest.mark.parametrize("type_id", sorted(CATALOG))
def test_every_type_refuses_a_bad_parameter_by_its_path(type_id: str) -> None:
    """For every type: a parameter of the wrong type (or an unknown one, for types without
    parameters) is refused when the task is saved, naming ``params.<name>``."""
    params = CATALOG[type_id].params
    if params:
        name, spec = next(iter(params.items()))
        wrong: object = 12345 if spec.type is not int else "not a number"
    else:
        name, wrong = "surprise", 1
    with pytest.raises(ValidationError) as info:
        validate_task({"name": "t", "type": type_id, "params": {name: wrong}})
    assert f"params.{name}" in [p.path for p in info.value.problems]
