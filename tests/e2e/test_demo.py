"""The main job: ``taskfleet demo`` runs as a real process and exits 0."""

from __future__ import annotations

import asyncio
import sys


async def test_demo_runs_a_task_on_every_agent_and_exits_0():
    """`taskfleet demo --agents 4` starts NS, TS and 4 agents, every one succeeds, exit 0."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "admin",
        "demo",
        "--agents",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    for i in range(1, 5):
        assert f"hello from demo-agent-{i:02d}" in text
    assert "every computer succeeded" in text
