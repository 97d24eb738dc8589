"""Issue 18 item 9: nothing a script starts outlives it, and a time-out says which signal ended it.

Real interpreters and real processes; each script writes the pids of what it left behind to a
file, and the test checks with ``os.kill(pid, 0)`` that they are gone (killed and reaped: a
zombie would still answer).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from protocol.states import InstanceState
from protocol.tasks import CATALOG, validate_params
from runtime.runner import ScriptRun, become_subreaper
from tests.helpers import until


def params(**given):
    problems: list = []
    out = validate_params(CATALOG["run-script"], given, problems)
    assert not problems, problems
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def pids_in(path: Path, count: int) -> list[int]:
    async def written():
        text = path.read_text() if path.exists() else ""
        return len(text.split()) >= count

    await until(written, f"{count} pids in {path}", 10)
    return [int(p) for p in path.read_text().split()]


async def assert_gone(pids: list[int]) -> None:
    async def gone():
        return not any(alive(p) for p in pids)

    await until(gone, f"processes {pids} gone", 5)


async def test_background_children_die_with_a_script_that_succeeds(tmp_path):
    """Attack: `sleep 3001 &` (quiet, and one holding the output pipe) in a script that exits 0.
    Must hold: the run ends `succeeded`, 0, at once (not at its time limit), and no sleep is left."""
    pids = tmp_path / "pids"
    script = (
        f"sleep 3001 >/dev/null 2>&1 &\necho $! >> {pids}\n"
        f"sleep 3001 &\necho $! >> {pids}\necho done\nexit 0"
    )
    out = await asyncio.wait_for(ScriptRun(params(script=script), {}, 60).run(), 10)
    assert out.state == InstanceState.SUCCEEDED and out.return_code == 0, out
    assert out.output == "done\n"
    await assert_gone(await pids_in(pids, 2))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreaper is Linux-only")
async def test_daemonised_grandchildren_are_caught(tmp_path):
    """Attack: a script daemonises a sleep by double fork (`( sleep & )`, re-parented away from
    the script, still in its group) and one by `setsid` (a new session, out of the group), then
    exits 0. Must hold: both are killed and reaped by the end of the run (the runner is a child
    subreaper, so they were re-parented to it, not to init)."""
    assert become_subreaper()
    pids = tmp_path / "pids"
    script = (
        f"( sleep 3002 >/dev/null 2>&1 & echo $! >> {pids} )\n"
        f"setsid sleep 3003 >/dev/null 2>&1 < /dev/null &\necho $! >> {pids}\n"
        f"while [ $(wc -l < {pids}) -lt 2 ]; do :; done\n"
    )
    out = await asyncio.wait_for(ScriptRun(params(script=script), {}, 60).run(), 10)
    assert out.state == InstanceState.SUCCEEDED, out
    await assert_gone(await pids_in(pids, 2))


async def test_time_out_kills_the_group_and_names_sigterm(tmp_path):
    """Fault: a script (with a background child) runs past its time limit. Must hold: `timed_out`,
    the return code is the signal's (-15), the reason names SIGTERM, and the child is gone."""
    pids = tmp_path / "pids"
    script = f"sleep 3004 &\necho $! >> {pids}\nwait"
    out = await asyncio.wait_for(ScriptRun(params(script=script), {}, 0.5).run(), 10)
    assert out.state == InstanceState.TIMED_OUT, out
    assert out.return_code == -signal.SIGTERM
    assert out.reason == "killed after the time limit of 0.5 s with SIGTERM"
    await assert_gone(await pids_in(pids, 1))


async def test_time_out_of_a_script_that_ignores_sigterm_ends_with_sigkill(tmp_path):
    """Fault: a script that ignores SIGTERM (and so does its child) runs past its limit. Must hold:
    after the grace it is killed with SIGKILL, the return code is -9, the reason says SIGKILL."""
    pids = tmp_path / "pids"
    script = f"trap '' TERM\nsleep 3005 &\necho $! >> {pids}\nwhile :; do sleep 0.1; done"
    out = await asyncio.wait_for(ScriptRun(params(script=script), {}, 0.5).run(), 10)
    assert out.state == InstanceState.TIMED_OUT, out
    assert out.return_code == -signal.SIGKILL
    assert "time limit of 0.5 s with SIGKILL" in out.reason
    await assert_gone(await pids_in(pids, 1))


async def test_stopped_script_leaves_no_children(tmp_path):
    """Fault: an administrator stops a script that started a quiet background child. Must hold:
    the run ends `stopped` and the child is gone with the script."""
    pids = tmp_path / "pids"
    run = ScriptRun(
        params(script=f"sleep 3006 >/dev/null 2>&1 &\necho $! >> {pids}\nsleep 3007"), {}, 60
    )
    task = asyncio.create_task(run.run())
    children = await pids_in(pids, 1)
    run.stop()
    out = await asyncio.wait_for(task, 10)
    assert out.state == InstanceState.STOPPED
    await assert_gone(children)
