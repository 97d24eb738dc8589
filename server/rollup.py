"""Roll-up: results and presence coming back from relays, applied in batches, counted against
their steps, and pushed to the admins who watch.

Results come back in ``reports`` batches, are applied in one transaction each
(``Store.apply_reports``), and count down their step's routes; a run whose last step reached
zero ends (``Runs.finish``). Watchers get the changes of one pass of the event loop together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from protocol.messages import Event, Report
from protocol.states import is_terminal
from runtime.link import Link
from server.interface import CoreParts
from server.jobs import SERVER_JOB
from server.store import Change

WATCH_EVENT_ITEMS = 1_000
"""Instance changes per `instances` event (a watcher gets one event per roll-up batch)."""


class Rollup(CoreParts):
    """Applying results and presence, telling watchers (a part of ``NotificationServer``)."""

    _changes: dict[int, list[Change]]
    """Changes queued for watchers in this pass of the event loop, by run."""
    _changes_handle: asyncio.Handle | None

    async def on_presence(
        self, taskserver: str | None, online: list[str], offline: list[str], full: bool
    ) -> None:
        if full:
            await self.db.set_all_offline(taskserver, keep=online)
        if online:
            await self.db.set_online(online, True, taskserver)
        if offline:
            await self.db.set_online(offline, False, taskserver)

    async def on_reports(self, reports: list[Report], route: str | None = None) -> None:
        """Apply a batch of reports (one transaction), tell watchers, count steps, end runs."""
        before = self.db.refused
        changes = await self.db.apply_reports(reports, route)
        if self.db.refused > before:
            self.refused["foreign_report"] += self.db.refused - before
            self.log.warning("reports_refused", route=route, count=self.db.refused - before)
        ended: list[int] = []
        inventories: list[int] = []
        for change in changes:
            self._notify(change)
            if change.parent_id is not None or not is_terminal(change.state):
                continue
            active = self.active.get(change.run_id)
            if (
                active is not None
                and active.task_type == "send-basic-inventory"
                and change.state == "succeeded"
            ):
                inventories.append(change.instance_id)
            stage = active.stages.get(change.step) if active is not None else None
            if active is None or stage is None:
                continue
            stage.count(change.route)
            if stage.remaining == 0:
                del active.stages[change.step]
                if active.kind != SERVER_JOB:
                    ended.append(change.run_id)
        if inventories:
            await self.db.save_inventories(inventories)
        for run_id in ended:
            await self.finish(run_id)

    async def raise_message(self, severity: str, text: str, source: str) -> int:
        """Keep a message and push it to the admins who watch messages."""
        message_id = await self.db.raise_message(severity, text, source)
        data = {"id": message_id, "severity": severity, "text": text, "source": source}
        for link in list(self.message_watchers):
            self.spawn(
                self._send_quietly(
                    link, Event(id=link.next_id(), run_id=0, kind="message", data=data)
                )
            )
        return message_id

    def _notify(self, change: Change) -> None:
        """Queue a change for the run's watchers. Changes queued in one pass of the event loop
        (a roll-up batch, a stop) go out together: one ``instances`` event per watcher that
        follows every instance, one ``counts`` event per watcher that follows the totals."""
        if not self.watchers.get(change.run_id):
            return
        self._changes.setdefault(change.run_id, []).append(change)
        if self._changes_handle is None:
            self._changes_handle = asyncio.get_running_loop().call_soon(self._flush_changes)

    def _flush_changes(self) -> None:
        if self._changes_handle is not None:
            self._changes_handle.cancel()
            self._changes_handle = None
        pending, self._changes = self._changes, {}
        for run_id, changes in pending.items():
            subs = self.watchers.get(run_id)
            if not subs:
                continue
            detailed: list[tuple[str, dict[str, Any]]] = []
            summary: list[tuple[str, dict[str, Any]]] = []
            if any(subs.values()):
                items = [
                    {
                        "instance_id": c.instance_id,
                        "parent_id": c.parent_id,
                        "step": c.step,
                        "computer": c.computer,
                        "state": c.state,
                        "return_code": c.return_code,
                        "reason": c.reason,
                    }
                    for c in changes
                ]
                detailed = [
                    ("instances", {"items": items[i : i + WATCH_EVENT_ITEMS]})
                    for i in range(0, len(items), WATCH_EVENT_ITEMS)
                ]
            if not all(subs.values()):
                states = Counter(c.state for c in changes if c.parent_id is None)
                summary = [("counts", {"changes": len(changes), "states": dict(states)})]
            for link, detail in list(subs.items()):
                self.spawn(self._send_events(link, run_id, detailed if detail else summary))

    async def _send_events(
        self, link: Link, run_id: int, events: list[tuple[str, dict[str, Any]]]
    ) -> None:
        with contextlib.suppress(Exception):
            for kind, data in events:
                await link.send(Event(id=link.next_id(), run_id=run_id, kind=kind, data=data))

    async def _send_quietly(self, link: Link, message: Any) -> None:
        with contextlib.suppress(Exception):
            await link.send(message)
