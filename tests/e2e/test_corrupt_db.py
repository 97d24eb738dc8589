"""Issue 18 item 15: a damaged database stops a role at once, loudly, naming the file.

Each role's real database is made by its own store, damaged on disk (a garbage header, or a
b-tree page in the middle overwritten), and the real ``taskfleet`` process is started on it: it
must exit non-zero within seconds (before, the NS printed an error and hung without listening, and
damage in the middle went unnoticed until a query failed) with a message naming the file and how
to recover.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from admin.cli import EXIT_DATA
from agent.store import AgentStore
from server.store import Store
from taskserver.store import RelayStore
from tests.helpers import Fleet

pytestmark = pytest.mark.sqlite_only  # damages the NS's own SQLite file among the others

NOWHERE = "ws://127.0.0.1:9"
"""No server: a role must fail on its database before it connects anywhere."""


async def make_db(role: str, data: Path) -> Path:
    """The role's database, as its own store creates it (schema and all migrations)."""
    data.mkdir(mode=0o700)
    if role == "agent":
        store = await AgentStore.open(str(data))
        await store.close()
        return data / "agent.db"
    path = data / {"server": "server.db", "builtin": "builtin-taskservice.db"}.get(
        role, "taskserver.db"
    )
    if role == "server":
        await (await Store.open(str(path))).close()
    else:
        await (await RelayStore.open(str(path))).close()
    return path


def damage(path: Path, how: str) -> None:
    if how == "header":
        with open(path, "r+b") as fh:
            fh.write(b"not a database!!" * 8)
        return
    # A page in the middle that is in use: the root page of the table nearest the middle.
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE rootpage > 1 ORDER BY abs(rootpage - ?)",
            (pages // 2,),
        ).fetchone()
    db.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(bytes(range(256)) * (page_size // 256))


def command(role: str, data: Path) -> list[str]:
    if role in ("server", "builtin"):
        return ["server", "--data", str(data), "--listen", "127.0.0.1:0", "--insecure"]
    if role == "taskserver":
        return ["taskserver", "--server", NOWHERE, "--data", str(data), "--insecure"]
    return ["agent", "--server", NOWHERE, "--data", str(data), "--insecure", "--name", "pc-1"]


@pytest.mark.parametrize(
    ("role", "how"),
    [
        ("server", "header"),
        ("server", "middle"),
        ("builtin", "header"),
        ("taskserver", "header"),
        ("taskserver", "middle"),
        ("agent", "middle"),
    ],
)
async def test_damaged_database_stops_the_role_at_once(fleet: Fleet, tmp_path, role, how):
    """Fault: the role's database file is damaged (`how`) while it is down, then the role starts.
    Must hold: the process exits with code 4 within a few seconds (never hangs, never listens),
    and says which file is damaged and to restore a backup (docs/operations.md)."""
    data = tmp_path / "data"
    path = await make_db(role, data)
    damage(path, how)
    proc = await fleet._proc(role, command(role, data)).start(wait_ready=False)
    code = await proc.wait(15)
    log = proc.log()
    assert code == EXIT_DATA, log
    assert f"the database {path} is damaged" in log, log
    assert "restore the latest backup" in log and "docs/operations.md" in log
    assert "Traceback" not in log
