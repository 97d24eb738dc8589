"""Issue 18, items 1 (second half) and 2: work identity and authenticity, against real processes.

* A restored backup of the NS database must never make an agent skip new work as a repeat or
  hand a new instance another task's result: instances made after the restore have ids (on the
  wire) that the lost timeline never gave out, and a report carrying an id of that timeline is
  refused.
* An agent runs only what the NS sent: a task server (here a real one, in this process, turned
  rogue) can relay work but not invent or alter it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from protocol import codec
from protocol.messages import Dispatch, Execute, Report, Target, to_wire
from server.store import NewInstance, Store
from server.store.runs import EPOCH_LIMIT, EPOCH_SHIFT, ROW_ID_MASK, wire_id
from taskserver.service import TaskServer
from tests.helpers import Fleet, free_port, task_doc, until, wait_run


async def _save_tasks(fleet: Fleet, scripts: dict[str, str]) -> None:
    async with fleet.admin() as c:
        for name, script in scripts.items():
            await c.call("task.add", text=task_doc(name, script), filename=f"{name}.toml")


async def _run(fleet: Fleet, task: str, computer: str) -> dict[str, Any]:
    async with fleet.admin() as c:
        run_id = (await c.call("run.start", task=task, computers=[computer]))["run_id"]
        return await wait_run(c, run_id)


def _output(final: dict[str, Any]) -> str:
    (inst,) = final["instances"]
    return str(inst["output"]).strip()


async def _restore(fleet: Fleet, backup: Path, port: int, *, kill: bool = False) -> None:
    """Stop the NS, put the backup in place of DATA/server.db (no -wal, no -shm), start it."""
    assert fleet.ns is not None
    fleet.ns.kill(signal.SIGKILL if kill else signal.SIGTERM)
    await fleet.ns.wait()
    data = fleet.root / "ns"
    shutil.copyfile(backup, data / "server.db")
    for extra in ("server.db-wal", "server.db-shm"):
        (data / extra).unlink(missing_ok=True)
    await fleet.server(port=port)


@pytest.mark.sqlite_only  # backup and restore of the SQLite file
async def test_backup_then_restore_built_in_service_runs_new_work_as_its_own(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Attack/fault: back the NS up, run more work (the lost timeline), restore the backup and
    run a new task on the same agent (served by the NS's built-in task service). SQLite hands
    the new instance the row id the lost run had; before, the agent answered with that run's
    kept result, and the new run "succeeded" with another task's output.

    Must hold: `taskfleet backup` writes a 0600 file and refuses to overwrite it without
    --force; after the restore the new task runs on the agent and its output is its own."""
    port = free_port()
    await fleet.server(port=port)
    await fleet.agent("pc-b")
    await fleet.wait_online(["pc-b"])
    await _save_tasks(fleet, {"one": "echo one", "two": "echo two", "three": "echo three"})
    assert _output(await _run(fleet, "one", "pc-b")) == "one"

    backup = tmp_path / "backups" / "ns.db"
    backup.parent.mkdir()
    code, out, err = await fleet.cli("backup", str(backup))
    assert code == 0, err
    assert str(backup) in out
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    code, _, err = await fleet.cli("backup", str(backup))
    assert code != 0 and "exists" in err and "--force" in err, err
    code, _, err = await fleet.cli("backup", str(backup), "--force")
    assert code == 0, err
    (tmp_path / "not-a-db").write_text("keep me")
    code, _, err = await fleet.cli("backup", str(tmp_path / "not-a-db"), "--force")
    assert code != 0 and "not an SQLite database" in err, err
    assert (tmp_path / "not-a-db").read_text() == "keep me"
    with sqlite3.connect(backup) as db:
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)

    lost = await _run(fleet, "two", "pc-b")  # the timeline the restore loses
    assert lost["status"] == "succeeded" and _output(lost) == "two"

    await _restore(fleet, backup, port)
    await fleet.wait_online(["pc-b"])
    final = await _run(fleet, "three", "pc-b")
    assert final["id"] == lost["id"], "the restored NS numbers runs as the lost timeline did"
    assert final["status"] == "succeeded", final
    assert _output(final) == "three", "the new instance got another task's result"


@pytest.mark.sqlite_only  # backup and restore of the SQLite file
async def test_restore_through_a_task_server_runs_new_work_and_refuses_old_ids(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Attack/fault: an agent behind a TS. After a backup, one run ends and another is in
    flight when the NS dies; the TS dies too, holding the in-flight work whose result the agent
    keeps. The backup is restored and two new runs made while the TS is away: they take the
    row ids the lost runs had. Before, the TS dropped the first as a repeat (it never ran) and
    the agent's kept result of the lost in-flight run became the second one's.

    Must hold: both new runs run on the agent and end with their own output; the kept result of
    the lost timeline, reported again, is refused (counted as a foreign report) by its epoch."""
    ns_port, ts_port = free_port(), free_port()
    await fleet.server(port=ns_port)
    ts = await fleet.taskserver("ts-1", ts_port)
    await fleet.agent("pc-t")
    await fleet.wait_online(["pc-t"])
    await _save_tasks(
        fleet,
        {
            "one": "echo one",
            "two": "echo two",
            "slow": "sleep 1; echo slow",
            "three": "echo three",
            "four": "echo four",
        },
    )
    assert _output(await _run(fleet, "one", "pc-t")) == "one"
    backup = tmp_path / "ns.backup"
    code, _, err = await fleet.cli("backup", str(backup))
    assert code == 0, err

    assert _output(await _run(fleet, "two", "pc-t")) == "two"  # lost with the restore
    async with fleet.admin() as c:
        slow = (await c.call("run.start", task="slow", computers=["pc-t"]))["run_id"]

        async def running() -> bool:
            view = await c.call("run.show", run_id=slow)
            return bool(view["instances"][0]["status"] == "running")

        await until(running, "the slow run running on pc-t")
    assert fleet.ns is not None
    fleet.ns.kill(signal.SIGKILL)
    await fleet.ns.wait()

    async def kept() -> bool:
        with sqlite3.connect(fleet.root / "pc-t" / "agent.db") as db:
            return bool(db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1)

    await until(kept, "the slow run's result kept by the agent")
    ts.kill(signal.SIGKILL)
    await ts.wait()

    await _restore(fleet, backup, ns_port, kill=True)
    async with fleet.admin() as c:
        three = (await c.call("run.start", task="three", computers=["pc-t"]))["run_id"]
        four = (await c.call("run.start", task="four", computers=["pc-t"]))["run_id"]
        assert four == slow, "the restored NS numbers runs as the lost timeline did"
        await fleet.taskserver("ts-1", ts_port)
        final_three = await wait_run(c, three)
        final_four = await wait_run(c, four)
        assert final_three["status"] == "succeeded", final_three
        assert _output(final_three) == "three"
        assert final_four["status"] == "succeeded", final_four
        assert _output(final_four) == "four", "a result of the lost timeline was taken"

        async def refused() -> bool:
            stats = await c.call("stats")
            return bool(stats["refused"].get("foreign_report", 0) >= 1)

        await until(refused, "the lost timeline's result refused by the restored NS")
        view = await c.call("run.show", run_id=four)
        assert view["instances"][0]["output"].strip() == "four"


async def test_a_rogue_task_server_cannot_make_an_agent_run_anything(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Attack: a task server (a real one, enrolled and serving the agent, in this process) turns
    rogue and sends the agent `execute`s of its own: one with no authentication, one with made-up
    bytes, one with the NS's genuine MAC for real work but another script, one for a new
    instance carrying that genuine MAC, one with other tokens. Each script would write a file.

    Must hold: the agent runs none of them (no file appears), logs `execute_refused` for each,
    and reports the new instances failed (the relay refuses those reports: work it never gave);
    real work through the same TS still succeeds (through the NS's built-in service: the
    restore test above)."""
    await fleet.server()
    assert fleet.ns is not None
    ts = TaskServer(
        server_url=fleet.ns.url,
        data_dir=str(tmp_path / "rogue-ts"),
        name="ts-rogue",
        trust=fleet.trust(),
        enrol_token=fleet.ts_enrol_token,
    )
    await ts.start()
    try:
        await until(lambda: _true(ts.connected.is_set()), "the TS linked to the NS")
        agent = await fleet.agent("pc-r")
        await fleet.wait_online(["pc-r"])
        assert ts.relay is not None
        relay = ts.relay
        await _save_tasks(fleet, {"real": "sleep 1; echo real"})
        async with fleet.admin() as c:
            run_id = (await c.call("run.start", task="real", computers=["pc-r"]))["run_id"]

            async def held() -> Any:
                return next(iter(relay.held.values()), None)

            genuine = await until(held, "the real work held by the TS")
            assert genuine.mac, "the NS sent no authentication with the work"
            final = await wait_run(c, run_id)
            assert final["status"] == "succeeded" and _output(final) == "real"

        marker = tmp_path / "pwned"
        evil = {
            "name": "evil",
            "type": "run-script",
            "kind": "client",
            "params": {"interpreter": "sh", "script": f"touch {marker}"},
            "timeout_s": 30,
        }
        fresh = genuine.instance_id + 1000
        forged = [
            (fresh, evil, genuine.tokens, b""),
            (fresh + 1, evil, genuine.tokens, os.urandom(32)),
            (genuine.instance_id, evil, genuine.tokens, genuine.mac),  # altered real work
            (fresh + 2, genuine.task, genuine.tokens, genuine.mac),  # a MAC moved to new work
            (fresh + 3, evil, {**genuine.tokens, "COMPUTERNAME": "x"}, genuine.mac),
        ]
        conn = relay.agents["pc-r"]
        for iid, task, tokens, mac in forged:
            await conn.link.send(
                Execute(
                    id=conn.link.next_id(),
                    run_id=genuine.run_id,
                    instance_id=iid,
                    task=task,
                    tokens=tokens,
                    timeout_s=30.0,
                    mac=mac,
                )
            )

        async def all_refused() -> bool:
            return agent.log_path.read_text().count("execute_refused") >= len(forged)

        await until(all_refused, "the agent refusing every forged execute")
        # The new instances were reported failed to the relay, which never gave them.
        await until(
            lambda: _true(relay.refused["foreign_report"] >= len(forged) - 1),
            "the refusals reported (and refused by the relay as work it never gave)",
        )
        assert not marker.exists(), "a forged execute ran on the agent"

        # The link is still good: real work through the TS runs, once more.
        await _save_tasks(fleet, {"after": "echo after"})
        final = await _run(fleet, "after", "pc-r")
        assert final["status"] == "succeeded" and _output(final) == "after"
        assert not marker.exists()
    finally:
        await ts.stop()


async def _true(value: bool) -> bool:
    return value


def test_wire_ids_fit_a_signed_64_bit_integer() -> None:
    """The largest wire id (the top epoch, the top row id) fits SQLite's and msgpack's signed
    64-bit integers, which relays and agents store it in."""
    top = wire_id(EPOCH_LIMIT - 1, ROW_ID_MASK)
    assert top < 1 << 63 and top >> EPOCH_SHIFT == EPOCH_LIMIT - 1
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE seen (instance_id INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO seen VALUES (?)", (top,))
        assert db.execute("SELECT instance_id FROM seen").fetchone() == (top,)
    t = Target(instance_id=top, computer="pc", computer_id=1, mac=b"m" * 32)
    message = Dispatch(id="1", run_id=1, task={}, expires_in_s=1.0, targets=[t])
    back = codec.decode(codec.encode(message))
    assert isinstance(back, Dispatch) and back.targets[0] == t
    assert to_wire(back)["targets"][0]["instance_id"] == top


async def test_a_report_with_an_id_of_another_start_is_refused(tmp_path: Path) -> None:
    """Attack/fault: reports reach the NS for the row ids of its instances, but with the epoch of
    another start of the NS (the lost timeline of a restored backup), or with none.

    Must hold: only the id the instance was dispatched with moves it; the others are refused
    and counted, and change nothing. A row made before epochs existed (epoch 0) is still known
    by its plain id."""
    store = await Store.open(str(tmp_path / "server.db"))
    try:
        definition = {"name": "t", "type": "run-script", "kind": "client", "timeout_s": 60}
        run_id = await store.create_run(
            definition, [NewInstance(1, "pc-1", "ts-1"), NewInstance(2, "pc-2", "ts-1")], 1e12
        )
        (a, b) = await store.undispatched("ts-1")
        assert a.wire == wire_id(store.epoch, a.id) and a.wire != a.id
        other = store.epoch % 1000 + 1
        refused = store.refused
        bad = [
            Report(instance_id=wire_id(other, a.id), state="succeeded", output="stale"),
            Report(instance_id=a.id, state="succeeded", output="no epoch"),
        ]
        assert await store.apply_reports(bad, route="ts-1") == []
        assert store.refused == refused + 2
        good = [Report(instance_id=a.wire, state="succeeded", output="mine")]
        (change,) = await store.apply_reports(good, route="ts-1")
        assert change.instance_id == a.id and change.run_id == run_id
        rows = {r["id"]: r for r in await store.instances(run_id)}
        assert rows[a.id]["output"] == "mine" and rows[b.id]["status"] == "pending"
        # A row from before epochs: its wire id is its row id.
        await store.db.conn.execute_fetchall("UPDATE instances SET epoch=0 WHERE id=?", (b.id,))
        await store.db.conn.commit()
        (old,) = await store.undispatched("ts-1")
        assert old.wire == b.id
        done = [Report(instance_id=b.id, state="failed", output="old")]
        assert len(await store.apply_reports(done, route="ts-1")) == 1
    finally:
        await store.close()
