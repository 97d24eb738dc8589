"""Who run-script's run_as starts a script as, decided by the agent's own user: root switches,
anyone else refuses another user (it never runs the script as itself instead)."""

from __future__ import annotations

import os
import pwd

import pytest

from agent.tasktypes.run_script import RunAsRefused, resolve_run_as


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
