"""Issue 18, trust, with real processes: role-bound enrolment tokens and admin names at the CLI."""

from __future__ import annotations

from tests.helpers import Fleet, until


def rows(out: str) -> list[list[str]]:
    """A CLI table's rows as lists of cells (the header is the first row)."""
    return [line.split() for line in out.splitlines() if line.strip() and not line.startswith("-")]


async def test_an_agent_token_does_not_enrol_a_task_server_process(fleet: Fleet):
    """Attack: a real `taskfleet taskserver` started with an endpoint's token. It is refused
    (its log says the token is for agents), no use is spent and no key is kept. With a token
    made by `taskfleet tokens create --for taskserver` it enrols, `taskfleet messages` names it,
    and `taskfleet keys` shows each key's role; `tokens revoke` voids a token, listed revoked."""
    await fleet.server()
    agent_token = fleet.enrol_token
    fleet.ts_enrol_token = agent_token
    rogue = await fleet.taskserver("ts-rogue")

    async def refused():
        return "is for agents, not task servers" in rogue.log()

    await until(refused, "the TS refused for its agent token")
    created = await fleet.cli_json("tokens", "create", "--for", "taskserver")
    assert created["role"] == "taskserver"
    fleet.ts_enrol_token = created["token"]
    await fleet.taskserver("ts-1")
    await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])

    code, out, err = await fleet.cli("keys")
    assert code == 0, err
    table = {r[0]: r for r in rows(out)[1:]}
    assert rows(out)[0][:3] == ["NAME", "ROLE", "STATE"]
    assert table["ts-1"][1:3] == ["taskserver", "accepted"]
    assert table["pc-1"][1:3] == ["agent", "accepted"]
    assert "ts-rogue" not in table
    code, out, err = await fleet.cli("messages")
    assert code == 0, err
    assert "task server 'ts-1' enrolled" in out

    tokens = {t["token_id"]: t for t in await fleet.cli_json("tokens")}
    mine = tokens[created["token_id"]]
    assert mine["role"] == "taskserver" and mine["uses_left"] == 0
    code, out, err = await fleet.cli("tokens", "revoke", str(created["token_id"]))
    assert code == 0 and f"revoked enrolment token #{created['token_id']}" in out, err
    code, out, err = await fleet.cli("tokens")
    assert code == 0, err
    listed = {r[0]: r for r in rows(out)[1:]}
    assert listed[str(created["token_id"])][1:3] == ["taskserver", "revoked"]
    assert listed["1"][1:3] == [
        "agent",
        "usable",
    ]  # the fleet's endpoint token, unspent by the rogue


async def test_the_cli_refuses_an_admin_name_that_fakes_the_audit_trail(fleet: Fleet):
    """`taskfleet admins add '(server)'` is refused before anything is sent, naming the rule;
    the NS refuses it too (tested in tests/server/test_hardening_trust.py)."""
    await fleet.server()
    code, out, err = await fleet.cli("admins", "add", "(server)", "--role", "admin")
    assert code == 2 and "rule for computer names" in err and not out
    code, out, err = await fleet.cli("admins", "list")
    assert code == 0 and "(server)" not in out
