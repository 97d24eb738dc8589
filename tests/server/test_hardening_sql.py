"""Issue 18, item 10: "read-only" SQL (run-sql-query-on-server without allow_write, and reports)
wrote files with VACUUM INTO and ATTACH. Real SQL on a running NS's real database, through its
admin connection: every write is refused with a clear error and leaves no file behind."""

from __future__ import annotations

import json
import os

import pytest

from admin.client import AdminClient
from tests.helpers import INSECURE, wait_run

pytestmark = pytest.mark.sqlite_only  # SQLite's own SQL and files (PostgreSQL: test_pgstore.py)


async def run_sql(c: AdminClient, name: str, query: str, allow_write: bool = False) -> dict:
    params: dict = {"query": query}
    if allow_write:
        params["allow_write"] = True
    await c.call(
        "task.add", document={"name": name, "type": "run-sql-query-on-server", "params": params}
    )
    final = await wait_run(c, (await c.call("run.start", task=name))["run_id"], 30)
    return final["instances"][0]


async def test_read_only_sql_cannot_write_anything(ns, tmp_path):
    """Without allow_write: VACUUM INTO a file, ATTACH a new file (and write a table in it),
    INSERT, CREATE TEMP TABLE, PRAGMA writable_schema and load_extension are each refused with
    `SQL error:` naming what is not allowed; no file appears and nothing changes. A SELECT (a
    join, a recursive CTE, json_each, PRAGMA table_info) still works, and with allow_write a
    write still does, as docs/tasks.md says."""
    copy = tmp_path / "copy.db"
    other = tmp_path / "other.db"
    refused = {
        f"VACUUM INTO '{copy}'": "ATTACH or VACUUM",
        f"ATTACH 'file:{other}?mode=rwc' AS x": "ATTACH or VACUUM",
        "INSERT INTO messages(at, severity, text, source) VALUES (0, 'info', 'x', 't')": (
            "attempt to write a readonly database (INSERT)"
        ),
        "CREATE TEMP TABLE t(a)": "(CREATE or DROP)",
        "PRAGMA writable_schema=1": "PRAGMA writable_schema = 1",
        "PRAGMA journal_mode=DELETE": "PRAGMA journal_mode = DELETE",
        "SELECT load_extension('/tmp/evil.so')": "load_extension",
        "DELETE FROM computers": "attempt to write a readonly database (DELETE)",
    }
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        before = len(await c.call("messages.list"))
        for i, (sql, what) in enumerate(refused.items()):
            inst = await run_sql(c, f"q{i}", sql)
            assert inst["status"] == "failed", (sql, inst)
            assert inst["reason"].startswith("SQL error: "), inst["reason"]
            assert what in inst["reason"] and "read-only query" in inst["reason"], inst["reason"]
        assert not copy.exists() and not other.exists()
        assert len(await c.call("messages.list")) == before
        # Reads work: a join, a recursive CTE, a table-valued function, a schema pragma.
        reads = {
            "SELECT count(*) > 0 FROM runs r JOIN instances i ON i.run_id=r.id": [[1]],
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x<3)"
            " SELECT sum(x) FROM n": [[6]],
            "SELECT sum(value) FROM json_each('[1,2,3]')": [[6]],
        }
        for i, (sql, rows) in enumerate(reads.items()):
            inst = await run_sql(c, f"r{i}", sql)
            assert inst["status"] == "succeeded", (sql, inst)
            assert json.loads(inst["output"])["rows"] == rows
        inst = await run_sql(c, "cols", "PRAGMA table_info(messages)")
        assert inst["status"] == "succeeded", inst
        assert "severity" in [row[1] for row in json.loads(inst["output"])["rows"]]
        # A report is read-only too: the same refusal, and no snapshot of a write.
        await c.call("report.add", document={"name": "dump", "query": f"VACUUM INTO '{copy}'"})
        await c.call(
            "task.add", document={"name": "rep", "type": "run-report", "params": {"report": "dump"}}
        )
        final = await wait_run(c, (await c.call("run.start", task="rep"))["run_id"], 30)
        (inst,) = final["instances"]
        assert inst["status"] == "failed" and "ATTACH or VACUUM" in inst["reason"], inst
        assert not copy.exists()
        # With allow_write, writes work as documented.
        inst = await run_sql(
            c,
            "w",
            "INSERT INTO messages(at, severity, text, source) VALUES (0, 'info', 'via sql', 't')",
            allow_write=True,
        )
        assert inst["status"] == "succeeded", inst
        assert "via sql" in [m["text"] for m in await c.call("messages.list")]
    assert sorted(os.listdir(tmp_path)) == ["ns"]
