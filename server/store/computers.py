"""Computers, task servers and who is online; organizational groups of computers; the basic
inventory computers report, with its history.
"""

from __future__ import annotations

import json
import time
from typing import Any

from protocol.states import TERMINAL
from protocol.tasks import inventory_mac
from server.store.base import StoreBase

_TERMINAL_SQL = "(" + ",".join(f"'{s}'" for s in sorted(TERMINAL)) + ")"


class ComputersMixin(StoreBase):
    """Tables ``computers``, ``taskservers``, ``groups``, ``group_members``, ``inventory``."""

    # -- computers and task servers -----------------------------------------------------

    async def register_agent(self, name: str, info: dict[str, Any]) -> dict[str, Any]:
        """Create or update the computer for an agent; return its row."""
        now = time.time()
        raw = info.get("addresses")
        addresses: list[Any] = raw if isinstance(raw, list) else []
        # The row comes back from the upsert itself (RETURNING: SQLite 3.35, PostgreSQL): one
        # statement per registration, not a second one to read it.
        async with self.db.transaction():
            rows = await self.db.fetch_dicts(
                "INSERT INTO computers(name, has_agent, os, agent_version, addresses, last_seen,"
                " created_at) VALUES (?, 1, ?, ?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET has_agent=1, os=excluded.os,"
                " agent_version=excluded.agent_version, addresses=excluded.addresses,"
                " last_seen=excluded.last_seen RETURNING *",
                (
                    name,
                    str(info.get("os", ""))[:200],
                    str(info.get("agent_version", ""))[:50],
                    json.dumps([str(a)[:100] for a in addresses[:64]]),
                    now,
                    now,
                ),
            )
        return rows[0]

    async def add_device(
        self, name: str, address: str, taskserver: str | None, mac: str = ""
    ) -> dict[str, Any]:
        """Add a computer with no agent. Raises ValueError if the name exists."""
        existing = await self._one("SELECT id FROM computers WHERE name=?", (name,))
        if existing is not None:
            raise ValueError(f"a computer named {name!r} already exists")
        await self.db.execute(
            "INSERT INTO computers(name, has_agent, addresses, taskserver, created_at, mac)"
            " VALUES (?, 0, ?, ?, ?, ?)",
            (name, json.dumps([address] if address else []), taskserver, time.time(), mac),
        )
        row = await self._one("SELECT * FROM computers WHERE name=?", (name,))
        assert row is not None
        return row

    async def set_taskserver(self, computer_id: int, taskserver: str | None) -> None:
        await self.db.execute(
            "UPDATE computers SET taskserver=? WHERE id=?", (taskserver, computer_id)
        )

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
        taskserver, online): ``run.start --all`` on 10,000 computers reads five columns, not all
        eleven (a third of the time, before the run exists)."""
        return await self._all(
            "SELECT id, name, has_agent, taskserver, online FROM computers ORDER BY name"
        )

    async def stale_computers(self, seen_before: float) -> list[dict[str, Any]]:
        """Computers with an agent that is offline and was last seen before ``seen_before``
        (never seen: since it was created), by name. Devices have no agent to be seen: never
        listed."""
        return await self._all(
            "SELECT * FROM computers WHERE has_agent=1 AND online=0"
            " AND coalesce(last_seen, created_at) < ? ORDER BY name",
            (seen_before,),
        )

    async def unfinished_work(self, computer_ids: list[int]) -> list[dict[str, Any]]:
        """The instances of these computers that have not ended (not step rows): id, computer,
        route, epoch. Read with the index on ``computer_id``."""
        return await self._all(
            "SELECT id, computer, route, epoch FROM instances"
            f" WHERE {self.db.in_list('computer_id')} AND parent_id IS NULL"
            f" AND status NOT IN {_TERMINAL_SQL}",
            (self.db.list_arg(computer_ids),),
        )

    async def delete_computers(self, computer_ids: list[int], reason: str) -> None:
        """Forget computers that left the fleet, in one transaction: their group and filter
        memberships, their inventory history and their rows.

        Their runs keep their instance rows, by the computer's name (``instances.computer``):
        those rows lose only their ``computer_id`` (set NULL, as an ``ON DELETE SET NULL`` would),
        so a computer made later that gets the same row id inherits none of them; a client job's
        step rows still open end ``stopped`` with ``reason`` (their job's instance was ended by
        the caller, through the roll-up); a run still going forgets their ids in its targets, so
        a later step of a server job does not reach them.
        """
        if not computer_ids:
            return
        now = time.time()
        ids = [(i,) for i in computer_ids]
        gone = set(computer_ids)
        db = self.db
        async with db.transaction():
            await db.executemany(
                "UPDATE instances SET status='stopped', reason=?, ended_at=?, updated_at=?"
                f" WHERE computer_id=? AND parent_id IS NOT NULL AND status NOT IN {_TERMINAL_SQL}",
                [(reason, now, now, i) for i in computer_ids],
            )
            await db.executemany("UPDATE instances SET computer_id=NULL WHERE computer_id=?", ids)
            # Running runs are few: their targets are filtered here, the same on both databases.
            kept = []
            for run_id, text in await db.fetch(
                "SELECT id, targets FROM runs WHERE status='running'"
            ):
                targets = json.loads(text)
                if gone.intersection(targets):
                    kept.append((json.dumps([t for t in targets if t not in gone]), run_id))
            await db.executemany("UPDATE runs SET targets=? WHERE id=?", kept)
            for table in ("group_members", "filter_members", "inventory"):
                await db.executemany(f"DELETE FROM {table} WHERE computer_id=?", ids)
            await db.executemany("DELETE FROM computers WHERE id=?", ids)

    async def delete_agent_keys(self, names: list[str]) -> list[str]:
        """Forget the agent keys of these names (a TS's key of the same name stays); return the
        names that had one."""
        async with self.db.transaction():
            found = await self._all(
                f"SELECT name FROM keys WHERE role='agent' AND {self.db.in_list('name', 'text')}"
                " ORDER BY name",
                (self.db.list_arg(names),),
            )
            await self.db.executemany(
                "DELETE FROM keys WHERE role='agent' AND name=?", [(r["name"],) for r in found]
            )
        return [str(r["name"]) for r in found]

    async def computers_by_id(self, ids: list[int]) -> list[dict[str, Any]]:
        """What planning a step needs of each target: id, name, has_agent and taskserver
        (four columns, not every one: a step on 10,000 computers reads them all)."""
        # One statement for any number of ids (a list parameter), not one per 500: a quarter
        # less time.
        return await self._all(
            "SELECT id, name, has_agent, taskserver FROM computers"
            f" WHERE {self.db.in_list('id')} ORDER BY name",
            (self.db.list_arg(ids),),
        )

    async def set_online(self, names: list[str], online: bool, taskserver: str | None) -> int:
        """Mark computers online or offline as reported by ``taskserver`` (None: the built-in
        service); return how many ``online`` names it refused.

        A TS speaks only for its own agents: a computer assigned to another TS (or to none, or
        unknown) is left as it is, and counted when ``online`` (a TS that claims another's
        computers). An ``offline`` from the TS a computer left is a late word, not a claim: it
        changes nothing either (the computer may be connected elsewhere), and is not counted.
        """
        changed = await self.db.execute(
            f"UPDATE computers SET online={int(online)}, last_seen=?"
            f" WHERE {self.db.in_list('name', 'text')} AND taskserver {self.db.same} ?",
            (time.time(), self.db.list_arg(names), taskserver),
        )
        return max(0, len(names) - changed) if online else 0

    async def set_all_offline(self, taskserver: str | None, keep: list[str] | None = None) -> None:
        """Mark a TS's computers offline (all of them, or all but ``keep``)."""
        where = "taskserver IS NULL AND has_agent=1" if taskserver is None else "taskserver=?"
        args: tuple[Any, ...] = () if taskserver is None else (taskserver,)
        if keep:
            where += f" AND NOT {self.db.in_list('name', 'text')}"
            args += (self.db.list_arg(keep),)
        # Seen until now: ``computers --offline-for`` counts from here, not from when it came.
        await self.db.execute(
            f"UPDATE computers SET online=0, last_seen=? WHERE online=1 AND {where}",
            (time.time(), *args),
        )

    async def reset_presence(self) -> None:
        """At start nobody is connected yet. Those that were online when this NS last stopped
        count as seen until now (``computers --offline-for`` counts from there)."""
        async with self.db.transaction():
            await self.db.execute(
                "UPDATE computers SET online=0, last_seen=? WHERE online=1", (time.time(),)
            )
            await self.db.execute("UPDATE taskservers SET online=0")

    async def upsert_taskserver(
        self,
        name: str,
        url: str,
        online: bool,
        public_key: bytes | None = None,
        tls_fingerprint: str = "",
    ) -> None:
        await self.db.execute(
            "INSERT INTO taskservers(name, url, online, last_seen, public_key, tls_fingerprint)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET url=excluded.url, online=excluded.online,"
            " last_seen=excluded.last_seen,"
            " public_key=coalesce(excluded.public_key, taskservers.public_key),"
            " tls_fingerprint=CASE WHEN excluded.tls_fingerprint='' THEN taskservers.tls_fingerprint"
            " ELSE excluded.tls_fingerprint END",
            (name, url, 1 if online else 0, time.time(), public_key, tls_fingerprint),
        )

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
        rows = await self._all(
            f"SELECT computer_id, output FROM instances WHERE {self.db.in_list('id')}"
            " AND computer_id IS NOT NULL",
            (self.db.list_arg(instance_ids),),
        )
        keep, macs = [], []
        for r in rows:
            try:
                data = json.loads(r["output"])
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                keep.append((r["computer_id"], now, json.dumps(data)))
                if mac := inventory_mac(data):  # wake-on-lan's %MACADDRESS% (docs/tasks.md §10)
                    macs.append((mac, r["computer_id"]))
        async with self.db.transaction():
            await self.db.executemany(
                "INSERT INTO inventory(computer_id, at, data) VALUES (?, ?, ?)", keep
            )
            await self.db.executemany("UPDATE computers SET mac=? WHERE id=?", macs)

    async def inventory(self, computer: str, history: bool = False) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT i.at, i.data FROM inventory i JOIN computers c ON c.id=i.computer_id"
            " WHERE c.name=? ORDER BY i.at DESC LIMIT ?",
            (computer, 1000 if history else 1),
        )
        return [{"at": r["at"], **json.loads(r["data"])} for r in rows]

    async def fleet_counts(self) -> list[dict[str, Any]]:
        """Computers per task server, ``{taskserver, computers, online, agents}`` by TS name
        (``(built-in)``: agents served by the NS; ``None``: devices with no TS), as the computer
        view names them. The console's Fleet page sums them: one pass over ``computers``."""
        return await self._all(
            "SELECT coalesce(taskserver, CASE WHEN has_agent=1 THEN '(built-in)' END)"
            " AS taskserver, count(*) AS computers, count(*) FILTER (WHERE online=1) AS online,"
            " count(*) FILTER (WHERE has_agent=1) AS agents FROM computers"
            " GROUP BY 1 ORDER BY 1"
        )

    async def computer_groups(self, computer_id: int) -> list[str]:
        """The groups a computer is directly in, by name."""
        rows = await self._all(
            "SELECT g.name FROM group_members m JOIN groups g ON g.id=m.group_id"
            " WHERE m.computer_id=? ORDER BY g.name",
            (computer_id,),
        )
        return [str(r["name"]) for r in rows]

    async def computer_filters(self, computer_id: int) -> list[str]:
        """The filters whose cached membership holds a computer, by name."""
        rows = await self._all(
            "SELECT filter FROM filter_members WHERE computer_id=? ORDER BY filter", (computer_id,)
        )
        return [str(r["filter"]) for r in rows]

    async def latest_inventories(self) -> dict[int, dict[str, Any]]:
        rows = await self._all(
            "SELECT i.computer_id, i.data FROM inventory i JOIN ("
            " SELECT computer_id, max(at) AS at FROM inventory GROUP BY computer_id) last"
            " ON last.computer_id=i.computer_id AND last.at=i.at"
        )
        return {int(r["computer_id"]): json.loads(r["data"]) for r in rows}

    # -- groups -------------------------------------------------------------------------

    async def groups(self) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT g.id, g.name, p.name AS parent, (SELECT count(*) FROM group_members m WHERE m.group_id=g.id)"
            " AS computers, g.replicate, g.origin"
            " FROM groups g LEFT JOIN groups p ON p.id=g.parent_id ORDER BY g.name"
        )
        return [{**r, "replicate": bool(r["replicate"])} for r in rows]

    async def add_group(self, name: str, parent: str | None, replicate: bool = False) -> int:
        """A new group (``replicate``: sent to the child NS, ``server.store.hierarchy``)."""
        async with self.db.transaction():
            parent_id = None
            if parent:
                row = await self._one("SELECT id FROM groups WHERE name=?", (parent,))
                if row is None:
                    raise ValueError(f"no group named {parent!r}")
                parent_id = row["id"]
            doc = {"name": name, "parent": parent or None, "replicate": replicate}
            await self._journal("group", name, doc)
            return await self._insert(
                "INSERT INTO groups(name, parent_id, created_at, replicate) VALUES (?, ?, ?, ?)",
                (name, parent_id, time.time(), int(replicate)),
            )

    async def group_id(self, name: str) -> int | None:
        row = await self._one("SELECT id FROM groups WHERE name=?", (name,))
        return int(row["id"]) if row else None

    async def add_to_group(self, group_id: int, computer_ids: list[int]) -> int:
        """Add computers to a group; return how many were not in it already."""
        async with self.db.transaction():
            before = await self._one(
                "SELECT count(*) AS n FROM group_members WHERE group_id=?", (group_id,)
            )
            await self.db.executemany(
                "INSERT INTO group_members(group_id, computer_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                [(group_id, c) for c in computer_ids],
            )
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

    async def group(self, name: str) -> dict[str, Any] | None:
        """One group: ``{id, name, parent, replicate, origin}`` (``parent`` a name or None)."""
        row = await self._one(
            "SELECT g.id, g.name, p.name AS parent, g.replicate, g.origin FROM groups g"
            " LEFT JOIN groups p ON p.id=g.parent_id WHERE g.name=?",
            (name,),
        )
        return None if row is None else {**row, "replicate": bool(row["replicate"])}

    async def nested_groups(self, group_id: int) -> list[str]:
        """The names of the groups directly below this one."""
        rows = await self._all(
            "SELECT name FROM groups WHERE parent_id=? ORDER BY name", (group_id,)
        )
        return [str(r["name"]) for r in rows]

    async def group_members(self, group_id: int) -> list[dict[str, Any]]:
        """The computers directly in a group (not through nested groups): ``{name, online,
        has_agent}``, by name."""
        return await self._all(
            "SELECT c.name, c.online, c.has_agent FROM group_members m"
            " JOIN computers c ON c.id=m.computer_id WHERE m.group_id=? ORDER BY c.name",
            (group_id,),
        )

    async def remove_from_group(self, group_id: int, computer_ids: list[int]) -> int:
        """Take computers out of a group; return how many were in it."""
        return await self.db.execute(
            f"DELETE FROM group_members WHERE group_id=? AND {self.db.in_list('computer_id')}",
            (group_id, self.db.list_arg(computer_ids)),
        )

    async def delete_group(self, group_id: int) -> int:
        """Delete a group with no nested group (the caller checks); its computers stay, out of
        it. Returns how many computers it held."""
        async with self.db.transaction():
            group = await self._one("SELECT name FROM groups WHERE id=?", (group_id,))
            if group is not None:
                await self._journal("group", group["name"], None)
            held = await self.db.execute("DELETE FROM group_members WHERE group_id=?", (group_id,))
            await self.db.execute("DELETE FROM groups WHERE id=?", (group_id,))
        return held
