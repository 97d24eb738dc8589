"""The TOML writer behind ``task show`` / ``job show``: what it writes, ``tomllib`` reads back
as the same document."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admin.tomlout import TomlError, dumps

TRICKY = [
    "",
    "plain",
    'quote " and back\\slash',
    "ends with a quote'",
    "line one\nline two\n",
    "\n\nstarts with newlines",
    "three quotes ''' inside\nand more",
    'three double """ inside\nx',
    "a CR\r\nline",
    "controls \x00\x01\x1b\x7f\b\f",
    "tabs\tand unicode é ✓ \U0001f600",
    "backslash at line end \\\nnext",
    "ends with backslash\\",
    "'",
    "''",
    "\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_strings_round_trip(text):
    """A script with quotes, backslashes, control characters or odd newlines must come back
    byte for byte: a script that changed on re-save would run something else."""
    doc = {"name": "t", "params": {"script": text}, "k": [text, text]}
    assert tomllib.loads(dumps(doc)) == doc


def test_task_and_job_shapes():
    """A task (params table, env sub-table, arrays) and a job (arrays of tables with nested
    then/else arrays of tables) read back the same, and keys that are not bare are quoted."""
    task = {
        "name": "install app",
        "type": "run-script",
        "timeout_s": 600,
        "params": {
            "interpreter": "sh",
            "script": "#!/bin/sh\necho 'hi' \"%COMPUTERNAME%\"\n",
            "env": {"A B": "1", "PATH.x": "y", "": "empty key"},
            "success_codes": [0, 3010],
            "ratio": 0.25,
            "flag": False,
        },
        "description": "",
    }
    job = {
        "name": "j",
        "type": "client-job",
        "description": "d",
        "timeout_s": 100,
        "steps": [
            {"id": "install", "task": "install app"},
            {
                "if": "install.status == 'failed'",
                "then": [{"task": "fix"}, {"id": "again", "task": "install app"}],
                "else": [{"job": "other"}],
            },
        ],
    }
    for doc in (task, job):
        text = dumps(doc)
        assert tomllib.loads(text) == doc, text
    assert "[[steps]]" in dumps(job)


def test_unrepresentable_values_are_refused():
    """TOML has no null: the writer says where instead of writing something else."""
    with pytest.raises(TomlError, match="params.x"):
        dumps({"params": {"x": None}})


def test_special_floats():
    doc = {"a": math.inf, "b": -math.inf, "c": 1e-7, "d": 1e300, "e": -0.0}
    assert tomllib.loads(dumps(doc)) == doc
    assert math.isnan(tomllib.loads(dumps({"n": math.nan}))["n"])


_keys = st.text(min_size=0, max_size=8)
_scalars = (
    st.text(max_size=40)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.booleans()
    | st.floats(allow_nan=False)
)
_values: Any = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_any_document_round_trips(doc):
    """Any document of strings, integers, floats, booleans, arrays and tables, nested in any
    way (arrays of tables inside arrays of tables included), reads back equal."""
    assert tomllib.loads(dumps(doc)) == doc
