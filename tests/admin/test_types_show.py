"""``taskfleet types NAME``: one task type's parameters in full, as a table or JSON; an unknown
type is a usage error naming the known ones."""

from __future__ import annotations

import json

from protocol.tasks import CATALOG


async def test_types_name_shows_each_parameter_in_full(fleet):
    await fleet.server()
    code, out, err = await fleet.cli("types", "run-script")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("run-script (client task): Run a script")
    assert lines[1].split() == ["PARAMETER", "TYPE", "REQUIRED", "ABOUT"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(CATALOG["run-script"].params)
    assert "string" in rows["script"] and "required" in rows["script"]
    assert "default 'sh'" in rows["interpreter"] and "one of sh, bash" in rows["interpreter"]
    assert "list of integer" in rows["success_codes"] and "default [0]" in rows["success_codes"]
    assert "0..524288" in rows["output_limit_bytes"]


async def test_types_name_as_json(fleet):
    await fleet.server()
    shown = await fleet.cli_json("types", "call-web-service-server")
    assert shown["type"] == "call-web-service-server" and shown["kind"] == "server"
    url = {p["name"]: p for p in shown["parameters"]}["url"]
    assert url == {
        "name": "url",
        "type": "string",
        "required": True,
        "default": None,
        "choices": [],
        "minimum": None,
        "maximum": None,
        "pattern": r"https?://\S+",
        "description": "an http:// or https:// URL",
    }


async def test_an_unknown_type_is_a_usage_error_naming_the_known_ones(fleet):
    await fleet.server()
    code, out, err = await fleet.cli("types", "run-scrpit")
    assert code == 2 and out == ""
    assert "no task type 'run-scrpit'" in err
    assert "run-script, run-script-on-server" in err
    code, out, err = await fleet.cli("types", "nope", "--json")
    assert code == 2
    assert json.loads(err.splitlines()[-1])["error"]["message"].startswith(
        "no task type 'nope'; known: "
    )
