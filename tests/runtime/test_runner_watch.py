"""How the runner watches a script's process (issue 22, target 3): from the event loop (a pidfd
for its end, the loop's reader for its output), with one thread per script where the kernel has
no pidfd; the script's folder is removed after its result. Real processes throughout."""

from __future__ import annotations

import os

from protocol.states import InstanceState
from protocol.tasks import CATALOG, validate_params
from runtime import runner
from runtime.runner import ScriptRun
from tests.helpers import until


def params(**given):
    """Parameters with the schema's defaults, as the NS stores them."""
    problems: list = []
    out = validate_params(CATALOG["run-script"], given, problems)
    assert not problems, problems
    return out


SCRIPT = 'pwd\nprintf "%0.s-" $(seq 1 70000)\necho\nexit 3'
"""Prints its folder, then more than one pipe read's worth (64 KiB), then fails with 3."""


async def check_watched(script_run: ScriptRun) -> None:
    out = await script_run.run()
    assert out.state == InstanceState.FAILED and out.return_code == 3
    folder, dashes = out.output.split("\n", 2)[:2]
    assert dashes == "-" * 70000
    assert os.path.basename(folder).startswith("taskfleet-")

    async def removed() -> bool:
        return not os.path.exists(folder)

    await until(removed, "the script's folder removed after its result", 10)


async def test_a_script_is_watched_from_the_loop_its_output_whole_and_its_folder_removed():
    """Exit status and every byte of output come back through the loop's own watchers; the
    folder the script ran in is gone shortly after."""
    await check_watched(ScriptRun(params(script=SCRIPT, output_limit_bytes=200_000), {}, 30))


async def test_without_a_pidfd_a_thread_waits_for_the_script(monkeypatch):
    """A kernel older than 5.3 (or not Linux) has no pidfd: the same script, the same result,
    and a time-out still ends it."""

    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(runner.os, "pidfd_open", no_pidfd)
    await check_watched(ScriptRun(params(script=SCRIPT, output_limit_bytes=200_000), {}, 30))
    out = await ScriptRun(params(script="sleep 30"), {}, 0.3).run()
    assert out.state == InstanceState.TIMED_OUT and "SIGTERM" in out.reason


async def test_what_a_script_left_running_still_ends_with_it():
    """The sweep after a script skips its scan only when this process has no child at all: a
    background process the script left (now a child of this one) is found and ended."""
    out = await ScriptRun(params(script="sleep 30 &\necho $!"), {}, 30).run()
    assert out.state == InstanceState.SUCCEEDED
    pid = int(out.output.strip())

    async def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await until(gone, "the background process ended with its script", 10)
