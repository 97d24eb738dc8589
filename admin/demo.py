"""``taskfleet demo``: a whole fleet in one process on loopback, one task across it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time

from admin.client import AdminClient
from admin.views import follow, print_run
from agent.agent import Agent
from runtime import logs
from runtime.tls import ClientTrust
from server.core import NotificationServer
from taskserver.service import TaskServer

SAMPLE_TASK = """
name = "demo-hello"
type = "run-script"
timeout_s = 60
description = "say hello from every agent"
[params]
interpreter = "sh"
script = '''
echo "hello from %COMPUTERNAME% (computer id %COMPUTERID%) via %TASKSERVER%, run %RUNID%"
uname -sm
'''
"""


async def _wait_for(predicate: object, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo: {what} did not happen within {timeout_s:g} s")
        await asyncio.sleep(0.05)


async def demo(n_agents: int) -> int:
    """Start NS + TS + ``n_agents`` agents, run the sample task on all, print the table.

    Whatever fails on the way (a refused token, an agent that stops, a time limit) ends the demo
    with a message, and everything started is stopped: the process never hangs."""
    if n_agents < 1:
        raise ValueError(f"the demo needs at least one agent, not {n_agents}")
    logs.set_level("warning")
    with tempfile.TemporaryDirectory(prefix="taskfleet-demo-") as tmp:
        ns = NotificationServer(data_dir=f"{tmp}/ns")
        ts: TaskServer | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            await ns.start()
            assert ns.first_admin_token is not None
            token = ns.first_admin_token
            trust = ClientTrust(fingerprint=ns.tls_fingerprint)
            async with AdminClient(ns.url, token, trust) as client:
                enrol = (await client.call("tokens.create", ttl_s=600, uses=n_agents))["token"]
                created = await client.call("tokens.create", ttl_s=600, uses=1, role="taskserver")
            ts = TaskServer(
                server_url=ns.url,
                data_dir=f"{tmp}/ts-1",
                name="ts-1",
                trust=trust,
                enrol_token=created["token"],
            )
            await ts.start()
            agents = [
                Agent(
                    server_url=ns.url,
                    name=f"demo-agent-{i:02d}",
                    trust=trust,
                    enrol_token=enrol,
                    data_dir=f"{tmp}/agent-{i:02d}",
                )
                for i in range(1, n_agents + 1)
            ]
            tasks = [asyncio.create_task(a.run()) for a in agents]
            print(
                f"taskfleet demo: NS at {ns.url} (TLS {ns.tls_fingerprint[:23]}...), task server ts-1 at {ts.url}"
            )
            print(f"{n_agents} agents enrol with a one-off token and prove their keys")
            await asyncio.wait_for(ts.connected.wait(), 15)
            async with AdminClient(ns.url, token, trust) as client:

                async def all_online() -> bool:
                    for t in tasks:
                        if t.done():  # an agent stopped (refused for good): say why, at once
                            t.result()
                            raise RuntimeError("demo: an agent stopped")
                    rows = await client.call("computers.list")
                    return sum(1 for r in rows if r["online"]) >= n_agents

                await _wait_for(all_online, f"{n_agents} agents online", 60)
                print(f"all {n_agents} agents registered and connected to ts-1")
                await client.call("task.add", text=SAMPLE_TASK, filename="demo-hello.toml")
                started = await client.call("run.start", task="demo-hello", all=True)
                print(f"run {started['run_id']}: demo-hello on {started['targets']} computers")
                final = await follow(client, started["run_id"], quiet=False)
                print_run(final)
                ok = final["status"] == "succeeded"
                print(
                    "demo finished: every computer succeeded"
                    if ok
                    else "demo finished with failures"
                )
                return 0 if ok else 1
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            if ts is not None:
                await ts.stop()
            await ns.stop()
            sys.stdout.flush()
