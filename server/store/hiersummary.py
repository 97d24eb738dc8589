"""What a child NS tells its parent about itself (issue 24, "up"), and what it lets the parent
read and start: the store queries behind ``server.hierarchy.up``.

- :meth:`HierSummaryMixin.computer_counts`: computers in all, online, and by operating system
  (the first word of the ``os`` an agent reported, ``Linux 6.1.0`` -> ``Linux``: a parent
  wants its children's fleets by platform, not by kernel build; a device with none is
  ``unknown``).
- :meth:`HierSummaryMixin.parent_runs`: runs of tasks and jobs that came from a parent
  (``origin``), running or ended lately, newest first, each with its top-level instances
  counted per state.
- :meth:`HierSummaryMixin.parent_item` and :meth:`HierSummaryMixin.run_origin`: whether an item
  or a run belongs to a parent (what ``hier.start`` and ``hier.run`` allow).

A run belongs to a parent when its task or job is, now, an item from that parent: runs carry
no column of their own for it, so an item the parent withdraws takes its runs out of the
summary with it (they are still on the child, under ``taskfleet runs`` there).
"""

from __future__ import annotations

import json
from typing import Any

from server.store.base import StoreBase

_PARENT_ITEMS = "SELECT name FROM tasks WHERE origin=? UNION SELECT name FROM jobs WHERE origin=?"
"""The names of the tasks and jobs that came from one parent (two ``?``: its name twice)."""


class HierSummaryMixin(StoreBase):
    """Queries for a child's summary, and for the parent's reads and starts through it."""

    async def computer_counts(self) -> dict[str, Any]:
        """``{"total": n, "online": n, "by_os": {os: n}}`` in one pass over ``computers``."""
        rows = await self._all(
            "SELECT os, count(*) AS total, count(*) FILTER (WHERE online=1) AS online"
            " FROM computers GROUP BY os"
        )
        by_os: dict[str, int] = {}
        for r in rows:
            system = (r["os"] or "").split(" ", 1)[0] or "unknown"
            by_os[system] = by_os.get(system, 0) + int(r["total"])
        return {
            "total": sum(int(r["total"]) for r in rows),
            "online": sum(int(r["online"]) for r in rows),
            "by_os": dict(sorted(by_os.items())),
        }

    async def parent_runs(
        self, parent: str, ended_since: float, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Runs of ``parent``'s items that are running or ended at ``ended_since`` or later,
        newest first (at most ``limit``): ``{run_id, kind ("task"|"job"), name, status,
        started_at, ended_at, counts: {state: n}}``, counting top-level instances (a job's
        per-computer rows, not its steps)."""
        recent = (
            "SELECT id FROM ("
            f" SELECT id FROM runs WHERE status='running' AND task_name IN ({_PARENT_ITEMS})"
            " UNION SELECT id FROM runs WHERE status!='running' AND ended_at>=?"
            f"  AND task_name IN ({_PARENT_ITEMS})"
            ") AS recent ORDER BY id DESC LIMIT ?"
        )
        rows = await self._all(
            "SELECT r.id, r.task_name, r.kind, r.status, r.created_at, r.ended_at,"
            " i.status AS state, count(i.id) AS n"
            " FROM runs r LEFT JOIN instances i ON i.run_id=r.id AND i.parent_id IS NULL"
            f" WHERE r.id IN ({recent})"
            " GROUP BY r.id, r.task_name, r.kind, r.status, r.created_at, r.ended_at, i.status",
            (parent, parent, ended_since, parent, parent, limit),
        )
        runs: dict[int, dict[str, Any]] = {}
        for r in rows:
            run = runs.setdefault(
                r["id"],
                {
                    "run_id": r["id"],
                    "kind": "job" if str(r["kind"]).endswith("job") else "task",
                    "name": r["task_name"],
                    "status": r["status"],
                    "started_at": r["created_at"],
                    "ended_at": r["ended_at"],
                    "counts": {},
                },
            )
            if r["state"] is not None:
                run["counts"][r["state"]] = int(r["n"])
        return [runs[k] for k in sorted(runs, reverse=True)]

    async def parent_item(self, kind: str, name: str) -> dict[str, Any] | None:
        """A task or job (``kind``) by name: ``{"origin": str, "definition": dict}``, or None
        when there is none of that kind (``origin`` ``''``: the child's own)."""
        table = {"task": "tasks", "job": "jobs"}[kind]
        row = await self._one(f"SELECT origin, definition FROM {table} WHERE name=?", (name,))
        if row is None:
            return None
        return {"origin": row["origin"] or "", "definition": json.loads(row["definition"])}

    async def run_origin(self, run_id: int) -> str | None:
        """The parent a run belongs to (its task or job's ``origin``): None for no such run,
        ``''`` for a run of the child's own items."""
        row = await self._one(
            "SELECT (SELECT origin FROM tasks WHERE name=r.task_name) AS task_origin,"
            " (SELECT origin FROM jobs WHERE name=r.task_name) AS job_origin"
            " FROM runs r WHERE r.id=?",
            (run_id,),
        )
        if row is None:
            return None
        return str(row["task_origin"] or row["job_origin"] or "")
