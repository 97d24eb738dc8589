"""Computers, task servers and who is online; organizational groups of computers; the basic
inventory computers report, with its history.
"""

from __future__ import annotations

import json
import time
from typing import Any

from runtime.db import run_many
from server.store.base import StoreBase


class ComputersMixin(StoreBase):
    """Tables ``computers``, ``taskservers``, ``groups``, ``group_members``, ``inventory``."""

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

    async def computers_by_id(self, ids: list[int]) -> list[dict[str, Any]]:
        """What planning a step needs of each target: id, name, has_agent and taskserver
        (four columns, not every one: a step on 10,000 computers reads them all)."""
        # One statement for any number of ids (json_each), not one per 500: a quarter less time.
        return await self._all(
            "SELECT id, name, has_agent, taskserver FROM computers"
            " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY name",
            (json.dumps(ids),),
        )

    async def set_online(self, names: list[str], online: bool, taskserver: str | None) -> int:
        """Mark computers online or offline as reported by ``taskserver`` (None: the built-in
        service); return how many ``online`` names it refused.

        A TS speaks only for its own agents: a computer assigned to another TS (or to none, or
        unknown) is left as it is, and counted when ``online`` (a TS that claims another's
        computers). An ``offline`` from the TS a computer left is a late word, not a claim: it
        changes nothing either (the computer may be connected elsewhere), and is not counted.
        """
        now = time.time()
        async with self.db.executemany(
            f"UPDATE computers SET online={int(online)}, last_seen=? WHERE name=? AND taskserver IS ?",
            [(now, n, taskserver) for n in names],
        ) as cur:
            changed = cur.rowcount
        await self.db.commit()
        return max(0, len(names) - changed) if online else 0

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
        """Every TS an agent may be sent to: those whose key is accepted now (a TS an admin
        rejected or deleted gets no agent, not even within its restart grace)."""
        return await self._all(
            "SELECT t.* FROM taskservers t JOIN keys k"
            " ON k.role='taskserver' AND k.name=t.name AND k.state='accepted' ORDER BY t.name"
        )

    async def computers_per_taskserver(self) -> dict[str, int]:
        rows = await self._all(
            "SELECT taskserver, count(*) AS n FROM computers"
            " WHERE taskserver IS NOT NULL GROUP BY taskserver"
        )
        return {r["taskserver"]: r["n"] for r in rows}

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

    async def latest_inventories(self) -> dict[int, dict[str, Any]]:
        rows = await self._all(
            "SELECT i.computer_id, i.data FROM inventory i JOIN ("
            " SELECT computer_id, max(at) AS at FROM inventory GROUP BY computer_id) last"
            " ON last.computer_id=i.computer_id AND last.at=i.at"
        )
        return {int(r["computer_id"]): json.loads(r["data"]) for r in rows}

    # -- groups -------------------------------------------------------------------------

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
