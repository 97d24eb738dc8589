"""The script runner shared by agent, TS and NS: real interpreters, real processes."""

from __future__ import annotations

import asyncio

from protocol.states import InstanceState
from protocol.tasks import CATALOG, validate_params
from runtime.runner import ScriptRun
from tests.helpers import until

TOKENS = {"COMPUTERNAME": "pc-7", "COMPUTERID": "7", "TASKSERVER": "ts-1", "RUNID": "42"}


def params(**given):
    """Parameters with the schema's defaults, as the NS stores them."""
    problems: list = []
    out = validate_params(CATALOG["run-script"], given, problems)
    assert not problems, problems
    return out


async def test_tokens_are_replaced_and_output_captured():
    """%COMPUTERNAME% and friends are replaced in the script; stdout and stderr are kept."""
    run = ScriptRun(
        params(script="echo %COMPUTERNAME% %COMPUTERID% %TASKSERVER% %RUNID%\necho oops >&2"),
        TOKENS,
        10,
    )
    out = await run.run()
    assert out.state == InstanceState.SUCCEEDED and out.return_code == 0
    assert out.output == "pc-7 7 ts-1 42\noops\n"
    assert (
        out.started_at is not None and out.ended_at is not None and out.ended_at >= out.started_at
    )


async def test_parameters_are_data_not_shell():
    """A token value with shell syntax is text in the script file, never evaluated as a command line."""
    tokens = {**TOKENS, "COMPUTERNAME": "x; echo injected"}
    out = await ScriptRun(params(script="printf '%s\\n' '%COMPUTERNAME%'"), tokens, 10).run()
    assert out.output == "x; echo injected\n"


async def test_return_code_decides_status_and_success_codes_are_configurable():
    """A non-zero exit fails with a reason; listing it in success_codes makes it a success."""
    failed = await ScriptRun(params(script="exit 3"), TOKENS, 10).run()
    assert failed.state == InstanceState.FAILED and failed.return_code == 3
    assert "return code 3" in failed.reason
    ok = await ScriptRun(params(script="exit 3", success_codes=[0, 3]), TOKENS, 10).run()
    assert ok.state == InstanceState.SUCCEEDED


async def test_output_beyond_the_limit_is_cut_with_a_marker():
    """Only output_limit_bytes are kept; a marker says how much was dropped."""
    out = await ScriptRun(
        params(script="head -c 5000 /dev/zero | tr '\\0' a", output_limit_bytes=100), TOKENS, 10
    ).run()
    assert out.output.startswith("a" * 100)
    assert out.output.endswith("[output cut: 4900 more bytes]")


async def test_timeout_kills_the_process_group():
    """A script past its time limit is killed with its children and ends `timed_out`."""
    out = await asyncio.wait_for(
        ScriptRun(params(script="sleep 30 & sleep 30"), TOKENS, 0.5).run(), 10
    )
    assert out.state == InstanceState.TIMED_OUT
    assert "time limit" in out.reason


async def test_stop_ends_a_run_as_stopped():
    """stop() kills the running script; the outcome is `stopped`."""
    run = ScriptRun(params(script="sleep 30"), TOKENS, 60)
    task = asyncio.create_task(run.run())

    async def started():
        return run._proc is not None

    await until(started, "the script started", 10)
    run.stop()
    out = await asyncio.wait_for(task, 10)
    assert out.state == InstanceState.STOPPED


async def test_python_interpreter_env_and_cwd(tmp_path):
    """interpreter=python runs Python; env values get tokens; cwd is honoured."""
    script = "import os\nprint(os.environ['WHO'], os.getcwd())"
    p = params(
        interpreter="python", script=script, env={"WHO": "%COMPUTERNAME%"}, cwd=str(tmp_path)
    )
    out = await ScriptRun(p, TOKENS, 10).run()
    assert out.state == InstanceState.SUCCEEDED, out
    assert out.output.strip() == f"pc-7 {tmp_path}"


async def test_missing_interpreter_fails_with_a_reason():
    """An interpreter not installed here fails at once with a reason a person can act on."""
    import shutil

    missing = next(
        i for i in ("powershell", "cmd") if not shutil.which(i) and not shutil.which("pwsh")
    )
    out = await ScriptRun(params(interpreter=missing, script="x"), TOKENS, 10).run()
    assert out.state == InstanceState.FAILED
    assert "not installed" in out.reason
