"""Issue 18 item 12: tokens stay off command lines, data stays private, scripts get no secrets.

Real processes: an NS and an agent started with taskfleet's secrets in their environment, the
agent enrolled with ``--enrol-token-file``, scripts that print their whole environment on the NS
(run-script-on-server) and on the agent (run-script), and an admin verb with ``--token-file``.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

from tests.helpers import Fleet, task_doc, wait_run

DECOYS = {
    "TASKFLEET_TOKEN": "tfa_decoy-admin-token",
    "TASKFLEET_ENROL_TOKEN": "tfe_decoy-enrol-token",
    "TASKFLEET_SMTP_PASSWORD": "decoy-smtp-password",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def env_of(fleet: Fleet, tmp_path: Path, name: str, type: str, *computers: str) -> str:
    (tmp_path / f"{name}.toml").write_text(task_doc(name, "env", type=type, timeout_s=30))
    code, _, err = await fleet.cli("task", "add", str(tmp_path / f"{name}.toml"))
    assert code == 0, err
    async with fleet.admin() as c:
        targets = {"computers": list(computers)} if computers else {}
        started = await c.call("run.start", task=name, **targets)
        final = await wait_run(c, started["run_id"], 30)
    assert final["status"] == "succeeded", final
    (inst,) = final["instances"]
    return str(inst["output"])


def assert_clean(env_text: str, *secrets: str) -> None:
    names = {line.split("=", 1)[0] for line in env_text.splitlines() if "=" in line}
    assert not names & set(DECOYS), sorted(names & set(DECOYS))
    for secret in (*DECOYS.values(), *secrets):
        assert secret not in env_text
    assert "TASKFLEET_RUNID" in names and "TASKFLEET_COMPUTERNAME" in names, sorted(names)


@pytest.mark.sqlite_only  # checks the mode of DATA/server.db among the files
async def test_secrets_stay_off_command_lines_out_of_scripts_and_private_on_disk(
    fleet: Fleet, tmp_path, monkeypatch
):
    """Attack: read a token from `ps` (/proc/PID/cmdline) of an agent; dump a script's environment
    on the NS and on an agent started with every taskfleet secret in its environment; read the
    data folders and databases as another user. Must hold: the agent enrolled from
    --enrol-token-file (which beats a wrong TASKFLEET_ENROL_TOKEN) and its command line holds no
    token; no script sees TASKFLEET_TOKEN, TASKFLEET_ENROL_TOKEN, TASKFLEET_SMTP_PASSWORD or the
    real tokens, but sees the documented TASKFLEET_<TOKEN> values; data folders are 0700 and
    databases 0600; --token-file works and --token warns that it is visible in ps."""
    for key, value in DECOYS.items():
        monkeypatch.setenv(key, value)  # inherited by every process started below
    await fleet.server()
    token_file = tmp_path / "enrol.token"
    token_file.write_text(fleet.enrol_token + "\n")
    token_file.chmod(0o600)
    agent = await fleet._proc(
        "pc-1",
        [
            "agent",
            "--server",
            fleet.ns.url,
            "--data",
            str(tmp_path / "pc-1"),
            "--name",
            "pc-1",
            "--enrol-token-file",
            str(token_file),
            *fleet.trust_args(),
        ],
    ).start(wait_ready=False)
    await fleet.wait_online(["pc-1"])
    assert agent.proc is not None
    cmdline = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes().decode()
    assert "--enrol-token-file" in cmdline and fleet.enrol_token not in cmdline

    real = (fleet.enrol_token, fleet.admin_token)
    assert_clean(await env_of(fleet, tmp_path, "env-ns", "run-script-on-server"), *real)
    assert_clean(await env_of(fleet, tmp_path, "env-agent", "run-script", "pc-1"), *real)

    for folder, db in ((tmp_path / "ns", "server.db"), (tmp_path / "pc-1", "agent.db")):
        assert mode(folder) == 0o700, folder
        for path in folder.glob(db + "*"):
            assert mode(path) == 0o600, path
    assert mode(tmp_path / "ns" / "builtin-taskservice.db") == 0o600

    admin_file = tmp_path / "admin.token"
    admin_file.write_text(fleet.admin_token)
    base = [sys.executable, "-m", "admin", "computers", "--server", fleet.ns.url]
    for how in (["--token-file", str(admin_file)], ["--token", fleet.admin_token]):
        proc = await asyncio.create_subprocess_exec(
            *base,
            *how,
            *fleet.trust_args(),
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TASKFLEET_TOKEN": "tfa_wrong"},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert b"pc-1" in out
        warned = b"--token is visible to every user" in err and b"--token-file" in err
        assert warned == (how[0] == "--token"), err.decode()
