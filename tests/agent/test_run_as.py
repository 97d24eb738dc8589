"""Who run-script's run_as starts a script as, decided by the agent's own user: root switches,
anyone else refuses another user (it never runs the script as itself instead); and what the
script as that user gets: a login's environment (none of the root agent's variables) and only
a working folder it may enter itself."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from agent.tasktypes.run_script import RunAsRefused, resolve_run_as
from protocol.states import InstanceState
from runtime.runner import SAFE_PATH, Account, Outcome, ScriptRun


def _nobody() -> Account:
    assert os.geteuid() == 0, "these tests need root (as CI and this sandbox have)"
    account = resolve_run_as("nobody")
    assert account is not None
    return account


async def _run_as_nobody(script: str, **params: object) -> Outcome:
    run = ScriptRun({"script": script, **params}, {"COMPUTERNAME": "pc-1"}, 30, account=_nobody())
    return await run.run()


def test_root_runs_as_the_named_user_with_its_groups_and_home() -> None:
    entry = pwd.getpwnam("nobody")
    account = resolve_run_as("nobody", euid=0)
    assert account is not None
    assert (account.name, account.uid, account.gid) == ("nobody", entry.pw_uid, entry.pw_gid)
    assert account.home == entry.pw_dir
    assert set(account.groups) == set(os.getgrouplist("nobody", entry.pw_gid))


def test_an_agent_that_is_not_root_refuses_another_user() -> None:
    """The refusal says the agent must run as root, which user it runs as, and what to do."""
    me = pwd.getpwnam("nobody")
    with pytest.raises(RunAsRefused) as info:
        resolve_run_as("root", euid=me.pw_uid)
    assert str(info.value) == (
        "run_as 'root': the agent must run as root to start a script as another user"
        " (it runs as 'nobody'); run the agent as root, or leave run_as empty"
    )


def test_the_agents_own_user_or_none_changes_nothing() -> None:
    """run_as naming the agent's own user, or empty, runs the script as the agent does."""
    nobody = pwd.getpwnam("nobody").pw_uid
    assert resolve_run_as("nobody", euid=nobody) is None
    assert resolve_run_as("root", euid=0) is None
    assert resolve_run_as("", euid=nobody) is None


def test_an_unknown_user_is_refused_by_name() -> None:
    with pytest.raises(RunAsRefused) as info:
        resolve_run_as("no-such-user-here", euid=0)
    assert str(info.value) == "run_as 'no-such-user-here': no such user on this computer"


async def test_a_script_run_as_another_user_gets_a_login_environment_only(monkeypatch) -> None:
    """A secret in the root agent's environment does not reach a run_as script; PATH is a
    login's, the locale and time zone are kept, HOME/USER/LOGNAME/SHELL are the user's, and the
    task's env and the tokens come on top."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-secret")
    monkeypatch.setenv("PATH", "/root/bin:" + os.environ.get("PATH", ""))
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TZ", "UTC")
    out = await _run_as_nobody("env", env={"GREETING": "hi %COMPUTERNAME%", "PATH": SAFE_PATH})
    assert out.state is InstanceState.SUCCEEDED, out
    env = dict(line.split("=", 1) for line in out.output.splitlines() if "=" in line)
    entry = pwd.getpwnam("nobody")
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "agent-secret" not in out.output
    assert env["PATH"] == SAFE_PATH
    assert (env["LANG"], env["LC_TIME"], env["TZ"]) == ("C.UTF-8", "C", "UTC")
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (entry.pw_dir, "nobody", "nobody")
    assert env["SHELL"] == entry.pw_shell
    assert (env["GREETING"], env["TASKFLEET_COMPUTERNAME"]) == ("hi pc-1", "pc-1")


async def test_a_working_dir_the_user_cannot_reach_fails_with_folder_and_user(tmp_path) -> None:
    """A world-readable folder inside a root-only (0700) one: nobody could not reach it, so the
    script does not start there (root entering it for nobody would hand over its files)."""
    closed = tmp_path / "rootonly"
    public = closed / "pub"
    public.mkdir(parents=True)
    (public / "s.txt").write_text("topsecret\n")
    closed.chmod(0o700)
    public.chmod(0o755)
    out = await _run_as_nobody("cat s.txt", working_dir=str(public))
    assert out.state is InstanceState.FAILED, out
    assert "topsecret" not in out.output
    assert out.reason == (
        f"working_dir {str(public)!r} is not reachable by user 'nobody'"
        " (it cannot enter that folder or one above it)"
    )


async def test_a_working_dir_the_user_can_reach_is_where_the_script_starts() -> None:
    folder = Path(tempfile.mkdtemp(prefix="taskfleet-test-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        out = await _run_as_nobody("pwd; id -un", working_dir=str(folder))
        assert out.state is InstanceState.SUCCEEDED, out
        assert out.output.splitlines() == [str(folder), "nobody"]
    finally:
        shutil.rmtree(folder)
