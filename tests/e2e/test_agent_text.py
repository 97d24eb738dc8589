"""What a script prints reaches admins harmless, with real ``taskfleet`` processes (review M2, M3,
L13): `watch --output`, `runs show` (table and `--computer`) print terminal escapes as visible
``\\x1b`` text; `runs show --csv` defuses a formula; and a time no date fits, in a row stored
before the NS clamped them, never breaks `runs show --json`/`--csv`/`--computer`."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from tests.e2e.test_live_output import _cli_proc, _lines_until, _one_agent, _start
from tests.helpers import Fleet, wait_run

HOSTILE = r"printf 'hello \033]0;PWNED-TITLE\007\033[31mRED\033[0m \033[2K\rfake line\n'"
FORMULA = """echo '=HYPERLINK("http://evil","x")'"""


async def test_script_escapes_and_formulas_reach_admins_harmless(fleet: Fleet, tmp_path):
    computer = await _one_agent(fleet, via_ts=True)
    gate = tmp_path / "gate"
    script = f"while [ ! -e '{gate}' ]; do {HOSTILE}; sleep 0.2; done"
    async with fleet.admin() as c:
        run_id = await _start(fleet, c, "hostile", script, computer)
        watch = await _cli_proc(fleet, "watch", str(run_id), "--output")
        seen = await _lines_until(watch, "fake line")
        gate.touch()
        rest, err = await watch.communicate()
        assert watch.returncode == 0, err.decode()
        assert (await wait_run(c, run_id))["status"] == "succeeded"
    shown = "\n".join(seen) + rest.decode()
    assert f"{computer} | hello \\x1b]0;PWNED-TITLE\\x07\\x1b[31mRED" in shown
    for args in (
        ("runs", "show", str(run_id)),
        ("runs", "show", str(run_id), "--computer", computer),
    ):
        code, out, err = await fleet.cli(*args)
        assert code == 0, err
        assert "\\x1b[2K\\x0dfake line" in out or "hello \\x1b]0;" in out
        shown += out
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown

    async with fleet.admin() as c:
        formula_run = await _start(fleet, c, "formula", FORMULA, computer)
        assert (await wait_run(c, formula_run))["status"] == "succeeded"
    code, out, err = await fleet.cli("runs", "show", str(formula_run), "--csv")
    assert code == 0, err
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["output"].rstrip("\n") == """'=HYPERLINK("http://evil","x")"""


@pytest.mark.sqlite_only  # writes a row into DATA/server.db itself
async def test_a_stored_time_no_date_fits_does_not_break_a_listing(fleet: Fleet, tmp_path):
    computer = await _one_agent(fleet, via_ts=False)
    async with fleet.admin() as c:
        run_id = await _start(fleet, c, "plain", "echo fine", computer)
        assert (await wait_run(c, run_id))["status"] == "succeeded"
    # As a database written before the NS clamped agents' times may hold it.
    with sqlite3.connect(fleet.root / "ns" / "server.db") as db:
        db.execute("UPDATE instances SET ended_at=1e20 WHERE run_id=?", (run_id,))
    code, out, err = await fleet.cli("runs", "show", str(run_id), "--json")
    assert code == 0, err
    (instance,) = json.loads(out)["instances"]
    assert instance["finished"] == "1e+20"
    for extra in (["--csv"], ["--computer", computer]):
        code, out, err = await fleet.cli("runs", "show", str(run_id), *extra)
        assert code == 0, err
        assert "1e+20" in out and "Traceback" not in err
