"""Outbox rows: what a stored report turns back into."""

from __future__ import annotations

import json

from agent.store import report_from_row, report_to_row
from protocol.messages import Report
from protocol.states import InstanceState


def test_a_stored_report_comes_back_field_for_field():
    report = Report(
        instance_id=7,
        state=InstanceState.FAILED,
        step="s2",
        return_code=3,
        output="é\x00 out",
        reason="exit 3",
        started_at=1.5,
        ended_at=2.25,
        computer="pc-1",
    )
    row = report_to_row(report)
    assert isinstance(row, bytes)
    assert report_from_row(row) == report


def test_an_outbox_row_written_as_json_by_an_earlier_build_still_reads():
    row = json.dumps({"instance_id": 9, "state": "succeeded", "return_code": 0, "gone": 1})
    back = report_from_row(row)
    assert (back.instance_id, back.state, back.return_code) == (9, "succeeded", 0)
