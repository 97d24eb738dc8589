"""Text that agents supply (script output, reasons, step names, times) as admins see it: control
characters shown escaped on a terminal, formulas defused in CSV, any stored time shown, and an
unexpected error one line with its exit code (review M2, M3, L13)."""

from __future__ import annotations

import io
import json

import pytest

from admin import completion
from admin.liveview import Lines, output_json
from admin.output import iso, printable, short_time, table
from admin.schema import write_csv
from admin.views import print_computer, print_run

HOSTILE = "hello \x1b]0;PWNED-TITLE\x07\x1b[31mRED\x1b[0m \x1b[2K\rfake line\x9b\x7f"


def _no_control(text: str) -> None:
    bad = [c for c in text if (ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F]
    assert not bad, f"control characters reach the terminal: {bad!r} in {text!r}"


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_the_rest():
    assert printable(HOSTILE) == (
        "hello \\x1b]0;PWNED-TITLE\\x07\\x1b[31mRED\\x1b[0m \\x1b[2K\\x0dfake line\\x9b\\x7f"
    )
    assert printable("tab\tand\nnewline, é, 字, ✓") == "tab\tand\nnewline, é, 字, ✓"
    assert printable("plain") == "plain"


def _instance(**over):
    row = {
        "id": 3,
        "parent_id": None,
        "step": "",
        "computer": "pc-1",
        "status": "failed",
        "return_code": 1,
        "output": HOSTILE + '\n=HYPERLINK("http://evil","x")\n',
        "reason": "why \x1b[2K\r",
        "started_at": 1e20,
        "ended_at": float("nan"),
    }
    row.update(over)
    return row


def _run(*instances):
    return {
        "id": 9,
        "task_name": "t",
        "kind": "client",
        "status": "failed",
        "definition": {"type": "run-script"},
        "instances": list(instances),
    }


def test_run_table_and_computer_detail_print_no_control_characters(capsys):
    print_run(_run(_instance()))
    table_out = capsys.readouterr().out
    _no_control(table_out)
    assert "\\x1b]0;PWNED-TITLE" in table_out or "why \\x1b[2K\\x0d" in table_out
    print_computer(_run(_instance()), "pc-1")
    detail = capsys.readouterr().out
    _no_control(detail)
    assert "\\x1b[2K\\x0dfake line" in detail and "reason: why \\x1b[2K\\x0d" in detail
    assert "started 1e+20, ended nan" in detail  # times no date fits: shown as numbers


def test_table_cells_are_printable():
    out = table([{"a": "x\x1b[31my"}], [("a", "a")])
    assert out.splitlines()[1] == "x\\x1b[31my"


def test_watch_lines_escape_text_a_lone_cr_and_the_step_name():
    lines = Lines()
    piece = {"instance_id": 1, "computer": "pc-1", "step": "s\rpc-2", "text": HOSTILE + "\nmore"}
    got = lines.take(piece) + lines.end(1)
    for line in got:
        _no_control(line)
    assert got[0].startswith("pc-1 [s\\x0dpc-2] | hello \\x1b]0;")
    assert got[1] == "pc-1 [s\\x0dpc-2] | more"
    # A line ending in CRLF loses its CR, not escaped: it is a line end.
    assert Lines().take({"instance_id": 2, "computer": "pc-1", "text": "dos\r\n"}) == ["pc-1 | dos"]


def test_a_line_that_never_ends_is_shown_in_pieces_not_held_for_the_whole_run():
    lines = Lines()
    shown: list[str] = []
    for _ in range(10):  # 10 pieces of 1,000 characters, no newline: a progress bar
        shown += lines.take({"instance_id": 3, "computer": "pc-1", "text": "#" * 1000})
    assert shown == ["pc-1 | " + "#" * 5000 + " …"] * 2  # each time past 4 KiB held
    more = lines.take({"instance_id": 3, "computer": "pc-1", "text": "done"})
    assert more == [] and lines.end(3) == ["pc-1 | done"]


def test_times_no_date_fits_are_shown_as_numbers():
    assert iso(1.5) == "1970-01-01T00:00:01.500000Z"
    assert iso(1e20) == "1e+20"
    assert iso(float("nan")) == "nan"
    assert iso(float("-inf")) == "-inf"
    assert iso(None) is None
    assert short_time(1e20) == "1e+20"
    piece = {"instance_id": 1, "computer": "pc-1", "text": "x", "at": 1e20}
    assert json.loads(json.dumps(output_json(4, piece)))["at"] == "1e+20"


def test_csv_defuses_formulas_and_keeps_numbers():
    out = _instance(
        output='=HYPERLINK("http://evil","x")',
        reason="@SUM(1)",
        step="-step",
        started_at=1.0,
        ended_at=2.0,
        return_code=-9,
    )
    stream = io.StringIO()
    write_csv(_run(out, _instance(id=4, computer="pc-2", output="+1", reason="\tx")), stream)
    lines = stream.getvalue().splitlines()
    assert lines[1] == (
        "9,pc-1,'-step,3,failed,-9,1970-01-01T00:00:01.000000Z,1970-01-01T00:00:02.000000Z,"
        '\'@SUM(1),"\'=HYPERLINK(""http://evil"",""x"")"'
    )
    assert lines[2].endswith(",'\tx,'+1")


def test_an_unexpected_error_is_one_line_and_exit_70(monkeypatch, capsys):
    from admin.cli import main

    def broken(top):  # a bug in a verb: what the machine cannot be made to give on purpose
        raise RuntimeError("something we did not foresee")

    monkeypatch.setitem(completion.SCRIPTS, "bash", broken)
    with pytest.raises(SystemExit) as ended:
        main(["completion", "bash"])
    assert ended.value.code == 70
    err = capsys.readouterr().err
    assert err == (
        "taskfleet: internal error: RuntimeError: something we did not foresee; please report it\n"
    )
