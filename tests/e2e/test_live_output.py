"""Live output: what scripts print reaches the admins who watch with ``output``, while the script
still runs, through the built-in task service and through a TS, bounded; `taskfleet watch ID
--output` prints it. Everything is a real ``taskfleet`` process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from admin.client import AdminClient
from protocol.messages import LIVE_TEXT_BYTES
from tests.helpers import Fleet, task_doc, until, wait_run


def _wait_for(path: Path) -> str:
    return f"while [ ! -e '{path}' ]; do sleep 0.05; done"


def _waiting_script(go: Path, gate: Path, before: str = "echo first line") -> str:
    """A script that waits until the test creates ``go`` (it watches by then), prints, then waits
    until the test creates ``gate``, then prints again."""
    return f"{_wait_for(go)}\n{before}\n{_wait_for(gate)}\necho after the gate"


async def _start(fleet: Fleet, c: AdminClient, name: str, script: str, computer: str) -> int:
    await c.call("task.add", text=task_doc(name, script, timeout_s=120), filename=f"{name}.toml")
    return int((await c.call("run.start", task=name, computers=[computer]))["run_id"])


async def _pieces_until(
    c: AdminClient, run_id: int, enough: Any, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """Read this watcher's events until the ``output`` items so far satisfy ``enough``; return
    them. Any other event kind for the run is skipped, but a run that ends first fails the test."""
    items: list[dict[str, Any]] = []

    async def read() -> list[dict[str, Any]]:
        while not enough(items):
            event = await c._events.get()
            assert event is not None, "the connection closed"
            if event.run_id != run_id:
                continue
            assert event.kind != "run", f"the run ended before its output was seen: {items}"
            if event.kind == "output":
                items.extend(event.data["items"])
        return items

    return await asyncio.wait_for(read(), timeout_s)


async def _one_agent(fleet: Fleet, via_ts: bool) -> str:
    await fleet.server()
    if via_ts:
        await fleet.taskserver("ts-1")
        async with fleet.admin() as c:

            async def ts_online() -> bool:
                return any(r["online"] for r in await c.call("taskservers.list"))

            await until(ts_online, "ts-1 connected")
    await fleet.agent("pc-1")
    (row,) = await fleet.wait_online(["pc-1"])
    if via_ts:
        assert row["taskserver"] == "ts-1"
    return "pc-1"


@pytest.mark.parametrize("via_ts", [False, True], ids=["built-in", "through-a-ts"])
async def test_a_line_arrives_while_the_script_still_runs(fleet: Fleet, tmp_path, via_ts):
    """The script prints a line and then cannot end until the test has seen that line through
    ``run.watch`` with ``output``: seeing it proves it came live. Each piece names its instance,
    computer and step; the result still carries the whole output."""
    computer = await _one_agent(fleet, via_ts)
    go, gate = tmp_path / "go", tmp_path / "gate"
    async with fleet.admin() as c:
        run_id = await _start(fleet, c, "live", _waiting_script(go, gate), computer)
        view = await c.call("run.watch", run_id=run_id, output=True)
        assert view["status"] == "running"
        go.touch()
        items = await _pieces_until(
            c, run_id, lambda got: "first line\n" in "".join(i["text"] for i in got)
        )
        assert not gate.exists()  # so the script is still waiting: the line came live
        (instance,) = view["instances"]
        assert {(i["instance_id"], i["computer"], i["step"]) for i in items} == {
            (instance["id"], computer, "")
        }
        assert all(i["skipped"] == 0 and i["at"] > 0 for i in items)
        gate.touch()
        final = await wait_run(c, run_id)
    assert final["status"] == "succeeded"
    assert final["instances"][0]["output"] == "first line\nafter the gate\n"


async def test_output_is_not_sent_to_watchers_who_did_not_ask(fleet: Fleet, tmp_path):
    """A watcher without ``output`` gets its usual events and no ``output`` event, while another
    connection that asked gets the line."""
    computer = await _one_agent(fleet, via_ts=False)
    go, gate = tmp_path / "go", tmp_path / "gate"
    async with fleet.admin() as plain, fleet.admin() as c:
        run_id = await _start(fleet, c, "live", _waiting_script(go, gate), computer)
        await plain.call("run.watch", run_id=run_id)
        await c.call("run.watch", run_id=run_id, output=True)
        go.touch()
        await _pieces_until(c, run_id, lambda got: "first line" in "".join(i["text"] for i in got))
        gate.touch()
        final = await wait_run(c, run_id)
        assert final["status"] == "succeeded"
        kinds = []
        while True:  # the plain watcher's events, up to its run's end
            event = await asyncio.wait_for(plain._events.get(), 30)
            assert event is not None
            kinds.append(event.kind)
            if event.kind == "run":
                break
        assert "output" not in kinds and "instances" in kinds


async def test_a_client_job_step_streams_under_its_step_id(fleet: Fleet, tmp_path):
    """A client job's step prints live too: the pieces name the job's instance and the step."""
    computer = await _one_agent(fleet, via_ts=True)
    go, gate = tmp_path / "go", tmp_path / "gate"
    async with fleet.admin() as c:
        await c.call(
            "task.add", text=task_doc("wait", _waiting_script(go, gate)), filename="wait.toml"
        )
        job = 'name = "j"\ntype = "client-job"\n[[steps]]\nid = "install"\ntask = "wait"\n'
        await c.call("job.add", text=job, filename="j.toml")
        run_id = int((await c.call("run.start", task="j", computers=[computer]))["run_id"])
        view = await c.call("run.watch", run_id=run_id, output=True)
        go.touch()
        items = await _pieces_until(
            c, run_id, lambda got: "first line" in "".join(i["text"] for i in got)
        )
        assert not gate.exists()
        (job_instance,) = [i for i in view["instances"] if i["parent_id"] is None]
        assert {(i["instance_id"], i["step"]) for i in items} == {(job_instance["id"], "install")}
        gate.touch()
        final = await wait_run(c, run_id)
    assert final["status"] == "succeeded"


async def test_a_flood_of_output_comes_in_bounded_pieces(fleet: Fleet, tmp_path):
    """A script that prints 40 KB at once: each piece carries at most LIVE_TEXT_BYTES, the newest,
    and says how many bytes before it were skipped; the result carries all 40 KB (through a TS)."""
    computer = await _one_agent(fleet, via_ts=True)
    go, gate = tmp_path / "go", tmp_path / "gate"
    lines = [f"{n:04d} " + "x" * 995 for n in range(40)]
    flood = "i=0; while [ $i -lt 40 ]; do printf '%04d %s\\n' $i \"$X\"; i=$((i+1)); done"
    before = f"X=$(printf 'x%.0s' $(seq 995))\n{flood}"
    async with fleet.admin() as c:
        run_id = await _start(fleet, c, "flood", _waiting_script(go, gate, before), computer)
        await c.call("run.watch", run_id=run_id, output=True)
        go.touch()

        def accounted(got: list[dict[str, Any]]) -> int:
            return sum(i["skipped"] + len(i["text"].encode()) for i in got)

        items = await _pieces_until(c, run_id, lambda got: accounted(got) >= 40 * 1001)
        assert not gate.exists()
        assert any(i["skipped"] for i in items)
        for item in items:
            assert len(item["text"].encode()) <= LIVE_TEXT_BYTES
        shown = "".join(i["text"] for i in items)
        assert shown.endswith(lines[-1] + "\n")  # the newest part is what went
        assert accounted(items) == 40 * 1001
        gate.touch()
        final = await wait_run(c, run_id)
    assert final["status"] == "succeeded"
    assert final["instances"][0]["output"] == "\n".join([*lines, "after the gate", ""])


async def _cli_proc(fleet: Fleet, *args: str) -> asyncio.subprocess.Process:
    """`taskfleet ARGS` as a real process whose output the test reads as it comes (the token in
    the environment, not on the command line)."""
    assert fleet.ns is not None
    env = {**os.environ, "TASKFLEET_TOKEN": fleet.admin_token}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "admin",
        *args,
        "--server",
        fleet.ns.url,
        *fleet.trust_args(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _lines_until(proc: asyncio.subprocess.Process, want: str) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []

    async def read() -> list[str]:
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"the command ended before printing {want!r}: {seen}"
            seen.append(line.rstrip("\n"))
            if want in line:
                return seen

    return await asyncio.wait_for(read(), 30)


async def test_the_watch_verb_prints_lines_as_they_come(fleet: Fleet, tmp_path):
    """`taskfleet watch ID --output` prints `pc-1 | tick` while the script still ticks (it stops
    only once the test has read that line), then the run's summary and exit 0; with --json, every
    line is one JSON object: the pieces (ISO 8601 UTC times), then the run."""
    computer = await _one_agent(fleet, via_ts=True)
    async with fleet.admin() as c:
        for as_json in (False, True):
            gate = tmp_path / f"gate-{as_json}"
            # Ticks until the gate: whenever the command starts watching, ticks are still coming.
            ticks = f"while [ ! -e '{gate}' ]; do echo tick; sleep 0.2; done"
            run_id = await _start(fleet, c, f"live-{as_json}", ticks, computer)
            proc = await _cli_proc(fleet, "watch", str(run_id), "--output", *["--json"] * as_json)
            seen = await _lines_until(proc, "tick")
            assert not gate.exists()
            gate.touch()
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            lines = [*seen, *out.decode().splitlines()]
            if not as_json:
                assert seen[-1] == f"{computer} | tick"
                assert "succeeded" in out.decode()
                continue
            objects = [json.loads(line) for line in lines]
            first = objects[0]
            assert first["event"] == "output" and first["computer"] == computer
            assert first["run_id"] == run_id and "tick\n" in first["text"]
            assert first["at"].endswith("Z") and "T" in first["at"]
            assert objects[-1]["event"] == "run"
            assert objects[-1]["run"]["status"] == "succeeded"
            assert all(o["event"] == "output" for o in objects[:-1])


async def test_unwatch_ends_one_connections_events_and_output_only(fleet: Fleet, tmp_path):
    """``run.unwatch`` ends the caller's subscription (events and live output) while another
    watcher of the same run keeps both; unwatching again says nothing was watched."""
    computer = await _one_agent(fleet, via_ts=False)
    go, gate = tmp_path / "go", tmp_path / "gate"
    async with fleet.admin() as leaving, fleet.admin() as c:
        run_id = await _start(fleet, c, "live", _waiting_script(go, gate), computer)
        await leaving.call("run.watch", run_id=run_id, output=True)
        await c.call("run.watch", run_id=run_id, output=True)
        assert await leaving.call("run.unwatch", run_id=run_id) == {
            "run_id": run_id,
            "unwatched": True,
        }
        go.touch()
        await _pieces_until(c, run_id, lambda got: "first line" in "".join(i["text"] for i in got))
        gate.touch()
        final = await wait_run(c, run_id)
        assert final["status"] == "succeeded"
        ended = await c.call("run.unwatch", run_id=run_id)
        assert ended == {"run_id": run_id, "unwatched": False}  # the run's end ended it
        await leaving.call("whoami")  # every event sent before this answer has arrived
        left = [leaving._events.get_nowait() for _ in range(leaving._events.qsize())]
        assert [e for e in left if e is not None and e.run_id == run_id] == []
