"""``taskfleet migrate``: an NS's SQLite file copied into PostgreSQL, checked by counts, ids
carrying on past the copied ones, and a database that already holds a site refused."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from protocol.messages import Report
from server.store import NewInstance, Store


async def migrate(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "admin",
        "migrate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def a_site(path: str) -> dict[str, object]:
    """An NS's file with a bit of everything: computers, a key, an admin, runs with results
    and a client job's step rows, a group, a task with two versions, audit and messages."""
    store = await Store.open(path)
    try:
        for n in range(3):
            await store.register_agent(f"pc-{n}", {"os": "linux", "addresses": ["10.0.0.1"]})
        await store.put_key("agent", "pc-0", b"\x00\x01key" * 4, "fp0", "accepted", "10.0.0.1")
        await store.add_admin("alice", "admin", "hash-a")
        task = {"name": "t", "type": "run-script", "kind": "client", "params": {"script": "x"}}
        await store.save_task(task, "alice")
        await store.save_task({**task, "params": {"script": "y"}}, "alice")
        job = {"program": [{"op": "run", "step": "s", "task": {"name": "s"}, "kind": "client"}]}
        run_id = await store.create_run(
            {"name": "c", "kind": "client", "type": "client-job", "job": job},
            [NewInstance(i + 1, f"pc-{i}", "@ns") for i in range(3)],
            time.time() + 60,
        )
        rows = await store.instances(run_id)
        await store.apply_reports(
            [Report(instance_id=r["id"], step="s", state="succeeded", output="ok") for r in rows]
            + [Report(instance_id=rows[0]["id"], state="succeeded", output="done")]
        )
        group = await store.add_group("lab", None)
        await store.add_to_group(group, [1, 2])
        await store.audit("alice", "run.start", "t", "ok")
        await store.raise_message("info", "hello", "test")
        return {
            "runs": await store.runs(),
            "instances": await store.instances(run_id),
            "computers": await store.computers(),
            "key": await store.key("agent", "pc-0"),
            "history": await store.history("task", "t"),
            "groups": await store.groups(),
            "run_id": run_id,
        }
    finally:
        await store.close()


async def test_migrate_copies_every_table_and_ids_carry_on(tmp_path, postgres_url):
    """Every table's rows arrive (the command counts both sides), the store reads the same
    site from PostgreSQL, and a new run's id follows the copied ones."""
    source = str(tmp_path / "server.db")
    before = await a_site(source)
    code, out, err = await migrate("--from", source, "--to", postgres_url, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["tables"]["instances"] == 6 and summary["tables"]["computers"] == 3
    assert summary["tables"]["definition_versions"] == 2 and summary["tables"]["keys"] == 1
    store = await Store.open(postgres_url)
    try:
        assert await store.runs() == before["runs"]
        assert await store.instances(before["run_id"]) == before["instances"]
        assert await store.computers() == before["computers"]
        assert await store.key("agent", "pc-0") == before["key"]
        assert await store.history("task", "t") == before["history"]
        assert await store.groups() == before["groups"]
        assert await store.admin_by_token("hash-a") == {"name": "alice", "role": "admin"}
        later = await store.create_run(
            {"name": "t", "kind": "client"}, [NewInstance(1, "pc-0", "@ns")], time.time() + 60
        )
        assert later == before["run_id"] + 1
        newest = max(i["id"] for i in before["instances"])
        assert [i["id"] for i in await store.instances(later)] == [newest + 1]
    finally:
        await store.close()


async def test_migrate_refuses_a_database_holding_a_site_unless_forced(tmp_path, postgres_url):
    """A second copy into the same database is refused, naming what it holds; ``--force``
    replaces it (nothing doubled); a password on the command line is refused."""
    source = str(tmp_path / "server.db")
    await a_site(source)
    assert (await migrate("--from", source, "--to", postgres_url))[0] == 0
    code, _, err = await migrate("--from", source, "--to", postgres_url)
    assert code == 1 and "already holds taskfleet rows" in err and "--force" in err
    code, out, err = await migrate("--from", source, "--to", postgres_url, "--force", "--json")
    assert code == 0, err
    assert json.loads(out)["tables"]["runs"] == 1
    store = await Store.open(postgres_url)
    try:
        assert len(await store.runs()) == 1
    finally:
        await store.close()
    code, _, err = await migrate("--from", source, "--to", "postgresql://u:pw@127.0.0.1/x")
    assert code == 2 and "PGPASSWORD" in err and "pw@" not in err
    code, _, err = await migrate("--from", str(tmp_path / "none.db"), "--to", postgres_url)
    assert code == 1 and "does not exist" in err
