"""Schedules on the NS and their firings.

A firing is recorded with the key (schedule, scheduled time) *before* its run starts, in its own
transaction: a second attempt for the same time (a restart, a late wake-up) finds the row and
does nothing. The run's id is added once the run exists. A crash between the two leaves a firing
with no run: that time is not fired again (at most once, never twice).
"""

from __future__ import annotations

import json
import time
from typing import Any

from server.store.base import StoreBase


class SchedulesMixin(StoreBase):
    """Tables ``schedules`` and ``schedule_firings``."""

    async def save_schedule(self, definition: dict[str, Any], now: float) -> bool:
        """Save (or replace) a schedule; True if it replaced one. Firing times count from
        ``now`` (the schedules' clock): a new or replaced schedule missed nothing before."""
        async with self.db.transaction():
            return await self._save_schedule(definition, now)

    async def _save_schedule(self, definition: dict[str, Any], now: float) -> bool:
        replaced = await self._one("SELECT name FROM schedules WHERE name=?", (definition["name"],))
        await self.db.execute(
            "INSERT INTO schedules(name, definition, enabled, since, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
            " definition=excluded.definition, enabled=excluded.enabled, since=excluded.since,"
            " updated_at=excluded.updated_at",
            (
                definition["name"],
                json.dumps(definition),
                int(definition["enabled"]),
                now,
                now,
                now,
            ),
        )
        return replaced is not None

    async def schedules(self) -> list[dict[str, Any]]:
        """Every schedule with its last firing (scheduled time, run id, outcome), by name;
        ``stored`` is the definition's text as stored (what :meth:`claim_firing` compares)."""
        rows = await self._all(
            "SELECT s.name, s.definition, s.enabled, s.since, s.updated_at,"
            " f.due_at AS last_due, f.run_id AS last_run_id, f.outcome AS last_outcome"
            " FROM schedules s LEFT JOIN schedule_firings f ON f.schedule=s.name AND f.due_at="
            " (SELECT max(due_at) FROM schedule_firings WHERE schedule=s.name)"
            " ORDER BY s.name"
        )
        for r in rows:
            r["stored"] = r["definition"]
            r["definition"] = json.loads(r["definition"])
            r["enabled"] = bool(r["enabled"])
        return rows

    async def schedule(self, name: str) -> dict[str, Any] | None:
        return next((s for s in await self.schedules() if s["name"] == name), None)

    async def set_schedule_enabled(self, name: str, enabled: bool, now: float) -> None:
        """Enable or disable; enabling counts firing times from ``now`` (the times that passed
        while it was disabled were not missed, they were not wanted)."""
        async with self.db.transaction():
            row = await self._one("SELECT definition, since FROM schedules WHERE name=?", (name,))
            if row is None:
                return
            definition = {**json.loads(row["definition"]), "enabled": enabled}
            await self.db.execute(
                "UPDATE schedules SET enabled=?, since=?, updated_at=?, definition=? WHERE name=?",
                (
                    int(enabled),
                    now if enabled else row["since"],
                    now,
                    json.dumps(definition),
                    name,
                ),
            )

    async def delete_schedule(self, name: str) -> None:
        async with self.db.transaction():
            await self.db.execute("DELETE FROM schedule_firings WHERE schedule=?", (name,))
            await self.db.execute("DELETE FROM schedules WHERE name=?", (name,))

    async def claim_firing(self, row: dict[str, Any], due_at: float) -> bool:
        """Record that the schedule ``row`` (as :meth:`schedules` gave it) fires for
        ``due_at``, durably; False if that time was already recorded (it must not fire again),
        or if the schedule is no longer what the caller read: deleted, disabled, enabled again
        or replaced since (its ``updated_at`` and stored definition are compared). The check and the
        record are one statement, so a change an admin makes while the scheduler's pass is
        starting other runs is never overtaken by a stale read (and a deleted schedule gets
        no firing row that nothing would ever remove)."""
        # DO NOTHING, not a caught IntegrityError: one statement, no failed transaction.
        claimed = await self.db.execute(
            "INSERT INTO schedule_firings(schedule, due_at, fired_at)"
            " SELECT CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION)"
            " WHERE EXISTS (SELECT 1 FROM schedules"
            " WHERE name=? AND enabled=1 AND updated_at=? AND definition=?)"
            " ON CONFLICT (schedule, due_at) DO NOTHING",
            (
                row["name"],
                due_at,
                time.time(),
                row["name"],
                row["updated_at"],
                row["stored"],
            ),
        )
        return claimed == 1

    async def firing_done(
        self, schedule: str, due_at: float, run_id: int | None, outcome: str
    ) -> None:
        """The run a firing started (None: it could not start; ``outcome`` says why)."""
        await self.db.execute(
            "UPDATE schedule_firings SET run_id=?, outcome=? WHERE schedule=? AND due_at=?",
            (run_id, outcome, schedule, due_at),
        )

    async def firings(self, schedule: str) -> list[dict[str, Any]]:
        """A schedule's recorded firings, oldest first."""
        return await self._all(
            "SELECT due_at, fired_at, run_id, outcome FROM schedule_firings WHERE schedule=?"
            " ORDER BY due_at",
            (schedule,),
        )
