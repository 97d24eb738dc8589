"""The schedule and purge verbs against a real NS process: documents validated with problems at
their field paths (exit 2), list, show, enable/disable/delete, the roles that may use each, the
audit trail, and ``purge --dry-run`` with the NS's --retention-* flags."""

from __future__ import annotations

import json

NOTE = {"name": "note", "type": "write-server-log", "params": {"message": "scheduled"}}

GOOD = """\
name = "nightly"
description = "the nightly note"
run = "note"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
window = { start = "22:00", end = "05:00" }
missed = "run-once"
"""

BAD = """\
name = "broken"
run = "nothing-saved"
every = "15 minutes"
window = { start = "25:00", end = "05:00" }
"""


async def test_schedule_verbs_validate_list_show_switch_and_delete(fleet, tmp_path):
    await fleet.server()
    async with fleet.admin() as c:
        await c.call("task.add", document=NOTE)
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    code, _, err = await fleet.cli("schedule", "add", str(bad))
    assert code == 2, err
    assert "every: '15 minutes' is not a duration" in err
    assert "window.start: must be a time" in err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('name = "u"\nrun = "nothing-saved"\nevery = "15m"\n')
    code, _, err = await fleet.cli("schedule", "add", str(unknown))
    assert code == 2 and "run: no task or job named 'nothing-saved'" in err, err

    good = tmp_path / "nightly.toml"
    good.write_text(GOOD)
    code, out, err = await fleet.cli("schedule", "add", str(good))
    assert code == 0, err
    assert "added schedule nightly: runs note" in out
    # The trail names what was saved, whatever the file was called.
    audit = await fleet.cli_json("audit", "--limit", "5")
    (saved,) = [a for a in audit if a["action"] == "schedule.add" and a["outcome"] == "ok"]
    assert "name='nightly'" in saved["detail"] and "run='note'" in saved["detail"], saved
    (row,) = await fleet.cli_json("schedules")
    assert row["name"] == "nightly" and row["enabled"] and row["last"] is None
    assert row["next"].endswith(("T01:00:00Z", "T02:00:00Z"))  # 03:00 in Berlin

    code, out, err = await fleet.cli("schedule", "show", "nightly")
    assert code == 0, err
    assert 'cron = "0 3 * * *"' in out and 'missed = "run-once"' in out
    assert out.count("\n#   20") == 5

    code, out, _ = await fleet.cli("schedule", "disable", "nightly")
    assert code == 0 and "schedule nightly disabled" in out
    (row,) = await fleet.cli_json("schedules")
    assert not row["enabled"] and row["next"] is None
    code, _, err = await fleet.cli("schedule", "show", "nope")
    assert code == 2 and "no schedule named 'nope'" in err
    code, out, _ = await fleet.cli("schedule", "delete", "nightly")
    assert code == 0 and "deleted schedule nightly" in out
    assert await fleet.cli_json("schedules") == []

    async with fleet.admin() as c:
        audit = await c.call("audit.list")
    actions = [a["action"] for a in audit if a["who"] == "admin"]
    for action in ("schedule.add", "schedule.disable", "schedule.delete"):
        assert action in actions


async def test_roles_for_schedules_and_purge(fleet, tmp_path):
    await fleet.server("ns", 0, "--retention-runs", "30d", "--retention-log", "forever")
    async with fleet.admin() as c:
        await c.call("task.add", document=NOTE)
        viewer = (await c.call("admins.add", name="vera", role="viewer"))["token"]
        operator = (await c.call("admins.add", name="otto", role="operator"))["token"]
    doc = tmp_path / "every.json"
    doc.write_text(json.dumps({"name": "often", "run": "note", "every": "15m"}))

    code, _, err = await fleet.cli("schedule", "add", str(doc), token=viewer)
    assert code == 2 and "needs the role operator" in err, err
    code, out, err = await fleet.cli("schedule", "add", str(doc), token=operator)
    assert code == 0, err
    code, out, err = await fleet.cli("schedules", token=viewer)
    assert code == 0 and "often" in out and "every 15m" in out, err
    code, _, err = await fleet.cli("schedule", "disable", "often", token=viewer)
    assert code == 2 and "needs the role operator" in err

    code, _, err = await fleet.cli("purge", "--dry-run", token=operator)
    assert code == 2 and "needs the role admin" in err
    code, out, err = await fleet.cli("purge", "--dry-run")
    assert code == 0, err
    assert "WOULD DELETE (DRY RUN)" in out and "kept for ever" in out
    dry = await fleet.cli_json("purge", "--dry-run")
    assert dry["cutoffs"]["log"] is None and dry["cutoffs"]["runs"].endswith("Z")
    done = await fleet.cli_json("purge")
    assert done["dry_run"] is False and done["runs"] == dry["runs"] == 0


async def test_unknown_names_and_schedules_that_never_fire_are_usage_errors(fleet, tmp_path):
    """``schedule show|enable|disable|delete NOPE --json`` prints the one JSON error shape
    (docs/json.md) with exit 2; a window no time of the schedule falls in, and an ``at`` in the
    past, are refused at save with exit 2 and the field to fix."""
    await fleet.server()
    async with fleet.admin() as c:
        await c.call("task.add", document=NOTE)
    for action in ("show", "enable", "disable", "delete"):
        code, out, err = await fleet.cli("schedule", action, "nope", "--json")
        assert code == 2 and out == "", (action, err)
        error = json.loads(err.strip().splitlines()[-1])["error"]
        assert error["code"] == "unknown_schedule", action
        assert error["message"].startswith("no schedule named 'nope'")

    never = tmp_path / "never.toml"
    never.write_text(
        'name = "never"\nrun = "note"\ncron = "0 3 * * *"\n'
        'window = { start = "22:00", end = "23:00" }\n'
    )
    code, _, err = await fleet.cli("schedule", "add", str(never))
    assert code == 2, err
    assert "window: no time of this schedule falls in its window in the next 366 days" in err
    past = tmp_path / "past.toml"
    past.write_text('name = "past"\nrun = "note"\nat = "2020-01-01T00:00:00+00:00"\n')
    code, _, err = await fleet.cli("schedule", "add", str(past))
    assert code == 2, err
    assert "at: 2020-01-01T00:00:00+00:00 is in the past; give a future time" in err
    huge = tmp_path / "huge.toml"
    huge.write_text('name = "huge"\nrun = "note"\nevery = "99999999999d"\n')
    code, _, err = await fleet.cli("schedule", "add", str(huge))
    assert code == 2 and "every: at most 366d; use cron or at for rarer times" in err, err
    assert await fleet.cli_json("schedules") == []
