"""The one JSON schema of the admin verbs (``admin/schema.py``, docs/json.md)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from admin import schema

T0 = 1_796_439_328.534369
"""A stored time (UNIX seconds), as the NS hands them over."""


def parses_as_utc(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    assert when.utcoffset() == dt.timedelta(0), text
    return when


def row(iid: int, computer: str, status: str, **more) -> dict:
    return {
        "id": iid,
        "parent_id": None,
        "step": "",
        "computer": computer,
        "status": status,
        "return_code": 0 if status == "succeeded" else None,
        "output": "",
        "reason": "",
        "started_at": T0 + iid,
        "ended_at": T0 + iid + 0.5,
        **more,
    }


def view(kind: str, task_type: str, instances: list[dict], status: str = "succeeded") -> dict:
    """A run as ``run.show`` returns it."""
    return {
        "id": 12,
        "task_name": "hello",
        "kind": kind,
        "status": status,
        "created_at": T0,
        "ended_at": T0 + 60,
        "deadline": T0 + 3600,
        "version": 3,
        "definition": {"name": "hello", "type": task_type, "kind": kind},
        "targets": [],
        "machine": None,
        "steps": [],
        "instances": instances,
    }


def test_a_time_is_iso_8601_utc_and_keeps_its_instant():
    text = schema.when(T0)
    assert text is not None and text.endswith("Z")
    assert parses_as_utc(text).timestamp() == pytest.approx(T0, abs=1e-6)
    assert schema.when(None) is None
    assert schema.when(text) == text  # converting twice changes nothing
    with pytest.raises(TypeError):
        schema.when(True)


def test_the_list_and_the_detail_share_the_run_fields_with_the_same_values():
    instances = [row(1, "pc-1", "succeeded"), row(2, "pc-2", "failed", reason="no agent")]
    listed = {
        "id": 12,
        "task_name": "hello",
        "kind": "client",
        "status": "succeeded",
        "created_at": T0,
        "ended_at": T0 + 60,
        "version": 3,
        "total": 2,
        "succeeded": 1,
        "failed": 1,
        "pending": 0,
    }
    summary = schema.run(listed)
    detail = schema.run_detail(view("client", "run-script", instances))
    assert tuple(summary) == schema.RUN_FIELDS
    assert {k: detail[k] for k in schema.RUN_FIELDS} == summary
    assert detail["definition"]["type"] == "run-script"


def test_no_unix_time_and_no_old_name_is_left_in_a_run():
    steps = [
        row(1, "pc-1", "succeeded"),
        row(2, "pc-1", "succeeded", parent_id=1, step="a"),
        row(3, "pc-1", "failed", parent_id=1, step="b", reason="exit 3"),
    ]
    detail = schema.run_detail(view("client-job", "client-job", steps))
    text = json.dumps(detail)
    for old in ("created_at", "ended_at", "started_at", "task_name", '"id"'):
        assert old not in text
    (pc,) = detail["computers"]
    assert [s["step"] for s in pc["steps"]] == ["a", "b"]
    for s in pc["steps"]:
        assert parses_as_utc(s["started"]) < parses_as_utc(s["finished"])
    assert pc["steps"][1]["reason"] == "exit 3" and pc["steps"][0]["reason"] is None


def test_a_task_run_counts_only_its_top_level_rows():
    instances = [row(1, "pc-1", "succeeded"), row(2, "pc-2", "running"), row(3, "pc-3", "stopped")]
    detail = schema.run_detail(view("client", "run-script", instances, status="running"))
    assert (detail["total"], detail["succeeded"], detail["failed"], detail["pending"]) == (
        3,
        1,
        1,
        1,
    )
    assert [i["instance_id"] for i in detail["instances"]] == [1, 2, 3]


def test_csv_has_a_row_per_computer_for_a_task_with_the_whole_output_in_one_field():
    output = 'line one, with a comma\nline "two"\n'
    run = view(
        "client",
        "run-script",
        [row(1, "pc-2", "succeeded", output=output), row(2, "pc-1", "failed")],
    )
    out = io.StringIO()
    schema.write_csv(run, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == schema.CSV_COLUMNS
    assert [(r["computer"], r["step"], r["status"]) for r in rows] == [
        ("pc-1", "", "failed"),
        ("pc-2", "", "succeeded"),
    ]
    assert rows[1]["output"] == output and rows[1]["run_id"] == "12"
    assert rows[0]["return_code"] == "" and parses_as_utc(rows[0]["finished"])


def test_csv_has_the_job_row_then_a_row_per_step_for_a_client_job():
    run = view(
        "client-job",
        "client-job",
        [
            row(1, "pc-1", "succeeded"),
            row(4, "pc-1", "succeeded", parent_id=1, step="second"),
            row(3, "pc-1", "succeeded", parent_id=1, step="first"),
            row(2, "dev-1", "failed", reason="no agent", started_at=None),
        ],
    )
    rows = schema.csv_rows(run)
    assert [(r["computer"], r["step"]) for r in rows] == [
        ("dev-1", ""),
        ("pc-1", ""),
        ("pc-1", "first"),
        ("pc-1", "second"),
    ]
    assert rows[0]["reason"] == "no agent" and rows[0]["started"] is None


def test_every_listed_object_names_its_id_after_itself_and_has_iso_times():
    key = schema.key(
        {
            "role": "agent",
            "name": "pc-1",
            "fingerprint": "SHA256:ab",
            "state": "accepted",
            "address": "127.0.0.1:1",
            "created_at": T0,
            "decided_at": None,
        }
    )
    assert parses_as_utc(key["created"]) and key["decided"] is None
    token = schema.token(
        {
            "id": 4,
            "role": "agent",
            "uses_left": 9,
            "expires_at": T0,
            "created_at": T0,
            "created_by": "admin",
            "revoked_at": None,
        }
    )
    assert token["token_id"] == 4 and parses_as_utc(token["expires"])
    created = schema.token({"id": 5, "role": "agent", "uses": 1, "expires_at": T0, "token": "s"})
    assert created == {
        "token_id": 5,
        "role": "agent",
        "uses_left": 1,
        "expires": schema.when(T0),
        "token": "s",
    }
    audit = schema.audit_row(
        {"id": 7, "at": T0, "who": "a", "action": "x", "detail": "", "outcome": "ok"}
    )
    assert audit["audit_id"] == 7 and parses_as_utc(audit["at"])
    ts = schema.taskserver(
        {
            "name": "ts-1",
            "url": "wss://x:1",
            "online": 1,
            "last_seen": T0,
            "public_key": b"\x01",
            "tls_fingerprint": "f",
            "computers": 3,
        }
    )
    assert ts["online"] is True and "public_key" not in ts


def test_the_general_rule_renames_times_ids_and_flags():
    got = schema.record(
        {"id": 1, "updated_at": T0, "members_at": None, "enabled": 0, "blob": b"x", "n": 2},
        "group_id",
    )
    assert got == {
        "group_id": 1,
        "updated": schema.when(T0),
        "computed": None,
        "enabled": False,
        "n": 2,
    }


def test_an_invalid_document_error_lists_its_problems_by_path():
    message = (
        "task 'x' is invalid (2 problem(s)):\n"
        "  - params.script: must be a string\n"
        "  - timeout_s: must be a number: 1 or more"
    )
    assert schema.error("invalid_document", message) == {
        "error": {
            "code": "invalid_document",
            "message": message,
            "details": [
                {"path": "params.script", "problem": "must be a string"},
                {"path": "timeout_s", "problem": "must be a number: 1 or more"},
            ],
        }
    }
    assert schema.error("unknown_run", "no run with id 9") == {
        "error": {"code": "unknown_run", "message": "no run with id 9"}
    }


def test_an_error_is_one_json_line_on_stderr_with_json_and_a_plain_line_without(capsys):
    schema.print_error(True, "unknown_run", "no run with id 9\nsecond line")
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert json.loads(err)["error"]["code"] == "unknown_run"
    schema.print_error(False, "unknown_run", "no run with id 9")
    assert capsys.readouterr().err == "taskfleet: no run with id 9\n"


def test_a_scheduled_run_names_its_schedule_in_the_list_and_the_detail():
    shown = {**view("client", "run-script", [row(1, "pc-1", "succeeded")]), "schedule": "nightly"}
    listed = {
        **{k: shown[k] for k in ("id", "task_name", "kind", "status", "created_at", "ended_at")},
        "version": 3,
        "schedule": "nightly",
        "total": 1,
        "succeeded": 1,
        "failed": 0,
        "pending": 0,
    }
    detail = schema.run_detail(shown)
    assert schema.run(listed)["schedule"] == detail["schedule"] == "nightly"
    assert {k: detail[k] for k in schema.run(listed)} == schema.run(listed)
