"""What admins save and file in folders: tasks and jobs, filters (with their cached membership),
reports (with their snapshots) and policies; and the folders themselves (``ITEM_TABLES``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from server.store.base import StoreBase

ITEM_TABLES = {
    "task": "tasks",
    "job": "jobs",
    "report": "reports",
    "filter": "filters",
    "policy": "policies",
}
"""Item kind → its table; every item table has ``name`` and ``folder``."""


def _origin_column(kind: str) -> str:
    """An item table's ``origin`` (``server.store.hierarchy``); reports never come from a
    parent NS and have none."""
    return "''" if kind == "report" else "origin"


def change_summary(old: dict[str, Any], new: dict[str, Any]) -> str:
    """One line naming what a save changed: top-level fields, and ``params.KEY`` inside
    ``params``."""
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        a, b = old.get(key), new.get(key)
        if key == "params" and isinstance(a, dict) and isinstance(b, dict):
            changed.extend(f"params.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        else:
            changed.append(key)
    return "changed " + ", ".join(changed) if changed else "unchanged"


class CatalogMixin(StoreBase):
    """Tables ``tasks``, ``jobs``, ``filters``, ``filter_members``, ``reports``,
    ``report_snapshots``, ``policies``, ``folders``."""

    # -- tasks and jobs -----------------------------------------------------------------

    async def save_task(self, definition: dict[str, Any], who: str = "") -> bool:
        """Store a validated task; return True when it replaced one of the same name."""
        return bool((await self.save_task_version(definition, who))["replaced"])

    async def save_job(self, definition: dict[str, Any], who: str = "") -> bool:
        """Store a validated job; return True when it replaced one of the same name."""
        return bool((await self.save_job_version(definition, who))["replaced"])

    async def save_task_version(self, definition: dict[str, Any], who: str = "") -> dict[str, Any]:
        """Store a validated task as its next version (the previous ones are kept); return
        ``replaced`` and ``version``. Saving it unchanged keeps the current version."""
        return await self._save(
            "task", definition["name"], definition["type"], definition, who, definition["kind"]
        )

    async def save_job_version(self, definition: dict[str, Any], who: str = "") -> dict[str, Any]:
        """Store a validated job as its next version (see :meth:`save_task_version`)."""
        return await self._save("job", definition["name"], definition["type"], definition, who)

    async def _save(
        self,
        kind: str,
        name: str,
        type_: str,
        definition: dict[str, Any],
        who: str,
        task_kind: str | None = None,
    ) -> dict[str, Any]:
        async with self.db.transaction():
            return await self._save_in(kind, name, type_, definition, who, task_kind)

    async def _save_in(
        self,
        kind: str,
        name: str,
        type_: str,
        definition: dict[str, Any],
        who: str,
        task_kind: str | None,
    ) -> dict[str, Any]:
        now = time.time()
        table = ITEM_TABLES[kind]
        old = await self._one(f"SELECT definition, version FROM {table} WHERE name=?", (name,))
        text = json.dumps(definition)
        if old is not None and json.loads(old["definition"]) == definition:
            return {"replaced": True, "version": int(old["version"]), "changed": False}
        last = await self._one(
            "SELECT max(version) AS v FROM definition_versions WHERE kind=? AND name=?",
            (kind, name),
        )
        version = int(last["v"] or 0) + 1 if last else 1
        if old is not None:
            summary = change_summary(json.loads(old["definition"]), definition)
        else:
            summary = "first saved" if version == 1 else "saved again after a delete"
        await self._journal(kind, name, definition)
        if table == "tasks":
            await self.db.execute(
                "INSERT INTO tasks(name, type, kind, definition, created_at, updated_at, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET type=excluded.type,"
                " kind=excluded.kind, definition=excluded.definition, updated_at=excluded.updated_at,"
                " version=excluded.version",
                (name, type_, task_kind, text, now, now, version),
            )
        else:
            await self.db.execute(
                "INSERT INTO jobs(name, type, definition, created_at, updated_at, version)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET type=excluded.type,"
                " definition=excluded.definition, updated_at=excluded.updated_at,"
                " version=excluded.version",
                (name, type_, text, now, now, version),
            )
        await self.db.execute(
            "INSERT INTO definition_versions(kind, name, version, definition, saved_at, saved_by,"
            " summary) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, name, version, text, now, who, summary),
        )
        return {"replaced": old is not None, "version": version, "changed": True}

    async def saved(
        self, kind: str, name: str, version: int | None = None
    ) -> dict[str, Any] | None:
        """A task or job as saved (``kind`` "task" or "job"): the current one, or ``version``
        (kept after later saves and after a delete). ``{definition, version, saved_at,
        saved_by, summary, current}``; None when there is no such item or version."""
        if version is None:
            row = await self._one(f"SELECT version FROM {ITEM_TABLES[kind]} WHERE name=?", (name,))
            if row is None:
                return None
            version = int(row["version"])
        row = await self._one(
            "SELECT version, definition, saved_at, saved_by, summary FROM definition_versions"
            " WHERE kind=? AND name=? AND version=?",
            (kind, name, version),
        )
        if row is None:
            return None
        return {**row, "definition": json.loads(row["definition"])}

    async def history(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Every kept version of a task or job, oldest first (without the documents)."""
        return await self._all(
            "SELECT version, saved_at, saved_by, summary FROM definition_versions"
            " WHERE kind=? AND name=? ORDER BY version",
            (kind, name),
        )

    async def delete_definition(self, kind: str, name: str) -> bool:
        """Delete a task or job (its kept versions stay, for the runs that used them)."""
        async with self.db.transaction():
            await self._journal(kind, name, None)
            gone = await self.db.execute(f"DELETE FROM {ITEM_TABLES[kind]} WHERE name=?", (name,))
        return gone > 0

    async def task(self, name: str) -> dict[str, Any] | None:
        row = await self._one("SELECT definition FROM tasks WHERE name=?", (name,))
        return json.loads(row["definition"]) if row else None

    async def tasks(self) -> list[dict[str, Any]]:
        """Every task, with ``updated_at``, ``version`` and ``origin`` (the parent NS it came
        from; '' for this NS's own)."""
        return await self._definitions("tasks")

    async def jobs(self) -> list[dict[str, Any]]:
        return await self._definitions("jobs")

    async def _definitions(self, table: str) -> list[dict[str, Any]]:
        rows = await self._all(
            f"SELECT definition, updated_at, version, origin FROM {table} ORDER BY name"
        )
        return [
            {
                **json.loads(r["definition"]),
                "updated_at": r["updated_at"],
                "version": r["version"],
                "origin": r["origin"],
            }
            for r in rows
        ]

    async def catalog_entry(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """One task or job by name, as :meth:`catalog` gives it (None: neither). Saving or
        starting one item must not read every definition: at 10,000 saved tasks that was
        most of the NS's time in a burst of saves."""
        for kind, table in (("task", "tasks"), ("job", "jobs")):  # as catalog: a task wins
            row = await self._one(f"SELECT definition FROM {table} WHERE name=?", (name,))
            if row is not None:
                return kind, json.loads(row["definition"])
        return None

    async def catalog(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Every saved task and job by name, as ``(\"task\"|\"job\", definition)``."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for r in await self._all("SELECT name, definition FROM jobs"):
            out[r["name"]] = ("job", json.loads(r["definition"]))
        for r in await self._all("SELECT name, definition FROM tasks"):
            out[r["name"]] = ("task", json.loads(r["definition"]))
        return out

    # -- filters ------------------------------------------------------------------------

    async def save_filter(self, definition: dict[str, Any]) -> bool:
        async with self.db.transaction():
            old = await self._one("SELECT name FROM filters WHERE name=?", (definition["name"],))
            await self._journal("filter", definition["name"], definition)
            await self.db.execute(
                "INSERT INTO filters(name, definition, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET definition=excluded.definition,"
                " updated_at=excluded.updated_at",
                (definition["name"], json.dumps(definition), time.time()),
            )
        return old is not None

    async def filters(self) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT f.definition, f.members_at, (SELECT count(*) FROM filter_members m WHERE m.filter=f.name)"
            " AS members, f.origin FROM filters f ORDER BY f.name"
        )
        return [
            {
                **json.loads(r["definition"]),
                **{k: r[k] for k in ("members", "members_at", "origin")},
            }
            for r in rows
        ]

    async def set_filter_members(
        self, name: str, computer_ids: set[int]
    ) -> tuple[list[int], list[int]]:
        """Replace a filter's cached membership; return (added, removed) computer ids."""
        db = self.db
        async with db.transaction():
            rows = await self._all("SELECT computer_id FROM filter_members WHERE filter=?", (name,))
            before = {int(r["computer_id"]) for r in rows}
            added, removed = sorted(computer_ids - before), sorted(before - computer_ids)
            await db.executemany(
                "DELETE FROM filter_members WHERE filter=? AND computer_id=?",
                [(name, c) for c in removed],
            )
            await db.executemany(
                "INSERT INTO filter_members(filter, computer_id) VALUES (?, ?)",
                [(name, c) for c in added],
            )
            await db.execute("UPDATE filters SET members_at=? WHERE name=?", (time.time(), name))
        return added, removed

    async def filter_definition(self, name: str) -> dict[str, Any] | None:
        """One filter as saved, with ``members_at`` (when its membership was computed)."""
        row = await self._one("SELECT definition, members_at FROM filters WHERE name=?", (name,))
        if row is None:
            return None
        return {**json.loads(row["definition"]), "members_at": row["members_at"]}

    async def filter_member_names(self, name: str) -> list[dict[str, Any]]:
        """The cached members of a filter: ``{name, online, has_agent}``, by name."""
        return await self._all(
            "SELECT c.name, c.online, c.has_agent FROM filter_members m"
            " JOIN computers c ON c.id=m.computer_id WHERE m.filter=? ORDER BY c.name",
            (name,),
        )

    async def filter_computers(self, names: list[str]) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT DISTINCT c.* FROM computers c JOIN filter_members m ON m.computer_id=c.id"
            f" WHERE m.filter IN ({','.join('?' * len(names))}) ORDER BY c.name",
            names,
        )

    # -- reports ------------------------------------------------------------------------

    async def save_report(self, name: str, query: str, description: str) -> bool:
        async with self.db.transaction():
            old = await self._one("SELECT name FROM reports WHERE name=?", (name,))
            await self.db.execute(
                "INSERT INTO reports(name, query, description, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET query=excluded.query,"
                " description=excluded.description, updated_at=excluded.updated_at",
                (name, query, description, time.time()),
            )
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

    # -- policies -----------------------------------------------------------------------

    async def save_policy(self, definition: dict[str, Any]) -> bool:
        async with self.db.transaction():
            old = await self._one("SELECT name FROM policies WHERE name=?", (definition["name"],))
            await self._journal("policy", definition["name"], definition)
            await self.db.execute(
                "INSERT INTO policies(name, definition, enabled, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET definition=excluded.definition,"
                " enabled=excluded.enabled, updated_at=excluded.updated_at",
                (
                    definition["name"],
                    json.dumps(definition),
                    int(definition["enabled"]),
                    time.time(),
                ),
            )
        return old is not None

    async def policies(self) -> list[dict[str, Any]]:
        rows = await self._all("SELECT definition, enabled, origin FROM policies ORDER BY name")
        return [
            {**json.loads(r["definition"]), "enabled": bool(r["enabled"]), "origin": r["origin"]}
            for r in rows
        ]

    async def set_policy_enabled(self, name: str, enabled: bool) -> bool:
        async with self.db.transaction():
            row = await self._one("SELECT definition FROM policies WHERE name=?", (name,))
            if row is None:
                return False
            definition = {**json.loads(row["definition"]), "enabled": enabled}
            await self._journal("policy", name, definition)
            await self.db.execute(
                "UPDATE policies SET enabled=?, definition=?, updated_at=? WHERE name=?",
                (int(enabled), json.dumps(definition), time.time(), name),
            )
        return True

    # -- items and folders --------------------------------------------------------------

    async def items(self, folder: str | None = None) -> list[dict[str, Any]]:
        """Every item (kind, name, folder, path, id, origin: the parent NS it came from, ''
        for this NS's own), optionally in one folder (and below it)."""
        union = " UNION ALL ".join(
            f"SELECT '{kind}' AS kind, name, folder, {_origin_column(kind)} AS origin FROM {table}"
            for kind, table in ITEM_TABLES.items()
        )
        rows = await self._all(f"SELECT * FROM ({union}) AS items ORDER BY folder, kind, name")
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
        async with self.db.transaction():
            await self.db.execute(
                "INSERT INTO folders(path) VALUES (?) ON CONFLICT DO NOTHING", (folder,)
            )
            await self.db.execute(
                f"UPDATE {ITEM_TABLES[kind]} SET folder=? WHERE name=?", (folder, name)
            )

    async def delete_item(self, kind: str, name: str) -> None:
        async with self.db.transaction():
            await self._journal(kind, name, None)
            if kind == "filter":
                await self.db.execute("DELETE FROM filter_members WHERE filter=?", (name,))
            if kind == "report":
                await self.db.execute("DELETE FROM report_snapshots WHERE report=?", (name,))
            await self.db.execute(f"DELETE FROM {ITEM_TABLES[kind]} WHERE name=?", (name,))
