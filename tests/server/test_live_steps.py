"""A live piece's step and time at a real in-process NS (review M2, M3): a piece passes only
with no step or a step of its client job (a made-up one, ``\\rpc-2 | ...``, could fake another
computer's lines), and its time is made sane as a result's is. The pieces are handed to the NS
where a relay's batch arrives (``on_reports``), from the computer the instance is for."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from admin.client import AdminClient
from agent.agent import Agent
from protocol.messages import Live, Report
from server.store.runs import AHEAD_S
from tests.helpers import INSECURE, task_doc, until, wait_run

JOB = (
    'name = "j"\ntype = "client-job"\n'
    '[[steps]]\nid = "install"\ntask = "wait"\n'
    '[[steps]]\nid = "later"\ntask = "wait"\n'
)


async def _output_items(c: AdminClient, run_id: int) -> list[dict[str, Any]]:
    """The items of the next ``output`` event of ``run_id`` this watcher gets."""
    while True:
        event = await asyncio.wait_for(c._events.get(), 15)
        assert event is not None, "the connection closed"
        if event.run_id == run_id and event.kind == "output":
            return list(event.data["items"])


async def test_a_piece_names_only_a_step_of_its_job_and_a_sane_time(ns, tmp_path):
    gate = tmp_path / "gate"
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        enrol = (await c.call("tokens.create", uses=1))["token"]
        agent = Agent(
            server_url=ns.url,
            name="pc-1",
            trust=INSECURE,
            enrol_token=enrol,
            data_dir=str(tmp_path / "pc-1"),
        )
        running = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), 15)
            script = f"while [ ! -e '{gate}' ]; do sleep 0.05; done"
            await c.call("task.add", text=task_doc("wait", script), filename="wait.toml")
            await c.call("job.add", text=JOB, filename="j.toml")
            run_id = int((await c.call("run.start", task="j", computers=["pc-1"]))["run_id"])

            async def install_running() -> bool:
                view = await c.call("run.show", run_id=run_id)
                return any(
                    i["step"] == "install" and i["status"] == "running" for i in view["instances"]
                )

            await until(install_running, "the job's first step running")
            view = await c.call("run.watch", run_id=run_id, output=True)
            (job,) = [i for i in view["instances"] if i["parent_id"] is None]

            def piece(step: str, text: str, at: float) -> Report:
                live = Live(text=text, at=at)
                return Report(
                    instance_id=job["id"], state="running", step=step, computer="pc-1", live=live
                )

            now = time.time()
            await ns.on_reports(
                [
                    piece("\rpc-2", "faked\n", now),
                    piece("made-up", "faked\n", now),
                    piece("install", "not a time\n", float("nan")),
                    piece("install", "far ahead\n", 1e20),
                    piece("", "the job's own\n", now),
                ],
                None,
            )
            items = await _output_items(c, run_id)
            assert [(i["step"], i["text"]) for i in items] == [
                ("install", "far ahead\n"),
                ("", "the job's own\n"),
            ]
            assert now + AHEAD_S <= items[0]["at"] <= time.time() + AHEAD_S
            assert items[1]["at"] == now

            # A step of the program that has no row yet passes too (its names are read once).
            async def later_passes() -> bool:
                await ns.on_reports([piece("later", "early\n", time.time())], None)
                return any(i["step"] == "later" for i in await _output_items_now(c, run_id))

            await until(later_passes, "a piece of the job's next step passed")
            gate.touch()
            final = await wait_run(c, run_id)
            assert final["status"] == "succeeded"
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


async def _output_items_now(c: AdminClient, run_id: int) -> list[dict[str, Any]]:
    """The items of the ``output`` events of ``run_id`` already received (none waits)."""
    items: list[dict[str, Any]] = []
    while not c._events.empty():
        event = c._events.get_nowait()
        if event is not None and event.run_id == run_id and event.kind == "output":
            items.extend(event.data["items"])
    return items
