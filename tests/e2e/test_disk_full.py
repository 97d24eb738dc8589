"""A full disk under the NS's data folder: new runs are refused with a clear error, reads go on,
nothing stored is damaged, and the NS takes runs again once there is room."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tests import helpers
from tests.helpers import Fleet, task_doc, wait_run

pytestmark = (
    pytest.mark.sqlite_only
)  # SQLite's full disk under the data folder (PostgreSQL's: docs/operations.md)


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs: a disk the test can fill without touching the machine's own."""
    with helpers.small_disk(tmp_path, "24m") as mount:
        yield mount


async def test_full_disk_refuses_new_runs_and_keeps_serving_reads(
    fleet: Fleet, small_disk, tmp_path
):
    """With its disk full the NS answers `run` with disk_full (exit 2, a message that says what to
    do), still lists runs and shows the earlier one intact; freed space brings runs back."""
    await fleet.server(data_root=small_disk)  # the NS's data folder lives on the small disk
    (tmp_path / "t.toml").write_text(task_doc("ok", "echo fine", type="run-script-on-server"))
    assert (await fleet.cli("task", "add", str(tmp_path / "t.toml")))[0] == 0
    code, out, err = await fleet.cli("run", "ok", "--wait")
    assert code == 0, err
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    code, out, err = await fleet.cli("run", "ok", "--wait")
    assert code == 2 and "disk is nearly full" in err and "free some space" in err
    code, out, err = await fleet.cli("runs")
    assert code == 0 and "ok" in out
    async with fleet.admin() as c:
        first = await c.call("run.show", run_id=1)
    assert first["status"] == "succeeded" and first["instances"][0]["output"].strip() == "fine"
    db = sqlite3.connect(small_disk / "ns" / "server.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    os.remove(filler)
    async with fleet.admin() as c:
        final = await wait_run(c, (await c.call("run.start", task="ok"))["run_id"])
    assert final["status"] == "succeeded"
