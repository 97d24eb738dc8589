"""Retention: the NS deletes what is older than its kind's keep time, a small batch at a time.

Kinds and their defaults (``--retention-KIND``; ``0`` or ``forever`` keeps for ever):

========  ======  ===============================================================
runs      90d     ended runs, by their end time, with their instances and steps
                  (and their schedules' older firings); a running run never goes
audit     365d    the audit trail
log       30d     the server log
messages  30d     messages raised for operators
========  ======  ===============================================================

A pass (:meth:`Purger.purge`) runs at start and every few minutes, at most one at a time. Each
statement deletes at most ``batch`` rows and commits, and the pass pauses between statements:
the NS's one database connection is never held long, so a barrier's roll-up, which writes
through the same connection, is served between batches (``bench/purge.py`` measures it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from protocol.policies import duration_s
from server.interface import NS

DAY_S = 86_400.0
KINDS = ("runs", "audit", "log", "messages")
DEFAULT_KEEP: dict[str, float | None] = {
    "runs": 90 * DAY_S,
    "audit": 365 * DAY_S,
    "log": 30 * DAY_S,
    "messages": 30 * DAY_S,
}
BATCH = 500
"""Rows per delete statement."""
PAUSE_S = 0.005
"""Pause between statements: other work on the connection goes first."""
EVERY_S = 300.0
"""A pass every five minutes (and one at start)."""


def parse_keep(text: str) -> float | None:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"`` → seconds; ``"0"`` or ``"forever"`` → None
    (kept for ever). ValueError, saying what is expected, for anything else."""
    value = text.strip().lower()
    if value in ("0", "forever"):
        return None
    seconds = duration_s(value)
    if seconds is None:
        raise ValueError(f"{text!r} is not a keep time like 90d, 12h, 30m, or 0/forever")
    return float(seconds) if seconds else None


class Purger:
    """Retention passes over the NS's database (see the module docstring)."""

    def __init__(
        self,
        ns: NS,
        keep: dict[str, float | None] | None = None,
        *,
        batch: int = BATCH,
        pause_s: float = PAUSE_S,
        every_s: float = EVERY_S,
    ):
        self.ns = ns
        self.keep = {**DEFAULT_KEEP, **(keep or {})}
        unknown = set(self.keep) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown retention kind(s) {sorted(unknown)}; known: {KINDS}")
        self.batch = batch
        self.pause_s = pause_s
        self.every_s = every_s
        self.first_pass = asyncio.Event()
        """Set once the pass at start has ended (tests that write old rows wait for it, or it
        would purge them under their feet)."""
        self._lock = asyncio.Lock()
        """At most one pass at a time (the periodic one and ``taskfleet purge``)."""

    def cutoffs(self, now: float) -> dict[str, float | None]:
        """Per kind, rows older than this go (None: that kind is kept for ever)."""
        return {k: (None if keep is None else now - keep) for k, keep in self.keep.items()}

    async def loop(self) -> None:
        """A pass now and every ``every_s``, for ever (cancelled when the NS stops)."""
        while True:
            try:
                done = await self.purge()
                if any(v for k, v in done.items() if k not in ("cutoffs", "dry_run")):
                    self.ns.log.info("retention_purged", **done)
            except Exception:
                self.ns.log.exception("retention_pass_failed")
            self.first_pass.set()
            await asyncio.sleep(self.every_s)

    async def count(self, now: float | None = None) -> dict[str, Any]:
        """What a pass at ``now`` would delete, per kind, and the cut-offs (dry run)."""
        cuts = self.cutoffs(time.time() if now is None else now)
        out: dict[str, Any] = {"dry_run": True, "cutoffs": cuts, **_zero()}
        async with self._lock:
            db = self.ns.db
            if (cut := cuts["runs"]) is not None:
                out.update(await db.count_old_runs(cut))
                out["schedule_firings"] = await db.count_old_firings(cut)
            for kind in ("audit", "log", "messages"):
                if (cut := cuts[kind]) is not None:
                    out[kind] = await db.count_old(kind, cut)
        return out

    async def purge(self, now: float | None = None) -> dict[str, Any]:
        """One pass at ``now``: delete, batch by batch, what :meth:`count` counts, and the
        hierarchy's journal rows no child needs any more (``hier_journal``: its own rules,
        ``server.store.hierarchy.HierarchyMixin.trim_journal``, not a keep time)."""
        at = time.time() if now is None else now
        cuts = self.cutoffs(at)
        out: dict[str, Any] = {"dry_run": False, "cutoffs": cuts, **_zero(), "hier_journal": 0}
        async with self._lock:
            db = self.ns.db
            if (cut := cuts["runs"]) is not None:
                newest = await db.max_instance_id()
                while done := await db.purge_runs_batch(cut, self.batch):
                    for key, n in done.items():
                        out[key] += n
                    await asyncio.sleep(self.pause_s)
                if out["instances"] and await db.max_instance_id() < newest:
                    db.renew_epoch()
                while n := await db.purge_firings_batch(cut, self.batch):
                    out["schedule_firings"] += n
                    await asyncio.sleep(self.pause_s)
            for kind in ("audit", "log", "messages"):
                if (cut := cuts[kind]) is not None:
                    while n := await db.purge_batch(kind, cut, self.batch):
                        out[kind] += n
                        await asyncio.sleep(self.pause_s)
            while n := await db.trim_journal(at, self.batch):
                out["hier_journal"] += n
                await asyncio.sleep(self.pause_s)
        return out


def _zero() -> dict[str, int]:
    return dict.fromkeys(
        ("runs", "instances", "steps", "schedule_firings", "audit", "log", "messages"), 0
    )
