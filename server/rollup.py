"""Roll-up: results and presence coming back from relays, applied in batches, counted against
their steps, and pushed to the admins who watch.

Results come back in ``reports`` batches, are applied in one transaction each
(``Store.apply_reports``), and count down their step's routes; a run whose last step reached
zero ends (``Runs.finish``). Watchers get the changes of one pass of the event loop together.

A batch the database cannot take for lack of space is not dropped and does not cost the relay
its link: ``on_reports`` keeps it and tries again with a bounded backoff until space returns, and
meanwhile reads nothing more from that relay (its results wait where they are kept: agents'
outboxes and the relay's own). One message and one log line say so, per episode.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from protocol.messages import Event, Report
from protocol.states import is_terminal
from runtime.link import Link
from server import liveout
from server.interface import CoreParts
from server.jobs import SERVER_JOB
from server.metrics import NSMetrics
from server.routes import RemoteRoute
from server.store import Change
from server.store.dbapi import storage_full

WATCH_EVENT_ITEMS = 1_000
"""Instance changes per `instances` event (a watcher gets one event per roll-up batch)."""
DISK_FULL_TEXT = (
    "disk full on the NS: results are held by the task servers until space returns"
    " (free space where the NS's database keeps its files: its data folder, or the PostgreSQL"
    " server's disk; nothing is lost, storing resumes by itself)"
)
DISK_RETRY_FIRST_S = 0.5
DISK_RETRY_MAX_S = 10.0
"""A batch the full disk refused is tried again after 0.5 s, 1 s, 2 s, ... at most 10 s apart."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the database) is full: the store's ``StorageFull``
    (SQLite's SQLITE_FULL, PostgreSQL's disk_full), SQLite's own error, or ENOSPC."""
    return storage_full(exc)


class Rollup(CoreParts):
    """Applying results and presence, telling watchers (a part of ``NotificationServer``)."""

    _changes: dict[int, list[Change]]
    """Changes queued for watchers in this pass of the event loop, by run."""
    _changes_handle: asyncio.Handle | None
    metrics: NSMetrics
    _disk_full_since: float | None = None
    """When the database last refused a batch for lack of space (None: it takes them)."""
    _disk_full_owed = False
    """The disk-full message could not be stored (the disk was full): store it once it can be."""

    async def on_presence(
        self, taskserver: str | None, online: list[str], offline: list[str], full: bool
    ) -> int:
        """A relay's word on which of its agents came and went. It speaks only for computers
        assigned to it: other names change nothing and are counted (one log line per batch);
        returns how many of ``online`` were such names."""
        refused = 0
        if full:
            await self.db.set_all_offline(taskserver, keep=online)
        if online:
            refused = await self.db.set_online(online, True, taskserver)
            if refused:
                self.refused["foreign_presence"] += refused
                self.log.warning(
                    "presence_refused",
                    taskserver=taskserver,
                    count=refused,
                    reason="computers not assigned to this task server",
                )
        if offline:
            await self.db.set_online(offline, False, taskserver)
        return refused

    async def on_reports(self, reports: list[Report], route: str | None = None) -> None:
        """Apply a batch of reports (one transaction), tell watchers, count steps, end runs."""
        if reports and reports[0].live is not None:
            # Live output, which relays send in batches of its own: to whoever watches it,
            # never stored (``server.liveout``). A piece in a batch of results is mere progress.
            liveout.forward(self, reports, route)
            return
        before = self.db.refused
        started = time.perf_counter()
        changes = await self._apply_patiently(reports, route)
        self.metrics.rolled_up(len(reports), time.perf_counter() - started, changes)
        if self.db.refused > before:
            self.refused["foreign_report"] += self.db.refused - before
            self.log.warning("reports_refused", route=route, count=self.db.refused - before)
        if self.db.held_back:  # an agent holds work back (its disk is full): coalesced per agent
            held, self.db.held_back = self.db.held_back, {}
            for computer, reason in held.items():
                await self.raise_message("warning", f"agent {computer}: {reason}", "agent")
        liveout.note(self, changes)
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

    async def _apply_patiently(self, reports: list[Report], route: str | None) -> list[Change]:
        """``Store.apply_reports``, tried again while the disk is full (see the module).

        Raises ConnectionError if the relay's link closes meanwhile (it keeps the batch)."""
        delay = DISK_RETRY_FIRST_S
        while True:
            refused = self.db.refused
            try:
                changes = await self.db.apply_reports(reports, route)
            except Exception as exc:
                if not disk_full(exc):
                    raise
                self.db.refused = refused  # the try again counts its refusals again
                with contextlib.suppress(Exception):
                    await self.db.db.rollback()
                relay = self.routes.get(route) if route is not None else None
                if isinstance(relay, RemoteRoute) and not relay.link.is_open:
                    raise ConnectionError(
                        f"task server {route} left while the disk was full; it keeps its results"
                    ) from None
                await self._disk_is_full(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DISK_RETRY_MAX_S)
                continue
            if self._disk_full_since is not None:
                await self._disk_has_room()
            return changes

    async def _disk_is_full(self, exc: BaseException) -> None:
        if self._disk_full_since is not None:
            return  # said once per episode
        self._disk_full_since = time.monotonic()
        self.log.error("disk_full", data=self.data_dir, error=str(exc), action=DISK_FULL_TEXT)
        try:
            await self.raise_message("error", DISK_FULL_TEXT, "server")
        except Exception:
            with contextlib.suppress(Exception):
                await self.db.db.rollback()
            # Not stored (no room): the admins who watch hear it now, the list gets it later.
            self._disk_full_owed = True
            self._push_message(
                {"id": 0, "severity": "error", "text": DISK_FULL_TEXT, "source": "server"}
            )

    async def _disk_has_room(self) -> None:
        since, self._disk_full_since = self._disk_full_since, None
        held_s = round(time.monotonic() - (since or time.monotonic()), 1)
        self.log.warning("disk_space_back", held_s=held_s)
        if self._disk_full_owed:
            self._disk_full_owed = False
            with contextlib.suppress(Exception):
                await self.raise_message(
                    "error", f"{DISK_FULL_TEXT}; space returned after {held_s:g} s", "server"
                )

    async def raise_message(self, severity: str, text: str, source: str) -> int:
        """Keep a message and push it to the admins who watch messages."""
        message_id = await self.db.raise_message(severity, text, source)
        self._push_message({"id": message_id, "severity": severity, "text": text, "source": source})
        return message_id

    def _push_message(self, data: dict[str, Any]) -> None:
        """Push a message to the admins who watch messages."""
        for link in list(self.message_watchers):
            self.spawn(
                self._send_quietly(
                    link, Event(id=link.next_id(), run_id=0, kind="message", data=data)
                )
            )

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
