"""The hierarchy in the `taskfleet` command, through real processes: `groups add --replicate`,
the listings' `replicated` column (shown only when an item replicates) and their JSON
(`replicate` a boolean, `origin` null for this NS's own items), and a flag that is not a
boolean refused naming it (exit 2)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Fleet, task_doc


async def test_groups_add_replicate_and_the_listings_show_it(fleet: Fleet, tmp_path: Path):
    await fleet.server()
    code, out, err = await fleet.cli("groups", "add", "sites", "--replicate")
    assert code == 0, err
    assert out.strip() == "added group sites (replicated)"
    assert (await fleet.cli("groups", "add", "lab"))[0] == 0
    groups = {g["name"]: g for g in await fleet.cli_json("groups")}
    assert (groups["sites"]["replicate"], groups["sites"]["origin"]) == (True, None)
    assert groups["lab"]["replicate"] is False
    code, out, _ = await fleet.cli("groups")
    header, *lines = out.splitlines()
    assert header.split()[-1] == "REPLICATED" and "FROM" not in header
    (sites,) = [line for line in lines if line.startswith("sites")]
    assert sites.split()[-1] == "yes"

    plain = tmp_path / "plain.toml"
    plain.write_text(task_doc("plain", "echo hi"))
    assert (await fleet.cli("task", "add", str(plain)))[0] == 0
    code, out, _ = await fleet.cli("tasks")
    assert code == 0 and "REPLICATED" not in out  # no hierarchy: the listing as before
    shared = tmp_path / "shared.toml"
    shared.write_text(
        task_doc("shared", "echo hi").replace(
            "[params]", "replicate = true\nremote_start = true\n[params]"
        )
    )
    assert (await fleet.cli("task", "add", str(shared)))[0] == 0
    code, out, _ = await fleet.cli("tasks")
    assert out.splitlines()[0].split()[-1] == "REPLICATED"
    assert [line for line in out.splitlines() if line.startswith("shared")][0].endswith(
        "yes, startable"
    )
    tasks = {t["name"]: t for t in await fleet.cli_json("tasks")}
    assert (tasks["shared"]["replicate"], tasks["shared"]["remote_start"]) == (True, True)
    assert tasks["plain"]["origin"] is None and "replicate" not in tasks["plain"]


async def test_a_flag_that_is_not_a_boolean_is_a_usage_error_naming_it(
    fleet: Fleet, tmp_path: Path
):
    await fleet.server()
    bad = tmp_path / "bad.toml"
    bad.write_text(task_doc("bad", "echo hi").replace("[params]", "remote_start = true\n[params]"))
    code, out, err = await fleet.cli("task", "add", str(bad))
    assert code == 2 and out == ""
    assert "remote_start: needs replicate = true" in err
