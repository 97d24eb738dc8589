"""The agent: registers with the NS, holds a live connection to its TS, runs what it is sent.

Durability: an accepted instance is remembered (``seen``) so a re-sent ``execute`` never runs
twice; a result is written to the outbox before it is sent and removed only when the relay
acknowledges it, so results survive lost connections and agent restarts. An instance that
was running when the agent died is reported ``failed`` ("agent restarted") on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import socket
import time
from dataclasses import dataclass
from typing import Any

import websockets

from agent import __version__, logs
from agent.link import Link, connect
from agent.runner import Outcome, ScriptRun, run_noop
from agent.store import AgentStore
from protocol.errors import ProtocolError, RemoteError
from protocol.messages import Cancel, Execute, Report, Reports, ReportsAck, Tickle
from protocol.session import ALLOWED_DOWN, Role, backoff_delays
from protocol.states import InstanceState, is_terminal


def _addresses() -> list[str]:
    found: list[str] = []
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addr = str(info[4][0])
            if addr not in found:
                found.append(addr)
    if "127.0.0.1" not in found:
        found.append("127.0.0.1")
    return found


@dataclass
class _Running:
    run: ScriptRun | None
    task: asyncio.Task[None]


class Agent:
    """One agent. ``await run()`` serves until cancelled."""

    def __init__(
        self,
        *,
        server_url: str,
        name: str,
        token: str,
        data_dir: str | None = None,
        concurrency: int = 4,
        compression: bool = False,
        lightweight: bool = False,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ):
        self.server_url = server_url
        self.name = name
        self.token = token
        self.data_dir = data_dir
        self.compression = compression
        self.lightweight = lightweight
        self.log = logs.get("agent", agent=name)
        self.store: AgentStore | None = None
        self.link: Link | None = None
        self.connected = asyncio.Event()
        self.taskserver: str | None = None
        self._sem = asyncio.Semaphore(concurrency)
        self._running: dict[int, _Running] = {}
        self._inflight: dict[str, list[int]] = {}
        self._delay = backoff_delays(initial_s=backoff_initial_s, maximum_s=backoff_max_s)
        self._tickled = asyncio.Event()

    def info(self) -> dict[str, Any]:
        if self.lightweight:
            return {"os": "simulated", "agent_version": __version__, "addresses": []}
        return {
            "os": f"{platform.system()} {platform.release()}",
            "agent_version": __version__,
            "addresses": _addresses(),
            "hostname": socket.gethostname(),
        }

    async def run(self) -> None:
        """Register, connect, serve; reconnect with backoff and jitter, forever."""
        self.store = await AgentStore.open(self.data_dir)
        try:
            await self._recover()
            attempt = 0
            while True:
                try:
                    live = await self._open_live()
                    attempt = 0
                    await self._serve(live)
                except asyncio.CancelledError:
                    raise
                except RemoteError as exc:
                    self.log.error("refused", code=exc.code, reason=exc.message)
                except (OSError, TimeoutError, websockets.WebSocketException, ProtocolError) as exc:
                    self.log.info("connection_lost", error=str(exc) or type(exc).__name__)
                self.connected.clear()
                await asyncio.sleep(self._delay(attempt))
                attempt += 1
        finally:
            for r in self._running.values():
                if r.run is not None:
                    r.run.stop()
                r.task.cancel()
            await self.store.close()

    async def _recover(self) -> None:
        assert self.store is not None
        for iid, state in list(self.store.seen.items()):
            if not is_terminal(state) and iid not in self.store.outbox:
                await self.store.finish(
                    Report(
                        instance_id=iid,
                        state=InstanceState.FAILED,
                        reason="agent restarted while the task ran",
                        ended_at=time.time(),
                    )
                )

    async def _open_live(self) -> Link:
        """Register with the NS; return the live link (to the TS, or the NS itself)."""
        assert self.store is not None
        try:
            link, welcome = await connect(
                self.server_url,
                role=Role.AGENT,
                identity=self.name,
                token=self.token,
                info=self.info(),
                compression=self.compression,
            )
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            ts = self.store.config.get("taskserver")
            if not ts:
                raise
            self.log.info("ns_unreachable_using_cached_ts", error=str(exc) or type(exc).__name__)
        else:
            await self.store.save_config(welcome.config)
            ts = welcome.config.get("taskserver")
            if not ts:
                self.taskserver = None
                return link
            await link.close()
        self.taskserver = str(ts["name"])
        link, _ = await connect(
            str(ts["url"]),
            role=Role.AGENT,
            identity=self.name,
            token=self.token,
            compression=self.compression,
        )
        return link

    async def _serve(self, link: Link) -> None:
        assert self.store is not None
        self.link = link
        self.connected.set()
        self.log.info("connected", via=self.taskserver or "built-in task service")
        allowed = ALLOWED_DOWN[Role.AGENT]
        try:
            if self.store.outbox:
                await self._send(list(self.store.outbox.values()))
            while True:
                message = await link.recv()
                if message.TYPE not in allowed:
                    self.log.warning("unexpected_message", type=message.TYPE)
                    continue
                if isinstance(message, Execute):
                    await self._on_execute(message)
                elif isinstance(message, Cancel):
                    for iid in message.instance_ids:
                        running = self._running.get(iid)
                        if running is not None and running.run is not None:
                            running.run.stop()
                        elif running is not None:
                            running.task.cancel()
                elif isinstance(message, ReportsAck):
                    done = self._inflight.pop(message.reply_to, [])
                    await self.store.delivered(done)
                elif isinstance(message, Tickle):
                    self.log.info("tickled")
                    return  # re-register now: fresh configuration and pending work
        finally:
            self.link = None
            self._inflight.clear()
            await link.close()

    async def _send(self, reports: list[Report]) -> None:
        link = self.link
        if link is None:
            return
        message = Reports(id=link.next_id(), items=reports)
        self._inflight[message.id] = [r.instance_id for r in reports if is_terminal(r.state)]
        with contextlib.suppress(websockets.ConnectionClosed):
            await link.send(message)

    async def _on_execute(self, message: Execute) -> None:
        assert self.store is not None
        iid = message.instance_id
        state = self.store.seen.get(iid)
        if state is not None:
            report = self.store.outbox.get(iid)
            if report is not None:
                await self._send([report])
            return
        await self.store.mark(iid, InstanceState.RECEIVED)
        await self._send([Report(instance_id=iid, state=InstanceState.RECEIVED)])
        task = asyncio.create_task(self._execute(message))
        self._running[iid] = _Running(None, task)

    async def _execute(self, message: Execute) -> None:
        assert self.store is not None
        iid = message.instance_id
        params = message.task.get("params", {})
        outcome: Outcome
        try:
            async with self._sem:
                started = time.time()
                if message.task.get("type") == "noop":
                    await self._send(
                        [Report(instance_id=iid, state=InstanceState.RUNNING, started_at=started)]
                    )
                    outcome = await run_noop(params, message.timeout_s)
                elif message.task.get("type") == "run-script":
                    await self.store.mark(iid, InstanceState.RUNNING)
                    await self._send(
                        [Report(instance_id=iid, state=InstanceState.RUNNING, started_at=started)]
                    )
                    run = ScriptRun(params, message.tokens, message.timeout_s)
                    self._running[iid].run = run
                    outcome = await run.run()
                else:
                    outcome = Outcome(
                        InstanceState.FAILED,
                        reason=f"this agent ({__version__}) cannot run task type {message.task.get('type')!r}",
                        started_at=started,
                        ended_at=time.time(),
                    )
        except asyncio.CancelledError:
            outcome = Outcome(
                InstanceState.STOPPED, reason="stopped by an administrator", ended_at=time.time()
            )
        finally:
            self._running.pop(iid, None)
        report = Report(
            instance_id=iid,
            state=outcome.state,
            return_code=outcome.return_code,
            output=outcome.output,
            reason=outcome.reason,
            started_at=outcome.started_at,
            ended_at=outcome.ended_at,
        )
        await self.store.finish(report)
        await self._send([report])
