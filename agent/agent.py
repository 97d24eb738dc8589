"""The agent: registers with the NS, holds a live connection to its TS, runs what it is sent.

Durability: an accepted instance is remembered (``seen``) so a re-sent ``execute`` never runs
twice; a result is written to the outbox before it is sent and removed only when the relay
acknowledges it, so results survive lost connections and agent restarts. An instance that
was running when the agent died is reported ``failed`` ("agent restarted") on the next start.

Client jobs run as ``protocol.jobs.JobMachine`` state machines (``runtime.jobrunner.drive``).
The job's state is stored with each step's result, so a restarted agent resumes the job at
the step it was in: that step is reported ``failed`` ("agent restarted"), then the job's
conditions decide. Task-server steps are run by the agent's relay (``step_request``).

Taking work (its authentication, storing it as received, holding back what a full disk cannot
take) and running it, client jobs included, is the mixin ``agent.work.Work``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import CloseCode

from agent import __version__
from agent.commands import CommandTable
from agent.hold import hold_clock
from agent.store import AgentStore, Key
from agent.work import Work, _Running
from protocol.errors import ProtocolError, RemoteError
from protocol.identity import NONCE_BYTES, proof_payload, verify
from protocol.messages import (
    Cancel,
    Challenge,
    Execute,
    Report,
    Reports,
    ReportsAck,
    StepResult,
    Tickle,
)
from protocol.policies import next_due
from protocol.session import ALLOWED_DOWN, Role, backoff_delays
from protocol.states import InstanceState, is_terminal
from runtime import logs
from runtime.keys import load_or_create
from runtime.link import Link, connect, refused_for_good
from runtime.runner import Outcome
from runtime.servers import ServerList
from runtime.tls import ClientTrust


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


def _superseding(old: Report | None, new: Report) -> Report:
    """``new`` in place of the held ``old`` of the same instance or step, keeping its start."""
    if old is not None and new.started_at is None:
        return dataclasses.replace(new, started_at=old.started_at)
    return new


_WHAT_TO_DO = {
    "rejected": "an admin may `taskfleet keys delete NAME` to let it enrol again",
    "untrusted_server": "give the fingerprint `taskfleet server` printed at its start"
    " (--server-fingerprint) or its CA file (--ca)",
}


class RefusedForGood(Exception):
    """The NS refused this agent, or the agent the NS, for a reason no retry will change
    (``runtime.link.refused_for_good``): ``run`` ends with it instead of retrying forever. The
    message says what a person must do (the ``taskfleet agent`` process exits 5)."""

    def __init__(self, name: str, url: str, exc: BaseException, *, role: str = "agent"):
        code = exc.code if isinstance(exc, RemoteError) else "untrusted_server"
        reason = exc.message if isinstance(exc, RemoteError) else str(exc)
        todo = _WHAT_TO_DO.get(code, "").replace("NAME", name)
        super().__init__(
            f"{role} {name!r} cannot work with the NS at {url}: {reason}"
            + (f"; {todo}" if todo else "")
            + f". Retrying cannot help: the {role} stops; start it again once that is done"
        )
        self.code = code


class Agent(Work):
    """One agent. ``await run()`` serves until cancelled, or until the NS refuses it for good
    (:class:`RefusedForGood`)."""

    SEND_CHUNK_BYTES = 256 * 1024
    TICKET_RENEW_SHARE = 0.5
    """A ticket is renewed (the agent registers with the NS) once this share of the life it had
    when it came has passed; until then a reconnect goes straight to the TS (``_direct_ts``)."""
    NOBODY_LISTENS_S = 4.0
    """The longest wait before trying again where nothing listened (``_while_nobody_listens``)."""
    DIRECT_TRIES = 3
    """Failed attempts straight at a TS that is there but busy (its handshake gate turned the
    agent away, or the handshake timed out) before the agent registers with the NS instead."""
    PROGRESS_HOLD_S = 0.05
    """How long a progress report waits for a later state of its instance (see ``_progress``)."""
    POLICY_RECHECK_S = 60.0
    """The longest the policy loop sleeps (a wall-clock change is noticed within this)."""

    def __init__(
        self,
        *,
        server_url: str,
        name: str,
        trust: ClientTrust,
        enrol_token: str = "",
        data_dir: str | None = None,
        concurrency: int = 4,
        compression: bool = False,
        lightweight: bool = False,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        commands: CommandTable | None = None,
        simulate: dict[str, float] | None = None,
        allow_power: bool = False,
    ):
        self.server_url = server_url
        self.servers = ServerList(server_url)
        """The NS's addresses (two for an active/standby pair): registration follows the active."""
        self.name = name
        self.trust = trust
        self.enrol_token = enrol_token
        self.key = (
            load_or_create(os.path.join(data_dir, "agent.key"))
            if data_dir
            else Ed25519PrivateKey.generate()
        )
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
        self._stopping: set[int] = set()
        """Instances told to stop whose script is ending (``_stop``)."""
        self._inflight: dict[str, list[Key]] = {}
        self._step_waiters: dict[str, asyncio.Future[Report]] = {}
        self._delay = backoff_delays(initial_s=backoff_initial_s, maximum_s=backoff_max_s)
        self._nobody_attempts = max(
            0, math.ceil(math.log2(self.NOBODY_LISTENS_S / max(backoff_initial_s, 0.001)))
        )
        """The backoff's step whose longest wait is ``NOBODY_LISTENS_S``: it grows no further
        while nothing listens."""
        self._register_by: float | None = None
        """When the NS kept this agent for a TS that is away: register again by then (monotonic;
        the grace's end plus a jitter, ``welcome``'s ``taskserver.retry_in_s``), to be moved."""
        self._direct_misses = 0
        """Attempts straight at the TS that failed in a row, though something listened there."""
        self._via_ns = True
        """The next connection registers with the NS instead of going straight to the TS with
        the ticket it holds (``_direct_ts``): at the start of the process (the NS learns this
        agent's version and addresses), after a tickle (fresh configuration), after the TS
        refused the ticket or the TS's proof."""
        self.commands = commands or CommandTable()
        self.allow_power = allow_power
        """``--allow-power``: power-control may restart, shut down or log off this machine with
        the platform's own commands (``agent.tasktypes.power_control``)."""
        self.simulate = simulate
        """For `taskfleet simulate`: every task is a no-op that takes ``delay_ms`` and fails at
        ``fail_rate`` (the draws are seeded by the agent's name, so a fleet fails alike each time)."""
        self._rng = random.Random(name)
        self._after: dict[int, list[Callable[[], Awaitable[None]]]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.policy_results: dict[str, Outcome] = {}
        self._policy_last: dict[str, float] = {}
        self._policy_busy: set[str] = set()
        self._policy_wake = asyncio.Event()
        self._policy_runs = 0
        self._recent: OrderedDict[int, Report] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        self._held: dict[Key, Report] = {}
        self._unstored: dict[int, tuple[Execute, float]] = {}
        """Work that could not be stored when it came (a full disk), with its deadline: not seen,
        not run, tried again by ``_store_held_back`` (and whenever the relay sends it again)."""
        self._storing: set[int] = set()
        self._store_retry: asyncio.Task[None] | None = None
        self.work_key: bytes | None = None
        """The key the NS gave this agent to check its work (``protocol.workauth``)."""
        self.refused_executes = 0
        self.shutting_down = False
        """The agent stops (SIGTERM): its links close with 1001, and work it was running stores
        no result now; ``_recover`` reports it ``failed`` at the next start."""

    def info(self) -> dict[str, Any]:
        if self.lightweight:
            return {"os": "simulated", "agent_version": __version__, "addresses": []}
        return {
            "os": f"{platform.system()} {platform.release()}",
            "agent_version": __version__,
            "addresses": _addresses(),
            "hostname": socket.gethostname(),
        }

    # -- life cycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Register, connect, serve; reconnect with backoff and jitter until cancelled. A refusal
        no retry changes (a used-up token, a rejected key, a wrong pin) ends it: RefusedForGood."""
        logs.bind_role("agent", self.name)
        self.store = await AgentStore.open(self.data_dir)
        if self.trust.insecure:
            self.log.warning(
                "insecure", reason="--insecure: plain ws:// is allowed; use only for tests"
            )
        self._set_policies(self.store.config)
        self._set_work_key(self.store.config)
        self.keep(asyncio.create_task(self._policy_loop(), name="agent-policies"))
        try:
            await self._recover()
            attempt = 0
            while True:
                nobody = False
                try:
                    live = await self._open_live()
                    attempt, self._register_by = 0, None
                    await self._serve(live)
                except (asyncio.CancelledError, RefusedForGood):
                    raise
                except RemoteError as exc:
                    self.log.error("refused", code=exc.code, reason=exc.message)
                except (OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
                    self.log.info("connection_lost", error=str(exc) or type(exc).__name__)
                    nobody = isinstance(exc, ConnectionRefusedError)
                except Exception:
                    self.log.exception("agent_loop_error")
                self.connected.clear()
                delay, attempt = self._next_try(attempt)
                if nobody:
                    delay, attempt = self._while_nobody_listens(delay, attempt)
                await asyncio.sleep(delay)
        finally:
            self.shutting_down = True
            for r in self._running.values():
                r.task.cancel()
                if r.run is not None:
                    r.run.stop()
            for r in list(self._running.values()):
                with contextlib.suppress(BaseException):
                    await r.task
            for t in list(self._background):
                t.cancel()
            for t in list(self._background):
                with contextlib.suppress(BaseException):
                    await t
            await self.store.close()

    def _next_try(self, attempt: int) -> tuple[float, int]:
        """How long to wait before registering again, and the count of failures after it: the
        backoff, cut short when the NS named the end of this agent's TS's grace (then the NS
        moves it, and the backoff starts over: its failures so far were the old TS's)."""
        delay = self._delay(attempt)
        if self._register_by is not None:
            left = self._register_by - time.monotonic()
            if left <= delay:
                self._register_by = None
                return max(0.0, left), 0
        return delay, attempt + 1

    def _while_nobody_listens(self, delay: float, attempt: int) -> tuple[float, int]:
        """The wait after "connection refused" (nothing listens there: a server restarting):
        at most ``NOBODY_LISTENS_S`` (a random half of it and more), and the backoff does not
        grow past that. Asking a host where nothing listens costs it a TCP reset, not work, so
        once the server is up its agents are back within seconds, not after the 8-30 s a
        backoff grown through its restart would add. A server that is up but turns agents away
        (its gate) still gets the growing backoff."""
        cap = self.NOBODY_LISTENS_S * (0.5 + 0.5 * self._rng.random())
        return min(delay, cap), min(attempt, self._nobody_attempts)

    async def _recover(self) -> None:
        """After a restart: finish what died with the last process, resume client jobs."""
        assert self.store is not None
        for iid, state in list(self.store.seen.items()):
            if is_terminal(state) or (iid, "") in self.store.outbox or iid in self.store.jobs:
                continue
            await self.store.finish(
                Report(
                    instance_id=iid,
                    state=InstanceState.FAILED,
                    reason="agent restarted while the task ran",
                    ended_at=time.time(),
                )
            )
        for job in list(self.store.jobs.values()):
            message = Execute(
                **{**job["execute"], "timeout_s": max(0.0, job["deadline"] - time.time())}
            )
            self._start(message, job["snapshot"], restarted=True)

    def _direct_ts(self) -> dict[str, Any] | None:
        """The TS to reconnect to without the NS, or None to register with the NS first.

        A known agent whose ticket is young (less than ``TICKET_RENEW_SHARE`` of its life gone)
        goes straight back to the TS the NS last named: the TS checks the ticket and proves the
        key the NS vouched for, exactly as after a registration, so the NS's connection and its
        writes are spared. It registers instead at the start of the process, after a tickle,
        after the TS refused it, when the ticket is old, and when the NS asked it to register
        again by now (``retry_in_s``: its TS was away and it may be moved)."""
        assert self.store is not None
        if self._via_ns:
            return None
        if self._register_by is not None and time.monotonic() >= self._register_by:
            return None
        config = self.store.config
        ts = config.get("taskserver")
        renew_at = config.get("ticket_renew_at")
        if (
            not isinstance(ts, dict)
            or not config.get("ticket")
            or not config.get("ticket_signature")
        ):
            return None
        if not isinstance(renew_at, (int, float)) or time.time() >= renew_at:
            return None
        return ts

    async def _open_live(self) -> Link:
        """Return the live link (to the TS, or the NS itself): straight to the TS while the
        ticket allows (``_direct_ts``), else (or when that fails) registering with the NS."""
        assert self.store is not None
        direct = self._direct_ts()
        if direct is not None:
            try:
                link = await self._connect_taskserver(direct, self.store.config)
            except RemoteError as exc:  # the TS refused the ticket, or failed its proof
                self._via_ns = True
                self.log.info("direct_refused", code=exc.code, reason=exc.message)
            except ConnectionRefusedError as exc:
                # Nothing listens there: the NS may move it (or keeps it, saying until when).
                self.log.info("direct_failed", error=str(exc))
            except (OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
                # Something listens but turned it away (a restarted TS's gate under a burst of
                # its agents) or did not answer in time: back off and come back to that TS a
                # few times; registering would only add the NS's work to the burst.
                self._direct_misses += 1
                if self._direct_misses < self.DIRECT_TRIES:
                    raise
                self.log.info("direct_failed", error=str(exc) or type(exc).__name__)
            else:
                self.taskserver = str(direct["name"])
                self._direct_misses = 0
                return link
        self._direct_misses = 0
        return await self._register(tried_ts=direct is not None)

    async def _register(self, *, tried_ts: bool) -> Link:
        """Register with the NS; return the live link (to the TS, or the NS itself). When the NS
        cannot be reached, the last TS with the last ticket (unless ``tried_ts`` just failed)."""
        assert self.store is not None
        try:
            link, welcome = await self.servers.connect(
                connect,
                role=Role.AGENT,
                identity=self.name,
                credentials={"enrol_token": self.enrol_token} if self.enrol_token else {},
                key=self.key,
                trust=self.trust,
                info=self.info(),
                compression=self.compression,
            )
        except RemoteError as exc:
            if refused_for_good(exc):
                raise RefusedForGood(self.name, self.server_url, exc) from exc
            raise
        except (OSError, TimeoutError, WebSocketException) as exc:
            ts = self.store.config.get("taskserver")
            if not ts or tried_ts:
                if refused_for_good(exc):
                    raise RefusedForGood(self.name, self.server_url, exc) from exc
                raise
            self.log.info("ns_unreachable_using_cached_ts", error=str(exc) or type(exc).__name__)
        else:
            self._via_ns = False
            config = welcome.config
            if self.work_key is not None and not config.get("work_key"):
                # Once held, the key stays: from then on only authenticated work runs here.
                config = {**config, "work_key": self.work_key.hex()}
            ticket = config.get("ticket")
            expires = ticket.get("expires_at") if isinstance(ticket, dict) else None
            if isinstance(expires, (int, float)):
                # On this agent's clock: the ticket's life left as the NS counts it, times the
                # share; the skew between the clocks moves only where the life is counted from.
                now = time.time()
                renew = now + max(0.0, expires - now) * self.TICKET_RENEW_SHARE
                config = {**config, "ticket_renew_at": renew}
            await self.store.save_config(config)
            self._set_policies(config)
            self._set_work_key(config)
            ts = welcome.config.get("taskserver")
            retry = ts.get("retry_in_s") if isinstance(ts, dict) else None
            self._register_by = (
                time.monotonic() + float(retry) if isinstance(retry, (int, float)) else None
            )
            if not ts:
                self.taskserver = None
                return link
            await link.close()
        self.taskserver = str(ts["name"])
        return await self._connect_taskserver(ts, self.store.config)

    async def _connect_taskserver(self, ts: dict[str, Any], config: dict[str, Any]) -> Link:
        """Connect to the TS the NS named, trusting it only as the NS vouched: its TLS certificate
        fingerprint and its key, which it proves by signing our nonce."""
        nonce = os.urandom(NONCE_BYTES)
        ts_key = bytes.fromhex(str(ts.get("public_key", "")))
        name = str(ts["name"])

        def check(challenge: Challenge) -> str | None:
            payload = proof_payload(self.name, nonce, "taskserver", name, ts_key)
            if not verify(ts_key, challenge.signature, payload):
                return f"task server {name} could not prove the key the NS vouched for"
            return None

        trust = ClientTrust(
            fingerprint=str(ts.get("tls_fingerprint") or "") or None, insecure=self.trust.insecure
        )
        link, _ = await connect(
            str(ts["url"]),
            role=Role.AGENT,
            identity=self.name,
            credentials={
                "ticket": config.get("ticket", {}),
                "ticket_signature": bytes.fromhex(str(config.get("ticket_signature", ""))),
                "nonce": nonce,
            },
            key=self.key,
            trust=trust,
            check_server=check,
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
                    # The new work first (it waits on nothing the acks change), then the
                    # acknowledgements it carries: a step's work is not held up by a write.
                    if await self._authentic(message):
                        await self._on_execute(message)
                    if message.acks:
                        await self._acked(message.acks)
                elif isinstance(message, Cancel):
                    for iid in message.instance_ids:
                        self._stop(iid)
                elif isinstance(message, ReportsAck):
                    await self._acked([message.reply_to, *message.more])
                elif isinstance(message, StepResult):
                    waiter = self._step_waiters.pop(message.reply_to, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message.result)
                elif isinstance(message, Tickle):
                    self.log.info("tickled")
                    self._via_ns = True  # through the NS, not straight back to the TS
                    return  # re-register now: fresh configuration and pending work
        finally:
            self.link = None
            self._inflight.clear()
            for waiter in self._step_waiters.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the connection to the relay closed"))
            self._step_waiters.clear()
            going = self.shutting_down  # the whole agent stops, not just this link
            await link.close(CloseCode.GOING_AWAY if going else CloseCode.NORMAL_CLOSURE)

    def _progress(self, report: Report) -> None:
        """Queue a progress report (``received``, ``running``): it waits up to
        ``PROGRESS_HOLD_S`` and is replaced by a later state of the same instance or step.

        A task that ends at once thus costs one message up, not three, all the way to the NS;
        a long task still shows ``running`` a moment after it starts.
        """
        key = (report.instance_id, report.step)
        self._held[key] = _superseding(self._held.get(key), report)
        # One timer per event loop, not per agent (agent.hold).
        hold_clock(self.PROGRESS_HOLD_S).hold(self, self._flush_progress)

    def _flush_progress(self) -> None:
        if self._held:
            reports, self._held = list(self._held.values()), {}
            self.keep(asyncio.ensure_future(self._send(reports)))

    async def _send(self, reports: list[Report]) -> None:
        """Send reports now, with every held progress report, in messages that stay well under
        the frame limit. A held report that one of ``reports`` supersedes is dropped (its
        ``started_at`` carried over)."""
        if self._held:
            for i, r in enumerate(reports):
                reports[i] = _superseding(self._held.pop((r.instance_id, r.step), None), r)
            reports = [*self._held.values(), *reports]
            self._held = {}
            hold_clock(self.PROGRESS_HOLD_S).release(self)  # nothing left for it to send
        link = self.link
        if link is None:
            return
        chunk: list[Report] = []
        size = 0
        for r in reports:
            cost = 200 + len(r.output.encode()) + len(r.reason) + len(r.step)
            if chunk and size + cost > self.SEND_CHUNK_BYTES:
                await self._send_one(link, chunk)
                chunk, size = [], 0
            chunk.append(r)
            size += cost
        if chunk:
            await self._send_one(link, chunk)

    async def _send_one(self, link: Link, reports: list[Report]) -> None:
        message = Reports(id=link.next_id(), items=reports)
        results = [(r.instance_id, r.step) for r in reports if is_terminal(r.state)]
        if results:  # the relay acknowledges messages that carry results
            self._inflight[message.id] = results
        with contextlib.suppress(ConnectionClosed):
            await link.send(message)

    async def _acked(self, message_ids: list[str]) -> None:
        """The relay stored these ``reports`` messages: their results leave the outbox."""
        assert self.store is not None
        done = [key for mid in message_ids for key in self._inflight.pop(mid, [])]
        if done:
            await self.store.delivered(done)

    def _set_policies(self, config: dict[str, Any]) -> None:
        """Take the policies that came with the configuration (replacing the old set)."""
        self.policies = {p["name"]: p for p in config.get("policies") or [] if isinstance(p, dict)}
        self._policy_wake.set()

    async def _policy_loop(self) -> None:
        """Run each policy's task when its schedule says so (one run of a policy at a time).

        Sleeps until the next policy is due, a new set of policies arrives, or a policy's run
        ends; at most POLICY_RECHECK_S, so a change of the wall clock is noticed. An agent with no
        policies does not wake at all (10,000 agents in one simulate process would otherwise wake
        10,000 times a second)."""
        while True:
            self._policy_wake.clear()
            now = time.time()
            wait: float | None = None
            for name, policy in list(self.policies.items()):
                if name in self._policy_busy:
                    continue
                due = next_due(policy["schedule"], self._policy_last.get(name), now)
                if now >= due:
                    self._policy_last[name] = now
                    self._policy_busy.add(name)
                    self.keep(asyncio.create_task(self._run_policy(name, policy)))
                else:
                    wait = min(wait if wait is not None else self.POLICY_RECHECK_S, due - now)
            if wait is None and self.policies:
                wait = self.POLICY_RECHECK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._policy_wake.wait(), wait)

    async def _run_policy(self, name: str, policy: dict[str, Any]) -> None:
        task = policy["task"]
        tokens = {
            "COMPUTERNAME": self.name,
            "COMPUTERID": str(self.store.config.get("computer_id", "") if self.store else ""),
            "TASKSERVER": self.taskserver or "",
            "RUNID": f"policy:{name}",
            "MACADDRESS": "",
        }
        try:
            async with self._sem:
                outcome = await self._run_task(0, task, tokens, float(task.get("timeout_s", 300)))
            self.policy_results[name] = outcome
            self.log.info(
                "policy_ran", policy=name, state=str(outcome.state), reason=outcome.reason
            )
            await self._reported(0)
        finally:
            self._policy_busy.discard(name)
            self._policy_wake.set()

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a background task until it ends."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reconnect(self) -> None:
        """Drop the live connection: the run loop registers again and gets fresh configuration."""
        self._via_ns = True
        if self.link is not None:
            await self.link.close(1000, "re-registering")

    async def reset(self) -> int:
        """reset-task-agent: stop every other running task and forget queued work and job state."""
        assert self.store is not None
        current = asyncio.current_task()
        others = [r for r in self._running.values() if r.task is not current]
        for r in others:
            if r.run is not None:
                r.run.stop()
            r.task.cancel()
        await self.store.clear_jobs()
        return len(others)
