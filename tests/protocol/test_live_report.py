"""The ``live`` field of a report: on the wire only when set, checked like any field, and
invisible to a receiver that does not know it (docs/protocol.md, "Live output")."""

from __future__ import annotations

import pytest

from protocol.errors import MessageError
from protocol.messages import Live, Report, Reports, from_wire, to_wire


def test_a_report_without_live_output_has_no_live_key_on_the_wire() -> None:
    """Results and progress cost the same bytes as before the field existed."""
    wire = to_wire(Reports(id="1", items=[Report(instance_id=1, state="succeeded")]))
    assert "live" not in wire["items"][0]
    back = from_wire(wire)
    assert isinstance(back, Reports) and back.items[0].live is None


def test_a_piece_of_live_output_round_trips() -> None:
    piece = Report(
        instance_id=7, state="running", step="s", live=Live(text="line\n", skipped=3, at=1.5)
    )
    wire = to_wire(Reports(id="2", items=[piece]))
    assert wire["items"][0]["live"] == {"text": "line\n", "skipped": 3, "at": 1.5}
    assert from_wire(wire) == Reports(id="2", items=[piece])


def test_a_receiver_that_does_not_know_live_sees_a_running_report() -> None:
    """What an older relay or NS decodes: the same map without the field it ignores."""
    wire = to_wire(
        Reports(id="3", items=[Report(instance_id=7, state="running", live=Live(text="x"))])
    )
    older = {**wire, "items": [{k: v for k, v in wire["items"][0].items() if k != "live"}]}
    (report,) = from_wire(older).items  # type: ignore[attr-defined]
    assert report == Report(instance_id=7, state="running")


def test_mistyped_live_output_is_refused_with_its_path() -> None:
    wire = to_wire(Reports(id="4", items=[Report(instance_id=7, state="running")]))
    wire["items"][0]["live"] = {"text": 5}
    with pytest.raises(MessageError, match=r"items\[0\]\.live\.text"):
        from_wire(wire)
