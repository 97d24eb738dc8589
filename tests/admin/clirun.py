"""Run the ``taskfleet`` command as a real process with a chosen environment (the profile and
completion tests need one without the fleet's flags, which ``Fleet.cli`` always adds)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

SETTINGS = (
    "TASKFLEET_TOKEN",
    "TASKFLEET_SERVER",
    "TASKFLEET_SERVER_FINGERPRINT",
    "TASKFLEET_CA",
    "TASKFLEET_INSECURE",
    "TASKFLEET_PROFILE",
    "TASKFLEET_LOG_LEVEL",
)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with no taskfleet setting, HOME and XDG_CONFIG_HOME under
    ``home`` (so no real profile file is read), and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


async def taskfleet(
    *args: str, env: dict[str, str], timeout_s: float = 60.0
) -> tuple[int, str, str]:
    """``taskfleet ARGS`` as a process; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "admin",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
