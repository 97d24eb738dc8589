"""Dispatch: the NS sends pending instances to their routes in batches, moves work with agents
that change relay, and tickles agents.

For every route, ``dispatch_route`` sends the pending instances as ``dispatch`` batches (one per
run and step, up to ``DISPATCH_CHUNK`` computers) and marks them dispatched when the relay
acknowledges; a route that is not connected gets its batches when it connects.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from typing import Any

from protocol.messages import Dispatch, Target
from protocol.workauth import agent_work_key, task_digest, work_mac
from server.interface import CoreParts
from server.metrics import NSMetrics
from server.routes import BUILTIN, RemoteRoute
from server.stages import RouteCount
from server.store import Pending

DISPATCH_CHUNK = 1_000
DISPATCH_WINDOW = 4
"""Dispatches a TS may have unacknowledged at once: while it fans one out to its agents, the
next is already on its way (stop-and-wait cost one round trip and one NS write per 1,000)."""

_AGENT_KEYS: dict[tuple[bytes, str], bytes] = {}
"""Agents' work keys by (the NS's master work key, computer name): derived once, not once per
dispatch (an HMAC each; 10,000 computers would cost 10 ms per step)."""
_AGENT_KEYS_MAX = 200_000


def agent_key(master: bytes, computer: str) -> bytes:
    """The work key of ``computer``'s agent (``protocol.workauth.agent_work_key``), cached."""
    key = _AGENT_KEYS.get((master, computer))
    if key is None:
        if len(_AGENT_KEYS) >= _AGENT_KEYS_MAX:
            _AGENT_KEYS.clear()
        key = _AGENT_KEYS[(master, computer)] = agent_work_key(master, computer)
    return key


class Dispatcher(CoreParts):
    """Sending work to relays (a part of ``NotificationServer``)."""

    _route_locks: dict[str, asyncio.Lock]
    """One dispatcher at a time per route."""
    _ts_load: Counter[str] | None
    """Computers per TS, kept by ``assign`` once counted (``taskserver_load``)."""
    metrics: NSMetrics

    async def taskserver_load(self) -> Counter[str]:
        """Computers per TS, counted once from the database, then kept by ``assign``: a
        registration must not count the computers table (10,000 registrations would count it
        10,000 times). ``forget_taskserver_load`` makes the next call count again."""
        if self._ts_load is None:
            self._ts_load = Counter(await self.db.computers_per_taskserver())
        return self._ts_load

    def forget_taskserver_load(self) -> None:
        self._ts_load = None

    def _tokens(
        self, run_id: int, computer: str, computer_id: int | None, route: str, mac: str = ""
    ) -> dict[str, str]:
        return {
            "COMPUTERNAME": computer,
            "COMPUTERID": str(computer_id or ""),
            "TASKSERVER": self.name if route == BUILTIN else route,
            "RUNID": str(run_id),
            "MACADDRESS": mac,
        }

    async def dispatch_route(self, route: str) -> None:
        """Send every pending, undispatched instance of ``route`` in batches, if it is connected.

        Read a chunk, send it, read the next: the TS fans out the first thousand while the NS
        reads the rest (reading all ten thousand first held the first agent back ~0.05 s)."""
        async with self._route_locks[route]:
            handle = self.routes.get(route)
            if handle is None:
                return
            # A TS takes its dispatches in order, several in flight; the built-in service is
            # called in-process and takes one at a time.
            window = asyncio.Semaphore(DISPATCH_WINDOW if isinstance(handle, RemoteRoute) else 1)
            failed: list[BaseException] = []
            sending: set[asyncio.Task[None]] = set()
            tasks: dict[tuple[int, str], tuple[dict[str, Any], float] | None] = {}
            digests: dict[tuple[int, str], bytes] = {}
            master = self.work_master

            async def send(message: Dispatch, ids: list[int]) -> None:
                started = time.perf_counter()
                try:
                    await handle.dispatch(message)
                    self.metrics.dispatched(len(ids), time.perf_counter() - started)
                except Exception as exc:
                    failed.append(exc)
                    return
                finally:
                    window.release()
                await self.db.mark_dispatched(ids)

            after = 0
            while not failed:
                rows = await self.db.undispatched(route, after, DISPATCH_CHUNK)
                if not rows:
                    break
                after = rows[-1].id
                groups: dict[tuple[int, str], list[Pending]] = defaultdict(list)
                for r in rows:
                    groups[(r.run_id, r.step)].append(r)
                for (run_id, step), items in groups.items():
                    if (run_id, step) not in tasks:
                        tasks[(run_id, step)] = found = await self.db.step_task(run_id, step)
                        if found is not None:
                            digests[(run_id, step)] = task_digest(found[0])
                    found = tasks[(run_id, step)]
                    if found is None:
                        continue
                    task, deadline = found
                    digest = digests[(run_id, step)]
                    expires_in_s = deadline - time.time()
                    if expires_in_s <= 0:
                        continue
                    local_capable = task.get("type") == "client-job"
                    # Work a relay runs itself (task-server tasks, devices) reaches no agent.
                    for_agents = task.get("kind") != "taskserver"
                    await window.acquire()
                    if failed:
                        window.release()
                        break
                    link_id = (
                        handle.link.next_id()
                        if isinstance(handle, RemoteRoute)
                        else f"b{run_id}.{items[0].id}"
                    )
                    targets: list[Target] = []
                    for r in items:
                        tokens = self._tokens(run_id, r.computer, r.computer_id, route, r.mac)
                        local = local_capable and not r.has_agent
                        targets.append(
                            Target(
                                instance_id=r.wire,
                                computer=r.computer,
                                computer_id=r.computer_id or 0,
                                tokens=tokens,
                                local=local,
                                # Only that computer's agent can check it: a relay passes it on
                                # but cannot invent or alter work (protocol.workauth).
                                mac=work_mac(
                                    agent_key(master, r.computer),
                                    r.wire,
                                    r.computer,
                                    run_id,
                                    digest,
                                    tokens,
                                )
                                if for_agents and not local
                                else b"",
                            )
                        )
                    message = Dispatch(
                        id=link_id,
                        run_id=run_id,
                        task=task,
                        expires_in_s=expires_in_s,
                        targets=targets,
                    )
                    sender = asyncio.create_task(send(message, [r.id for r in items]))
                    sending.add(sender)
                    sender.add_done_callback(sending.discard)
                if len(rows) < DISPATCH_CHUNK:
                    break
            if sending:
                await asyncio.gather(*sending)
            if failed:
                # The rest stays undispatched and goes when the route is back (the relay drops
                # repeats by instance id).
                self.log.warning(
                    "dispatch_failed", route=route, error=str(failed[0]) or type(failed[0]).__name__
                )

    async def reroute(self, computer_id: int, old: str, new: str) -> None:
        """An agent moved from relay ``old`` to ``new``: its unfinished work goes with it.

        The old relay is told to forget it (now, or when it comes back); the counts of the steps
        waiting on it move to the new route, so their barriers still close.
        """
        rows = await self.db.reroute(computer_id, old, new)
        if not rows:
            return
        for r in rows:
            stage = self.active.get(r["run_id"])
            counts = stage.stages.get(r["step"]) if stage is not None else None
            if counts is not None and old in counts.routes and counts.routes[old].remaining > 0:
                rc = counts.routes.get(new)
                if rc is None or rc.done.is_set():
                    counts.routes[new] = RouteCount(1)
                else:
                    rc.remaining += 1
                counts.count(old)
        ids = [r["wire"] for r in rows]  # as the old relay knows them
        handle = self.routes.get(old)
        if handle is None:
            self.pending_cancels[old].extend(ids)
        else:
            self.spawn(handle.cancel(ids))
        self.log.info(
            "work_rerouted", computer_id=computer_id, old=old, new=new, instances=len(ids)
        )
        self.spawn(self.dispatch_route(new))

    async def tickle(self, computers: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """Tell these agents to check in now; return (reached, offline) names."""
        by_route: dict[str, list[str]] = defaultdict(list)
        offline: list[str] = []
        for c in computers:
            route = c["taskserver"] or BUILTIN
            if c["online"] and route in self.routes:
                by_route[route].append(c["name"])
            else:
                offline.append(c["name"])
        for route, names in by_route.items():
            await self.routes[route].tickle(names)
        return [n for names in by_route.values() for n in names], offline
