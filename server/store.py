"""All SQL of the Notification Server, behind one narrow class.

A PostgreSQL store can stand beside this one later: nothing outside this module writes SQL.
Writes on the hot path (``apply_reports``, ``mark_dispatched``) are one transaction per batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiosqlite

from protocol.messages import Report
from protocol.states import TERMINAL, InstanceState, may_move
from runtime.db import open_db, run_many

_MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE computers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        has_agent INTEGER NOT NULL DEFAULT 0,
        os TEXT NOT NULL DEFAULT '',
        agent_version TEXT NOT NULL DEFAULT '',
        addresses TEXT NOT NULL DEFAULT '[]',
        taskserver TEXT,
        online INTEGER NOT NULL DEFAULT 0,
        last_seen REAL,
        created_at REAL NOT NULL
    );
    CREATE TABLE taskservers (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        online INTEGER NOT NULL DEFAULT 0,
        last_seen REAL
    );
    CREATE TABLE tasks (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        kind TEXT NOT NULL,
        definition TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        task_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        definition TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        deadline REAL NOT NULL,
        ended_at REAL
    );
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        computer_id INTEGER,
        computer TEXT NOT NULL,
        route TEXT,
        status TEXT NOT NULL,
        dispatched INTEGER NOT NULL DEFAULT 0,
        return_code INTEGER,
        output TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        started_at REAL,
        ended_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX instances_run ON instances(run_id);
    CREATE INDEX instances_undispatched ON instances(route, dispatched, status);
    CREATE TABLE server_log (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT ''
    );
    """,
    # 2: jobs; steps of a run (each with its task and deadline); per-step instances
    """
    CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        definition TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step TEXT NOT NULL,
        task TEXT NOT NULL,
        deadline REAL NOT NULL,
        started_at REAL NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    INSERT INTO steps(run_id, step, task, deadline, started_at)
        SELECT id, '', definition, deadline, created_at FROM runs;
    ALTER TABLE runs ADD COLUMN targets TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE runs ADD COLUMN machine TEXT;
    ALTER TABLE instances ADD COLUMN step TEXT NOT NULL DEFAULT '';
    ALTER TABLE instances ADD COLUMN parent_id INTEGER REFERENCES instances(id);
    CREATE UNIQUE INDEX instances_parent_step ON instances(parent_id, step) WHERE parent_id IS NOT NULL;
    CREATE INDEX instances_run_step ON instances(run_id, step);
    """,
    # 3: trust: peer keys, admin tokens with roles, enrolment tokens, the audit trail, messages
    """
    CREATE TABLE keys (
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        public_key BLOB NOT NULL,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,
        address TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        decided_at REAL,
        PRIMARY KEY (role, name)
    );
    CREATE TABLE admins (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE enrol_tokens (
        id INTEGER PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        uses_left INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        severity TEXT NOT NULL,
        text TEXT NOT NULL,
        source TEXT NOT NULL
    );
    ALTER TABLE taskservers ADD COLUMN public_key BLOB;
    ALTER TABLE taskservers ADD COLUMN tls_fingerprint TEXT NOT NULL DEFAULT '';
    """,
    # 4: counting computers per TS at every registration must not scan the whole table
    """
    CREATE INDEX computers_taskserver ON computers(taskserver);
    """,
    # 5: basic inventory, with history
    """
    CREATE TABLE inventory (
        id INTEGER PRIMARY KEY,
        computer_id INTEGER NOT NULL REFERENCES computers(id),
        at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX inventory_computer ON inventory(computer_id, at);
    ALTER TABLE computers ADD COLUMN mac TEXT NOT NULL DEFAULT '';
    """,
    # 6: organizational groups, filters with cached membership, reports with snapshots
    """
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        parent_id INTEGER REFERENCES groups(id),
        created_at REAL NOT NULL
    );
    CREATE TABLE group_members (
        group_id INTEGER NOT NULL REFERENCES groups(id),
        computer_id INTEGER NOT NULL REFERENCES computers(id),
        PRIMARY KEY (group_id, computer_id)
    );
    CREATE TABLE filters (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        updated_at REAL NOT NULL,
        members_at REAL
    );
    CREATE TABLE filter_members (
        filter TEXT NOT NULL REFERENCES filters(name) ON DELETE CASCADE,
        computer_id INTEGER NOT NULL REFERENCES computers(id),
        PRIMARY KEY (filter, computer_id)
    );
    CREATE TABLE reports (
        name TEXT PRIMARY KEY,
        query TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL
    );
    CREATE TABLE report_snapshots (
        id INTEGER PRIMARY KEY,
        report TEXT NOT NULL,
        at REAL NOT NULL,
        run_id INTEGER,
        columns TEXT NOT NULL,
        rows TEXT NOT NULL
    );
    CREATE INDEX report_snapshots_at ON report_snapshots(at);
    """,
    # 7: items live in folders
    """
    CREATE TABLE folders (path TEXT PRIMARY KEY);
    INSERT INTO folders(path) VALUES ('/Jobs and Tasks'), ('/Reports'), ('/Policies'), ('/Filters');
    ALTER TABLE tasks ADD COLUMN folder TEXT NOT NULL DEFAULT '/Jobs and Tasks';
    ALTER TABLE jobs ADD COLUMN folder TEXT NOT NULL DEFAULT '/Jobs and Tasks';
    ALTER TABLE reports ADD COLUMN folder TEXT NOT NULL DEFAULT '/Reports';
    ALTER TABLE filters ADD COLUMN folder TEXT NOT NULL DEFAULT '/Filters';
    """,
    # 8: policies
    """
    CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        folder TEXT NOT NULL DEFAULT '/Policies',
        updated_at REAL NOT NULL
    );
    """,
    # 9: cheaper indexes on instances, the table every run writes 2-3 times per computer.
    # instances_run was a prefix of instances_run_step. The undispatched index held status, so
    # every result moved its entry; now it holds only what is still to be dispatched, in id
    # order. Moving a computer's work (reroute) finds it by computer_id.
    """
    DROP INDEX instances_run;
    DROP INDEX instances_undispatched;
    CREATE INDEX instances_undispatched ON instances(route) WHERE dispatched=0;
    CREATE INDEX instances_computer ON instances(computer_id);
    """,
]

ITEM_TABLES = {
    "task": "tasks",
    "job": "jobs",
    "report": "reports",
    "filter": "filters",
    "policy": "policies",
}
"""Item kind → its table; every item table has ``name`` and ``folder``."""

_TERMINAL_SQL = "(" + ",".join(f"'{s}'" for s in sorted(TERMINAL)) + ")"


@dataclass(frozen=True, slots=True)
class NewInstance:
    """One instance to create with a run."""

    computer_id: int | None
    computer: str
    route: str | None
    status: str = InstanceState.PENDING
    reason: str = ""


class Pending(NamedTuple):
    """An instance waiting to be dispatched (``Store.undispatched``)."""

    id: int
    run_id: int
    step: str
    computer: str
    computer_id: int | None
    has_agent: int
    mac: str


class Parent(NamedTuple):
    """A top-level instance as a batch of reports finds it (``Store.apply_reports``)."""

    status: str
    run_id: int
    step: str
    computer: str
    computer_id: int | None
    route: str | None


@dataclass(frozen=True, slots=True)
class Change:
    """An instance that moved to a new state through ``apply_reports``."""

    instance_id: int
    run_id: int
    computer: str
    state: str
    return_code: int | None
    reason: str
    step: str = ""
    parent_id: int | None = None
    route: str | None = None


class Store:
    """The NS database (SQLite, WAL). Open with :meth:`open`."""

    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self.refused = 0
        """Reports refused by ``apply_reports`` (unknown instance, wrong computer or route)."""

    @classmethod
    async def open(cls, path: str) -> Store:
        return cls(await open_db(path, _MIGRATIONS))

    async def close(self) -> None:
        await self.db.close()

    async def _all(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        async with self.db.execute(sql, args) as cur:
            rows = await cur.fetchall()
            # The column names once: ``description`` builds a new tuple on every access.
            names = [d[0] for d in cur.description] if rows else []
            return [dict(zip(names, r, strict=True)) for r in rows]

    async def _insert(self, sql: str, args: tuple[Any, ...]) -> int:
        """Insert one row in its own transaction; return its rowid."""
        cur = await self.db.execute(sql, args)
        rowid = int(cur.lastrowid or 0)
        await cur.close()
        await self.db.commit()
        return rowid

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = await self._all(sql, args)
        return rows[0] if rows else None

    # -- computers and task servers -----------------------------------------------------

    async def register_agent(self, name: str, info: dict[str, Any]) -> dict[str, Any]:
        """Create or update the computer for an agent; return its row."""
        now = time.time()
        raw = info.get("addresses")
        addresses: list[Any] = raw if isinstance(raw, list) else []
        await self.db.execute_fetchall(
            "INSERT INTO computers(name, has_agent, os, agent_version, addresses, last_seen, created_at)"
            " VALUES (?, 1, ?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET has_agent=1, os=excluded.os,"
            " agent_version=excluded.agent_version, addresses=excluded.addresses,"
            " last_seen=excluded.last_seen",
            (
                name,
                str(info.get("os", ""))[:200],
                str(info.get("agent_version", ""))[:50],
                json.dumps([str(a)[:100] for a in addresses[:64]]),
                now,
                now,
            ),
        )
        await self.db.commit()
        row = await self._one("SELECT * FROM computers WHERE name=?", (name,))
        assert row is not None
        return row

    async def add_device(
        self, name: str, address: str, taskserver: str | None, mac: str = ""
    ) -> dict[str, Any]:
        """Add a computer with no agent. Raises ValueError if the name exists."""
        existing = await self._one("SELECT id FROM computers WHERE name=?", (name,))
        if existing is not None:
            raise ValueError(f"a computer named {name!r} already exists")
        await self.db.execute_fetchall(
            "INSERT INTO computers(name, has_agent, addresses, taskserver, created_at, mac)"
            " VALUES (?, 0, ?, ?, ?, ?)",
            (name, json.dumps([address] if address else []), taskserver, time.time(), mac),
        )
        await self.db.commit()
        row = await self._one("SELECT * FROM computers WHERE name=?", (name,))
        assert row is not None
        return row

    async def set_taskserver(self, computer_id: int, taskserver: str | None) -> None:
        await self.db.execute_fetchall(
            "UPDATE computers SET taskserver=? WHERE id=?", (taskserver, computer_id)
        )
        await self.db.commit()

    async def computers(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        if names is None:
            return await self._all("SELECT * FROM computers ORDER BY name")
        out: list[dict[str, Any]] = []
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out += await self._all(f"SELECT * FROM computers WHERE name IN ({marks})", chunk)
        return out

    async def targets(self) -> list[dict[str, Any]]:
        """Every computer, by name, with what starting a run on it needs (id, name, has_agent,
        taskserver): ``run.start --all`` on 10,000 computers reads four columns, not all eleven
        (a third of the time, before the run exists)."""
        return await self._all(
            "SELECT id, name, has_agent, taskserver FROM computers ORDER BY name"
        )

    async def set_online(self, names: list[str], online: bool, taskserver: str | None) -> None:
        """Mark computers online or offline as reported by ``taskserver`` (None: the built-in service).

        An ``offline`` only counts from the computer's own TS: a late word from the TS it left
        must not mark a computer offline that is connected elsewhere.
        """
        now = time.time()
        if online:
            await run_many(
                self.db,
                "UPDATE computers SET online=1, last_seen=? WHERE name=?",
                [(now, n) for n in names],
            )
        else:
            await run_many(
                self.db,
                "UPDATE computers SET online=0, last_seen=? WHERE name=? AND taskserver IS ?",
                [(now, n, taskserver) for n in names],
            )
        await self.db.commit()

    async def set_all_offline(self, taskserver: str | None, keep: list[str] | None = None) -> None:
        """Mark a TS's computers offline (all of them, or all but ``keep``)."""
        where = "taskserver IS NULL AND has_agent=1" if taskserver is None else "taskserver=?"
        args: tuple[Any, ...] = () if taskserver is None else (taskserver,)
        if keep:
            await self.db.execute_fetchall(
                "CREATE TEMP TABLE IF NOT EXISTS keep_names(name TEXT PRIMARY KEY)"
            )
            await self.db.execute_fetchall("DELETE FROM keep_names")
            await run_many(
                self.db, "INSERT OR IGNORE INTO keep_names VALUES (?)", [(k,) for k in keep]
            )
            where += " AND name NOT IN (SELECT name FROM keep_names)"
        await self.db.execute_fetchall(
            f"UPDATE computers SET online=0 WHERE online=1 AND {where}", args
        )
        await self.db.commit()

    async def reset_presence(self) -> None:
        """At start nobody is connected yet."""
        await self.db.execute_fetchall("UPDATE computers SET online=0")
        await self.db.execute_fetchall("UPDATE taskservers SET online=0")
        await self.db.commit()

    async def upsert_taskserver(
        self,
        name: str,
        url: str,
        online: bool,
        public_key: bytes | None = None,
        tls_fingerprint: str = "",
    ) -> None:
        await self.db.execute_fetchall(
            "INSERT INTO taskservers(name, url, online, last_seen, public_key, tls_fingerprint)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET url=excluded.url, online=excluded.online,"
            " last_seen=excluded.last_seen, public_key=coalesce(excluded.public_key, public_key),"
            " tls_fingerprint=CASE WHEN excluded.tls_fingerprint='' THEN tls_fingerprint"
            " ELSE excluded.tls_fingerprint END",
            (name, url, 1 if online else 0, time.time(), public_key, tls_fingerprint),
        )
        await self.db.commit()

    async def taskservers(self) -> list[dict[str, Any]]:
        """Every TS with its count of computers (a scan of the computers: for views, not per
        registration; registration uses :meth:`taskserver_rows` and the NS's own counts)."""
        return await self._all(
            "SELECT t.*, (SELECT count(*) FROM computers c WHERE c.taskserver=t.name) AS computers"
            " FROM taskservers t ORDER BY name"
        )

    async def taskserver_rows(self) -> list[dict[str, Any]]:
        return await self._all("SELECT * FROM taskservers ORDER BY name")

    async def computers_per_taskserver(self) -> dict[str, int]:
        rows = await self._all(
            "SELECT taskserver, count(*) AS n FROM computers"
            " WHERE taskserver IS NOT NULL GROUP BY taskserver"
        )
        return {r["taskserver"]: r["n"] for r in rows}

    # -- tasks and jobs -----------------------------------------------------------------

    async def save_task(self, definition: dict[str, Any]) -> bool:
        """Store a validated task; return True when it replaced one of the same name."""
        return await self._save(
            "tasks", definition["name"], definition["type"], definition, definition["kind"]
        )

    async def save_job(self, definition: dict[str, Any]) -> bool:
        """Store a validated job; return True when it replaced one of the same name."""
        return await self._save("jobs", definition["name"], definition["type"], definition)

    async def _save(
        self, table: str, name: str, type_: str, definition: dict[str, Any], kind: str | None = None
    ) -> bool:
        now = time.time()
        old = await self._one(f"SELECT name FROM {table} WHERE name=?", (name,))
        if table == "tasks":
            await self.db.execute_fetchall(
                "INSERT INTO tasks(name, type, kind, definition, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET type=excluded.type,"
                " kind=excluded.kind, definition=excluded.definition, updated_at=excluded.updated_at",
                (name, type_, kind, json.dumps(definition), now, now),
            )
        else:
            await self.db.execute_fetchall(
                "INSERT INTO jobs(name, type, definition, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET type=excluded.type,"
                " definition=excluded.definition, updated_at=excluded.updated_at",
                (name, type_, json.dumps(definition), now, now),
            )
        await self.db.commit()
        return old is not None

    async def task(self, name: str) -> dict[str, Any] | None:
        row = await self._one("SELECT definition FROM tasks WHERE name=?", (name,))
        return json.loads(row["definition"]) if row else None

    async def tasks(self) -> list[dict[str, Any]]:
        rows = await self._all("SELECT definition, updated_at FROM tasks ORDER BY name")
        return [{**json.loads(r["definition"]), "updated_at": r["updated_at"]} for r in rows]

    async def jobs(self) -> list[dict[str, Any]]:
        rows = await self._all("SELECT definition, updated_at FROM jobs ORDER BY name")
        return [{**json.loads(r["definition"]), "updated_at": r["updated_at"]} for r in rows]

    async def catalog(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Every saved task and job by name, as ``(\"task\"|\"job\", definition)``."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for r in await self._all("SELECT name, definition FROM jobs"):
            out[r["name"]] = ("job", json.loads(r["definition"]))
        for r in await self._all("SELECT name, definition FROM tasks"):
            out[r["name"]] = ("task", json.loads(r["definition"]))
        return out

    # -- runs ---------------------------------------------------------------------------

    async def create_run(
        self,
        definition: dict[str, Any],
        instances: list[NewInstance],
        deadline: float,
        *,
        targets: list[int] | None = None,
        first_step: bool = True,
    ) -> int:
        """Create a run, its first step (``''``) and its instances in one transaction.

        Server jobs pass ``first_step=False``: their steps are created one by one (:meth:`start_step`).
        """
        now = time.time()
        cur = await self.db.execute(
            "INSERT INTO runs(task_name, kind, definition, status, created_at, deadline, targets)"
            " VALUES (?, ?, ?, 'running', ?, ?, ?)",
            (
                definition["name"],
                # A client job dispatches like a client task but is listed as what it is.
                "client-job" if definition.get("type") == "client-job" else definition["kind"],
                json.dumps(definition),
                now,
                deadline,
                json.dumps(targets or []),
            ),
        )
        run_id = int(cur.lastrowid or 0)
        await cur.close()
        if first_step:
            await self._insert_step(run_id, "", definition, deadline, instances, now)
        await self.db.commit()
        return run_id

    async def _insert_step(
        self,
        run_id: int,
        step: str,
        task: dict[str, Any],
        deadline: float,
        instances: list[NewInstance],
        now: float,
    ) -> None:
        await self.db.execute_fetchall(
            "INSERT INTO steps(run_id, step, task, deadline, started_at) VALUES (?, ?, ?, ?, ?)",
            (run_id, step, json.dumps(task), deadline, now),
        )
        await run_many(
            self.db,
            "INSERT INTO instances(run_id, step, computer_id, computer, route, status, reason,"
            " ended_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    run_id,
                    step,
                    i.computer_id,
                    i.computer,
                    i.route,
                    i.status,
                    i.reason,
                    now if i.status in TERMINAL else None,
                    now,
                )
                for i in instances
            ],
        )

    async def start_step(
        self,
        run_id: int,
        step: str,
        task: dict[str, Any],
        deadline: float,
        instances: list[NewInstance],
        machine: dict[str, Any],
    ) -> None:
        """A server job enters a step: its instances and the job's new state, in one transaction.

        After a crash either both exist or neither: the step is never dispatched twice.
        """
        now = time.time()
        await self._insert_step(run_id, step, task, deadline, instances, now)
        await self.db.execute_fetchall(
            "UPDATE runs SET machine=? WHERE id=?", (json.dumps(machine), run_id)
        )
        await self.db.commit()

    async def save_machine(self, run_id: int, machine: dict[str, Any]) -> None:
        await self.db.execute_fetchall(
            "UPDATE runs SET machine=? WHERE id=?", (json.dumps(machine), run_id)
        )
        await self.db.commit()

    async def run(self, run_id: int) -> dict[str, Any] | None:
        row = await self._one("SELECT * FROM runs WHERE id=?", (run_id,))
        if row is not None:
            row["definition"] = json.loads(row["definition"])
            row["targets"] = json.loads(row["targets"])
            row["machine"] = json.loads(row["machine"]) if row["machine"] else None
        return row

    async def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT r.id, r.task_name, r.kind, r.status, r.created_at, r.ended_at,"
            " count(i.id) AS total,"
            " coalesce(sum(i.status='succeeded'), 0) AS succeeded,"
            f" coalesce(sum(i.status IN {_TERMINAL_SQL} AND i.status!='succeeded'), 0) AS failed,"
            f" coalesce(sum(i.status NOT IN {_TERMINAL_SQL}), 0) AS pending"
            " FROM runs r LEFT JOIN instances i ON i.run_id=r.id AND i.parent_id IS NULL"
            " GROUP BY r.id ORDER BY r.id DESC LIMIT ?",
            (limit,),
        )

    async def instances(self, run_id: int) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT id, step, parent_id, computer, computer_id, route, status, return_code, output, reason,"
            " started_at, ended_at FROM instances WHERE run_id=? ORDER BY computer, id",
            (run_id,),
        )

    async def steps(self, run_id: int) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT step, deadline, started_at FROM steps WHERE run_id=? ORDER BY started_at, rowid",
            (run_id,),
        )

    async def active_runs(self) -> list[dict[str, Any]]:
        """Runs not ended (with their definition, targets and job state)."""
        rows = await self._all(
            "SELECT id, kind, deadline, definition, targets, machine FROM runs WHERE status='running'"
        )
        for r in rows:
            r["definition"] = json.loads(r["definition"])
            r["targets"] = json.loads(r["targets"])
            r["machine"] = json.loads(r["machine"]) if r["machine"] else None
        return rows

    async def open_steps(self) -> list[dict[str, Any]]:
        """Steps of running runs, and per route how many top-level instances are not terminal.

        A step whose instances all ended has one row with ``route`` NULL and ``remaining`` 0.
        """
        return await self._all(
            "SELECT s.run_id, s.step, s.deadline, i.route, count(i.id) AS remaining"
            " FROM steps s JOIN runs r ON r.id=s.run_id"
            " LEFT JOIN instances i ON i.run_id=s.run_id AND i.step=s.step AND i.parent_id IS NULL"
            f"  AND i.status NOT IN {_TERMINAL_SQL}"
            " WHERE r.status='running' GROUP BY s.run_id, s.step, i.route"
        )

    async def computers_by_id(self, ids: list[int]) -> list[dict[str, Any]]:
        """What planning a step needs of each target: id, name, has_agent and taskserver
        (four columns, not every one: a step on 10,000 computers reads them all)."""
        # One statement for any number of ids (json_each), not one per 500: a quarter less time.
        return await self._all(
            "SELECT id, name, has_agent, taskserver FROM computers"
            " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY name",
            (json.dumps(ids),),
        )

    async def undispatched(self, route: str, after_id: int = 0, limit: int = -1) -> list[Pending]:
        """Pending instances routed to ``route`` and not yet taken by it: oldest first, from
        ``after_id`` on, at most ``limit`` (-1: all), so a dispatch of ten thousand can send its
        first chunk before reading the rest (the partial index ``instances_undispatched`` holds
        them in id order). Plain rows, not maps: a step reads ten thousand of them."""
        async with self.db.execute(
            "SELECT i.id, i.run_id, i.step, i.computer, i.computer_id,"
            " coalesce(c.has_agent, 0), coalesce(c.mac, '')"
            " FROM instances i JOIN runs r ON r.id=i.run_id"
            " LEFT JOIN computers c ON c.id=i.computer_id"
            " WHERE i.route=? AND i.dispatched=0 AND i.id>? AND r.status='running'"
            f" AND i.status NOT IN {_TERMINAL_SQL}"
            " AND i.parent_id IS NULL ORDER BY i.id LIMIT ?",
            (route, after_id, limit),
        ) as cur:
            return list(map(Pending._make, await cur.fetchall()))

    async def step_task(self, run_id: int, step: str) -> tuple[dict[str, Any], float] | None:
        """A step's task and deadline (read once per dispatch, not once per instance)."""
        row = await self._one(
            "SELECT task, deadline FROM steps WHERE run_id=? AND step=?", (run_id, step)
        )
        return (json.loads(row["task"]), float(row["deadline"])) if row is not None else None

    async def reroute(self, computer_id: int, old: str, new: str) -> list[dict[str, Any]]:
        """Move a computer's unfinished instances from one route to another, to be dispatched anew."""
        rows = await self._all(
            "SELECT id, run_id, step FROM instances WHERE computer_id=? AND route=? AND parent_id IS NULL"
            f" AND status NOT IN {_TERMINAL_SQL}",
            (computer_id, old),
        )
        await run_many(
            self.db,
            "UPDATE instances SET route=?, dispatched=0 WHERE id=?",
            [(new, r["id"]) for r in rows],
        )
        await self.db.commit()
        return rows

    async def mark_dispatched(self, instance_ids: list[int]) -> None:
        # One statement for a dispatch's thousand ids (json_each), not a thousand: a third less.
        await self.db.execute_fetchall(
            "UPDATE instances SET dispatched=1 WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(instance_ids),),
        )
        await self.db.commit()

    async def apply_reports(self, reports: list[Report], route: str | None = None) -> list[Change]:
        """Apply a batch of reports in one transaction; return the instances that moved.

        A report that would move a terminal instance, or move progress backwards, is
        ignored: a repeated or late result changes nothing. A report with a ``step`` is a
        step of a client job: it creates or moves that step's row under the instance.
        """
        if not reports:
            return []
        parents = await self._by_ids(list({r.instance_id for r in reports}))
        mine: list[tuple[Report, Parent, str]] = []  # (report, its instance, the step's row name)
        for r in reports:
            parent = parents.get(r.instance_id)
            if parent is None or (r.computer and r.computer != parent.computer):
                self.refused += 1
                continue
            if route is not None and parent.route != route:
                self.refused += 1  # a TS may report only for computers routed to it
                continue
            step = (f"{parent.step}/{r.step}" if parent.step else r.step) if r.step else ""
            mine.append((r, parent, step))
        now = time.time()
        # A client job's steps: their rows, created (all in one statement) where missing.
        keys = list({(r.instance_id, step): None for r, _, step in mine if step})
        children = await self._children(keys)
        missing: dict[tuple[int, str], Parent] = {}
        for r, parent, step in mine:
            if step and (r.instance_id, step) not in children:
                missing[(r.instance_id, step)] = parent
        if missing:
            await run_many(
                self.db,
                "INSERT INTO instances(run_id, step, parent_id, computer_id, computer, route,"
                " status, updated_at, dispatched) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, 1)",
                [
                    (p.run_id, step, iid, p.computer_id, p.computer, p.route, now)
                    for (iid, step), p in missing.items()
                ],
            )
            children.update(await self._children(list(missing)))
        moved: dict[int, str] = {}  # a top-level instance's status once a report moved it
        changes: list[Change] = []
        progress: list[tuple[Any, ...]] = []
        final: list[tuple[Any, ...]] = []
        for r, parent, step in mine:
            if step:
                child = children[(r.instance_id, step)]
                target_id, current, shown = int(child["id"]), str(child["status"]), step
            else:
                target_id, current, shown = (
                    r.instance_id,
                    moved.get(r.instance_id, parent.status),
                    parent.step,
                )
            if not may_move(current, r.state):
                continue
            if step:
                children[(r.instance_id, step)]["status"] = r.state
            else:
                moved[r.instance_id] = r.state
            if r.state in TERMINAL:
                final.append(
                    (
                        r.state,
                        r.return_code,
                        r.output,
                        r.reason,
                        r.started_at,
                        r.ended_at or now,
                        now,
                        target_id,
                    )
                )
            else:
                progress.append((r.state, r.started_at, now, target_id))
            changes.append(
                Change(
                    target_id,
                    parent.run_id,
                    parent.computer,
                    r.state,
                    r.return_code,
                    r.reason,
                    shown,
                    r.instance_id if step else None,
                    parent.route,
                )
            )
        if progress:
            await run_many(
                self.db,
                "UPDATE instances SET status=?, started_at=coalesce(?, started_at), updated_at=?"
                " WHERE id=?",
                progress,
            )
        if final:
            await run_many(
                self.db,
                "UPDATE instances SET status=?, return_code=?, output=?, reason=?,"
                " started_at=coalesce(?, started_at), ended_at=?, updated_at=? WHERE id=?",
                final,
            )
        await self.db.commit()
        return changes

    async def _children(self, keys: list[tuple[int, str]]) -> dict[tuple[int, str], dict[str, Any]]:
        """The rows of client-job steps by (parent id, step name)."""
        out: dict[tuple[int, str], dict[str, Any]] = {}
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            where = " OR ".join("(parent_id=? AND step=?)" for _ in chunk)
            args = [v for pair in chunk for v in pair]
            for row in await self._all(
                f"SELECT id, parent_id, step, status FROM instances WHERE {where}", args
            ):
                out[(row["parent_id"], row["step"])] = row
        return out

    async def _by_ids(self, ids: list[int]) -> dict[int, Parent]:
        """Top-level instances by id: plain rows, not maps (a roll-up reads ten thousand)."""
        out: dict[int, Parent] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT id, status, run_id, step, computer, computer_id, route FROM instances"
                f" WHERE id IN ({marks}) AND parent_id IS NULL",
                chunk,
            ) as cur:
                for row in await cur.fetchall():
                    out[row[0]] = Parent._make(row[1:])
        return out

    async def end_instances(
        self, run_id: int, state: str, reason: str, step: str | None = None
    ) -> list[dict[str, Any]]:
        """Force non-terminal instances of a run (or of one step) to ``state``; return them (id, route, step)."""
        sql = (
            "SELECT id, route, step, parent_id, computer FROM instances"
            f" WHERE run_id=? AND status NOT IN {_TERMINAL_SQL}"
        )
        args: tuple[Any, ...] = (run_id,)
        if step is not None:
            sql += " AND (step=? OR step LIKE ?)"
            args += (step, f"{step}/%")
        rows = await self._all(sql, args)
        now = time.time()
        await run_many(
            self.db,
            "UPDATE instances SET status=?, reason=?, ended_at=?, updated_at=? WHERE id=?",
            [(state, reason, now, now, r["id"]) for r in rows],
        )
        await self.db.commit()
        return rows

    async def finish_run(self, run_id: int, status: str) -> None:
        await self.db.execute_fetchall(
            "UPDATE runs SET status=?, ended_at=? WHERE id=? AND status='running'",
            (status, time.time(), run_id),
        )
        await self.db.commit()

    async def instance_states(self, run_id: int, step: str | None = None) -> list[dict[str, Any]]:
        """Top-level instances of a run (or of one step): status, return code, output."""
        sql = "SELECT id, status, return_code, output FROM instances WHERE run_id=? AND parent_id IS NULL"
        args: tuple[Any, ...] = (run_id,)
        if step is not None:
            sql += " AND step=?"
            args += (step,)
        return await self._all(sql, args)

    async def instance_counts(self, run_id: int, step: str | None = None) -> dict[str, int]:
        """How many top-level instances of a run (or of one of its steps) are in each state:
        a barrier's roll-up, or a big run's totals, without reading 10,000 rows back."""
        where, args = ("", (run_id,)) if step is None else (" AND step=?", (run_id, step))
        rows = await self.db.execute_fetchall(
            "SELECT status, count(*) FROM instances WHERE run_id=? AND parent_id IS NULL"
            f"{where} GROUP BY status",
            args,
        )
        return {str(status): int(n) for status, n in rows}

    # -- inventory ----------------------------------------------------------------------

    async def save_inventories(self, instance_ids: list[int]) -> None:
        """Keep the inventory that these send-basic-inventory instances reported (history kept)."""
        now = time.time()
        marks = ",".join("?" * len(instance_ids))
        rows = await self._all(
            f"SELECT computer_id, output FROM instances WHERE id IN ({marks}) AND computer_id IS NOT NULL",
            instance_ids,
        )
        keep = []
        for r in rows:
            try:
                data = json.loads(r["output"])
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                keep.append((r["computer_id"], now, json.dumps(data)))
        await run_many(
            self.db, "INSERT INTO inventory(computer_id, at, data) VALUES (?, ?, ?)", keep
        )
        await self.db.commit()

    async def inventory(self, computer: str, history: bool = False) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT i.at, i.data FROM inventory i JOIN computers c ON c.id=i.computer_id"
            " WHERE c.name=? ORDER BY i.at DESC LIMIT ?",
            (computer, 1000 if history else 1),
        )
        return [{"at": r["at"], **json.loads(r["data"])} for r in rows]

    # -- groups, filters, reports -------------------------------------------------------

    async def groups(self) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT g.id, g.name, p.name AS parent, (SELECT count(*) FROM group_members m WHERE m.group_id=g.id)"
            " AS computers FROM groups g LEFT JOIN groups p ON p.id=g.parent_id ORDER BY g.name"
        )

    async def add_group(self, name: str, parent: str | None) -> int:
        parent_id = None
        if parent:
            row = await self._one("SELECT id FROM groups WHERE name=?", (parent,))
            if row is None:
                raise ValueError(f"no group named {parent!r}")
            parent_id = row["id"]
        cur = await self.db.execute(
            "INSERT INTO groups(name, parent_id, created_at) VALUES (?, ?, ?)",
            (name, parent_id, time.time()),
        )
        group_id = int(cur.lastrowid or 0)
        await cur.close()
        await self.db.commit()
        return group_id

    async def group_id(self, name: str) -> int | None:
        row = await self._one("SELECT id FROM groups WHERE name=?", (name,))
        return int(row["id"]) if row else None

    async def add_to_group(self, group_id: int, computer_ids: list[int]) -> int:
        """Add computers to a group; return how many were not in it already."""
        before = await self._one(
            "SELECT count(*) AS n FROM group_members WHERE group_id=?", (group_id,)
        )
        await run_many(
            self.db,
            "INSERT OR IGNORE INTO group_members(group_id, computer_id) VALUES (?, ?)",
            [(group_id, c) for c in computer_ids],
        )
        await self.db.commit()
        after = await self._one(
            "SELECT count(*) AS n FROM group_members WHERE group_id=?", (group_id,)
        )
        return int(after["n"] if after else 0) - int(before["n"] if before else 0)

    async def group_computers(self, names: list[str]) -> list[dict[str, Any]]:
        """Computers in these groups or in groups below them."""
        return await self._all(
            "WITH RECURSIVE tree(id) AS ("
            f" SELECT id FROM groups WHERE name IN ({','.join('?' * len(names))})"
            " UNION SELECT g.id FROM groups g JOIN tree t ON g.parent_id=t.id)"
            " SELECT DISTINCT c.* FROM computers c JOIN group_members m ON m.computer_id=c.id"
            " WHERE m.group_id IN (SELECT id FROM tree) ORDER BY c.name",
            names,
        )

    async def memberships(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for r in await self._all(
            "SELECT m.computer_id, g.name FROM group_members m JOIN groups g ON g.id=m.group_id ORDER BY g.name"
        ):
            out.setdefault(int(r["computer_id"]), []).append(str(r["name"]))
        return out

    async def latest_inventories(self) -> dict[int, dict[str, Any]]:
        rows = await self._all(
            "SELECT i.computer_id, i.data FROM inventory i JOIN ("
            " SELECT computer_id, max(at) AS at FROM inventory GROUP BY computer_id) last"
            " ON last.computer_id=i.computer_id AND last.at=i.at"
        )
        return {int(r["computer_id"]): json.loads(r["data"]) for r in rows}

    async def save_filter(self, definition: dict[str, Any]) -> bool:
        old = await self._one("SELECT name FROM filters WHERE name=?", (definition["name"],))
        await self.db.execute_fetchall(
            "INSERT INTO filters(name, definition, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET definition=excluded.definition, updated_at=excluded.updated_at",
            (definition["name"], json.dumps(definition), time.time()),
        )
        await self.db.commit()
        return old is not None

    async def filters(self) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT f.definition, f.members_at, (SELECT count(*) FROM filter_members m WHERE m.filter=f.name)"
            " AS members FROM filters f ORDER BY f.name"
        )
        return [
            {**json.loads(r["definition"]), "members": r["members"], "members_at": r["members_at"]}
            for r in rows
        ]

    async def set_filter_members(
        self, name: str, computer_ids: set[int]
    ) -> tuple[list[int], list[int]]:
        """Replace a filter's cached membership; return (added, removed) computer ids."""
        rows = await self._all("SELECT computer_id FROM filter_members WHERE filter=?", (name,))
        before = {int(r["computer_id"]) for r in rows}
        added, removed = sorted(computer_ids - before), sorted(before - computer_ids)
        await run_many(
            self.db,
            "DELETE FROM filter_members WHERE filter=? AND computer_id=?",
            [(name, c) for c in removed],
        )
        await run_many(
            self.db,
            "INSERT INTO filter_members(filter, computer_id) VALUES (?, ?)",
            [(name, c) for c in added],
        )
        await self.db.execute_fetchall(
            "UPDATE filters SET members_at=? WHERE name=?", (time.time(), name)
        )
        await self.db.commit()
        return added, removed

    async def filter_computers(self, names: list[str]) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT DISTINCT c.* FROM computers c JOIN filter_members m ON m.computer_id=c.id"
            f" WHERE m.filter IN ({','.join('?' * len(names))}) ORDER BY c.name",
            names,
        )

    async def save_report(self, name: str, query: str, description: str) -> bool:
        old = await self._one("SELECT name FROM reports WHERE name=?", (name,))
        await self.db.execute_fetchall(
            "INSERT INTO reports(name, query, description, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET query=excluded.query, description=excluded.description,"
            " updated_at=excluded.updated_at",
            (name, query, description, time.time()),
        )
        await self.db.commit()
        return old is not None

    async def report(self, name: str) -> dict[str, Any] | None:
        return await self._one("SELECT * FROM reports WHERE name=?", (name,))

    async def reports(self) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT r.name, r.query, r.description, (SELECT count(*) FROM report_snapshots s WHERE s.report=r.name)"
            " AS snapshots FROM reports r ORDER BY r.name"
        )

    async def add_snapshot(
        self, report: str, run_id: int, columns: list[str], rows: list[list[Any]]
    ) -> int:
        return await self._insert(
            "INSERT INTO report_snapshots(report, at, run_id, columns, rows) VALUES (?, ?, ?, ?, ?)",
            (report, time.time(), run_id, json.dumps(columns), json.dumps(rows, default=str)),
        )

    async def latest_snapshot(self, report: str) -> dict[str, Any] | None:
        row = await self._one(
            "SELECT at, columns, rows FROM report_snapshots WHERE report=? ORDER BY at DESC, id DESC LIMIT 1",
            (report,),
        )
        if row is None:
            return None
        return {
            "at": row["at"],
            "columns": json.loads(row["columns"]),
            "rows": json.loads(row["rows"]),
        }

    async def purge(self, older_than: float, runs: bool) -> dict[str, int]:
        """Delete report snapshots (and ended runs, if asked) older than ``older_than``."""
        cur = await self.db.execute("DELETE FROM report_snapshots WHERE at < ?", (older_than,))
        out = {"snapshots": cur.rowcount}
        await cur.close()
        if runs:
            old = "SELECT id FROM runs WHERE status != 'running' AND coalesce(ended_at, created_at) < ?"
            cur = await self.db.execute(
                f"DELETE FROM instances WHERE run_id IN ({old})", (older_than,)
            )
            out["instances"] = cur.rowcount
            await cur.close()
            await self.db.execute_fetchall(
                f"DELETE FROM steps WHERE run_id IN ({old})", (older_than,)
            )
            cur = await self.db.execute(f"DELETE FROM runs WHERE id IN ({old})", (older_than,))
            out["runs"] = cur.rowcount
            await cur.close()
        await self.db.commit()
        return out

    # -- policies -----------------------------------------------------------------------

    async def save_policy(self, definition: dict[str, Any]) -> bool:
        old = await self._one("SELECT name FROM policies WHERE name=?", (definition["name"],))
        await self.db.execute_fetchall(
            "INSERT INTO policies(name, definition, enabled, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET definition=excluded.definition, enabled=excluded.enabled,"
            " updated_at=excluded.updated_at",
            (definition["name"], json.dumps(definition), int(definition["enabled"]), time.time()),
        )
        await self.db.commit()
        return old is not None

    async def policies(self) -> list[dict[str, Any]]:
        rows = await self._all("SELECT definition, enabled FROM policies ORDER BY name")
        return [{**json.loads(r["definition"]), "enabled": bool(r["enabled"])} for r in rows]

    async def set_policy_enabled(self, name: str, enabled: bool) -> bool:
        row = await self._one("SELECT definition FROM policies WHERE name=?", (name,))
        if row is None:
            return False
        definition = {**json.loads(row["definition"]), "enabled": enabled}
        await self.db.execute_fetchall(
            "UPDATE policies SET enabled=?, definition=?, updated_at=? WHERE name=?",
            (int(enabled), json.dumps(definition), time.time(), name),
        )
        await self.db.commit()
        return True

    # -- items and folders --------------------------------------------------------------

    async def items(self, folder: str | None = None) -> list[dict[str, Any]]:
        """Every item (kind, name, folder, path, id), optionally in one folder (and below it)."""
        union = " UNION ALL ".join(
            f"SELECT '{kind}' AS kind, name, folder FROM {table}"
            for kind, table in ITEM_TABLES.items()
        )
        rows = await self._all(f"SELECT * FROM ({union}) ORDER BY folder, kind, name")
        out = []
        for r in rows:
            if folder and not (
                r["folder"] == folder or r["folder"].startswith(folder.rstrip("/") + "/")
            ):
                continue
            out.append(
                {**r, "path": f"{r['folder']}/{r['name']}", "id": f"{r['kind']}:{r['name']}"}
            )
        return out

    async def folders(self) -> list[dict[str, Any]]:
        items = await self.items()
        paths = {r["path"] for r in await self._all("SELECT path FROM folders")} | {
            i["folder"] for i in items
        }
        return [
            {"path": p, "items": sum(1 for i in items if i["folder"] == p)} for p in sorted(paths)
        ]

    async def find_item(self, ref: str) -> dict[str, Any] | None:
        """An item by id (``task:NAME``) or by path (``/Jobs and Tasks/NAME``)."""
        for item in await self.items():
            if ref in (item["id"], item["path"]):
                return item
        return None

    async def move_item(self, kind: str, name: str, folder: str) -> None:
        await self.db.execute_fetchall("INSERT OR IGNORE INTO folders(path) VALUES (?)", (folder,))
        await self.db.execute_fetchall(
            f"UPDATE {ITEM_TABLES[kind]} SET folder=? WHERE name=?", (folder, name)
        )
        await self.db.commit()

    async def delete_item(self, kind: str, name: str) -> None:
        if kind == "filter":
            await self.db.execute_fetchall("DELETE FROM filter_members WHERE filter=?", (name,))
        if kind == "report":
            await self.db.execute_fetchall("DELETE FROM report_snapshots WHERE report=?", (name,))
        await self.db.execute_fetchall(f"DELETE FROM {ITEM_TABLES[kind]} WHERE name=?", (name,))
        await self.db.commit()

    # -- trust --------------------------------------------------------------------------

    async def key(self, role: str, name: str) -> dict[str, Any] | None:
        return await self._one("SELECT * FROM keys WHERE role=? AND name=?", (role, name))

    async def keys(self) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT role, name, fingerprint, state, address, created_at, decided_at FROM keys ORDER BY role, name"
        )

    async def put_key(
        self, role: str, name: str, public_key: bytes, fingerprint: str, state: str, address: str
    ) -> None:
        now = time.time()
        await self.db.execute_fetchall(
            "INSERT INTO keys(role, name, public_key, fingerprint, state, address, created_at, decided_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(role, name) DO UPDATE SET"
            " public_key=excluded.public_key, fingerprint=excluded.fingerprint, state=excluded.state,"
            " address=excluded.address, decided_at=excluded.decided_at",
            (
                role,
                name,
                public_key,
                fingerprint,
                state,
                address,
                now,
                None if state == "pending" else now,
            ),
        )
        await self.db.commit()

    async def decide_keys(
        self, names: list[str] | None, state: str, *, only_pending: bool = True
    ) -> list[str]:
        """Accept or reject keys by name (None: every pending key); return the names changed."""
        where = "state='pending'" if only_pending else "1=1"
        rows = await self._all(f"SELECT role, name FROM keys WHERE {where}")
        chosen = [r for r in rows if names is None or r["name"] in names]
        await run_many(
            self.db,
            "UPDATE keys SET state=?, decided_at=? WHERE role=? AND name=?",
            [(state, time.time(), r["role"], r["name"]) for r in chosen],
        )
        await self.db.commit()
        return sorted({r["name"] for r in chosen})

    async def delete_keys(self, name: str) -> int:
        cur = await self.db.execute("DELETE FROM keys WHERE name=?", (name,))
        count = cur.rowcount
        await cur.close()
        await self.db.commit()
        return count

    async def pending_keys(self) -> int:
        row = await self._one("SELECT count(*) AS n FROM keys WHERE state='pending'")
        return int(row["n"]) if row else 0

    async def add_admin(self, name: str, role: str, token_hash: str) -> None:
        await self.db.execute_fetchall(
            "INSERT INTO admins(name, role, token_hash, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET role=excluded.role, token_hash=excluded.token_hash,"
            " created_at=excluded.created_at, revoked_at=NULL",
            (name, role, token_hash, time.time()),
        )
        await self.db.commit()

    async def admin_by_token(self, token_hash: str) -> dict[str, Any] | None:
        return await self._one(
            "SELECT name, role FROM admins WHERE token_hash=? AND revoked_at IS NULL", (token_hash,)
        )

    async def admins(self) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT name, role, created_at, revoked_at FROM admins ORDER BY name"
        )

    async def revoke_admin(self, name: str) -> bool:
        cur = await self.db.execute(
            "UPDATE admins SET revoked_at=? WHERE name=? AND revoked_at IS NULL",
            (time.time(), name),
        )
        changed = cur.rowcount > 0
        await cur.close()
        await self.db.commit()
        return changed

    async def add_enrol_token(
        self, token_hash: str, uses: int, expires_at: float, created_by: str
    ) -> int:
        return await self._insert(
            "INSERT INTO enrol_tokens(token_hash, uses_left, expires_at, created_at, created_by)"
            " VALUES (?, ?, ?, ?, ?)",
            (token_hash, uses, expires_at, time.time(), created_by),
        )

    async def enrol_with_token(
        self, token_hash: str, role: str, name: str, key: bytes, fingerprint: str, address: str
    ) -> str | None:
        """Spend one use of an enrolment token and accept the key, in one transaction; return
        why the token cannot be used, or None.

        One conditional UPDATE: concurrent enrolments can never spend more uses than there are.
        The key is stored in the same commit, so a use is never spent without its key (a
        handshake cut in between would otherwise cost a use per retry).
        """
        cur = await self.db.execute(
            "UPDATE enrol_tokens SET uses_left=uses_left-1"
            " WHERE token_hash=? AND uses_left>0 AND expires_at>=?",
            (token_hash, time.time()),
        )
        spent = cur.rowcount == 1
        await cur.close()
        if spent:
            await self.put_key(role, name, key, fingerprint, "accepted", address)  # commits both
            return None
        row = await self._one(
            "SELECT uses_left, expires_at FROM enrol_tokens WHERE token_hash=?", (token_hash,)
        )
        if row is None:
            return "unknown enrolment token"
        if row["expires_at"] < time.time():
            return "the enrolment token has expired"
        return "the enrolment token is used up"

    async def enrol_tokens(self) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT id, uses_left, expires_at, created_at, created_by FROM enrol_tokens ORDER BY id"
        )

    async def audit(self, who: str, action: str, detail: str, outcome: str) -> None:
        await self.db.execute_fetchall(
            "INSERT INTO audit(at, who, action, detail, outcome) VALUES (?, ?, ?, ?, ?)",
            (time.time(), who, action, detail, outcome),
        )
        await self.db.commit()

    async def audit_trail(self, limit: int) -> list[dict[str, Any]]:
        return await self._all("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))

    async def raise_message(self, severity: str, text: str, source: str) -> int:
        return await self._insert(
            "INSERT INTO messages(at, severity, text, source) VALUES (?, ?, ?, ?)",
            (time.time(), severity, text, source),
        )

    async def messages(self, limit: int) -> list[dict[str, Any]]:
        return await self._all("SELECT * FROM messages ORDER BY id DESC LIMIT ?", (limit,))

    # -- server log ---------------------------------------------------------------------

    async def write_log(self, level: str, message: str, source: str) -> int:
        return await self._insert(
            "INSERT INTO server_log(at, level, message, source) VALUES (?, ?, ?, ?)",
            (time.time(), level, message, source),
        )

    async def server_log(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._all("SELECT * FROM server_log ORDER BY id DESC LIMIT ?", (limit,))
