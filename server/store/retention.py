"""Retention: what is older than its kind's cut-off, counted, and deleted a small batch at a time.

Every delete here is one statement of at most ``batch`` rows, committed at once: the NS has one
connection, so a statement that deleted a million rows would hold every other query (a barrier's
roll-up among them) behind it. The caller (``server.retention``) loops and yields between
batches. Only ended runs go, by their end time; a run still ``running`` is never touched.
"""

from __future__ import annotations

from typing import Any

from server.store.base import StoreBase

JOURNALS = {"audit": "audit", "log": "server_log", "messages": "messages"}
"""Retention kind → its append-only table (each has ``id`` and ``at``)."""

_OLD_RUNS = (
    "SELECT id FROM runs WHERE status != 'running' AND ended_at < ?"
    " AND id < (SELECT max(id) FROM runs)"
    " AND id {differs} (SELECT run_id FROM instances WHERE id=(SELECT max(id) FROM instances))"
)
"""Ended runs older than a cut-off, but never the newest run nor the run holding the newest
instance row: SQLite gives a new row ``max(id) + 1``, so deleting those would hand out their ids
again (a run id in the audit trail or a schedule's last firing would name another run, and an
instance id the agents remember would be taken for a repeat). Both ids only grow. (PostgreSQL's
sequences never give an id twice; the same rule keeps both stores alike.) ``{differs}``: the
database's ``IS NOT`` that takes NULL as a value."""
_OLD_FIRINGS = (
    "SELECT f.schedule, f.due_at FROM schedule_firings f WHERE f.due_at < ? AND f.due_at <"
    " (SELECT max(g.due_at) FROM schedule_firings g WHERE g.schedule=f.schedule)"
)


class RetentionMixin(StoreBase):
    """Counting and purging old rows of ``runs`` (with ``instances``, ``steps`` and old
    ``schedule_firings``), ``audit``, ``server_log`` and ``messages``."""

    async def _count(self, sql: str, args: tuple[Any, ...]) -> int:
        rows = await self.db.fetch(sql, args)
        return int(rows[0][0])

    @property
    def _old_runs(self) -> str:
        return _OLD_RUNS.format(differs=self.db.differs)

    async def count_old_runs(self, cut: float) -> dict[str, int]:
        """What a purge of runs ended before ``cut`` would delete, per table."""
        old = self._old_runs
        return {
            "runs": await self._count(f"SELECT count(*) FROM ({old}) AS old", (cut,)),
            "instances": await self._count(
                f"SELECT count(*) FROM instances WHERE run_id IN ({old})", (cut,)
            ),
            "steps": await self._count(
                f"SELECT count(*) FROM steps WHERE run_id IN ({old})", (cut,)
            ),
        }

    async def count_old_firings(self, cut: float) -> int:
        """Firings older than ``cut`` that are not their schedule's latest."""
        return await self._count(f"SELECT count(*) FROM ({_OLD_FIRINGS}) AS old", (cut,))

    async def count_old(self, kind: str, cut: float) -> int:
        """How many rows of a journal (``audit``, ``log``, ``messages``) are older than ``cut``."""
        return await self._count(f"SELECT count(*) FROM {JOURNALS[kind]} WHERE at < ?", (cut,))

    async def _delete(self, sql: str, args: tuple[Any, ...]) -> int:
        return await self.db.execute(sql, args)

    async def purge_runs_batch(self, cut: float, batch: int) -> dict[str, int]:
        """Delete at most ``batch`` rows (one statement) of the oldest run ended before ``cut``:
        its nested instances, then its top-level ones, then its steps and the run itself.
        Returns what was deleted; empty when no such run is left."""
        run = await self._one(self._old_runs + " ORDER BY id LIMIT 1", (cut,))
        if run is None:
            return {}
        run_id = run["id"]
        for nested in ("IS NOT NULL", "IS NULL"):
            n = await self._delete(
                "DELETE FROM instances WHERE id IN (SELECT id FROM instances WHERE run_id=?"
                f" AND parent_id {nested} LIMIT ?)",
                (run_id, batch),
            )
            if n:
                return {"instances": n}
        steps = await self._delete("DELETE FROM steps WHERE run_id=?", (run_id,))
        runs = await self._delete("DELETE FROM runs WHERE id=?", (run_id,))
        return {"steps": steps, "runs": runs}

    async def purge_firings_batch(self, cut: float, batch: int) -> int:
        """Delete old firings of schedules, keeping each schedule's latest (the one that says
        which times have fired); returns how many went."""
        return await self._delete(
            f"DELETE FROM schedule_firings WHERE (schedule, due_at) IN ({_OLD_FIRINGS} LIMIT ?)",
            (cut, batch),
        )

    async def purge_batch(self, kind: str, cut: float, batch: int) -> int:
        """Delete at most ``batch`` of the oldest rows of a journal older than ``cut``."""
        table = JOURNALS[kind]
        return await self._delete(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE at < ?"
            " ORDER BY id LIMIT ?)",
            (cut, batch),
        )

    async def max_instance_id(self) -> int:
        return await self._count("SELECT coalesce(max(id), 0) FROM instances", ())
