"""The NS's connections, one function per role: agents, task servers, admins (a child NS is
served by ``server.hierarchy.parent``).

Every connection is accepted by ``runtime.link.accept`` with ``server.auth.authenticate``: a
key proof for agents and task servers, a token for admins. Each role may then send only its
own messages (``protocol.session.Session``), at a bounded rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from protocol import PROTOCOL_VERSION
from protocol.errors import HandshakeError, ProtocolError
from protocol.messages import (
    Error,
    Hello,
    Presence,
    Reports,
    ReportsAck,
    Request,
    Response,
    Welcome,
)
from protocol.session import (
    CLOSE_BAD_MESSAGE,
    CLOSE_NORMAL,
    CLOSE_NOT_ALLOWED,
    CLOSE_RATE_LIMITED,
    CLOSE_REPLACED,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_UNAUTHORIZED,
    RateLimiter,
    Role,
    Session,
)
from protocol.workauth import agent_work_key
from runtime.link import Link, accept
from server import auth, policies
from server.hierarchy.parent import serve_child
from server.interface import NS
from server.routes import BUILTIN, RemoteRoute

ALL_ROLES = frozenset({Role.AGENT, Role.TASKSERVER, Role.ADMIN, Role.CHILD})
ADMIN_ONLY = frozenset({Role.ADMIN})
"""What the admin listener (``--admin-port``) takes: an agent or TS there is refused (4403)."""

FAILOVER_AFTER_GRACE_S = 0.2
FAILOVER_SPREAD_PER_COMPUTER_S = 0.001
FAILOVER_SPREAD_MAX_S = 10.0
"""The agents of a TS that went away register again between ``FAILOVER_AFTER_GRACE_S`` and that
plus a spread after its grace ends: 1 s per 1,000 computers of that TS, at least 1 s, at most
10 s. They then move together, over a window wide enough that the NS is not stormed."""
MOVED_WORK_WAIT_S = 5.0
"""The longest a moved agent's welcome waits for its unfinished work to reach its new relay."""


async def serve(ns: NS, ws: Any, roles: frozenset[Role] = ALL_ROLES) -> None:
    """One new connection to the NS, from accept to close (``roles``: who may say hello)."""
    address = str(ws.remote_address[0]) if ws.remote_address else "?"
    if not ns.connection_cap.take(address):
        ns.log.warning("too_many_connections", address=address, limit=ns.connection_cap.limit)
        await Link(ws, peer=address).refuse(
            HandshakeError(
                f"too many connections from {address} (limit {ns.connection_cap.limit})",
                code="too_many_connections",
                close_code=CLOSE_TOO_MANY_CONNECTIONS,
            )
        )
        return
    try:
        accepted = await accept(
            ws,
            roles=roles,
            authenticate=lambda link, hello: auth.authenticate(ns, link, hello),
            log=ns.log,
            deadline_s=ns.handshake_timeout_s,
        )
        if accepted is None:
            return
        link, hello, facts = accepted
        try:
            if hello.role == Role.AGENT:
                await serve_agent(ns, link, hello, facts)
            elif hello.role == Role.TASKSERVER:
                await serve_taskserver(ns, link, hello, facts)
            elif hello.role == Role.CHILD:
                await serve_child(ns, link, hello, facts)
            else:
                await serve_admin(ns, link, hello, facts)
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            ns.refused[exc.code] += 1
            ns.log.warning("peer_protocol_error", peer=link.peer, code=exc.code, reason=exc.message)
            await link.refuse(exc)
    finally:
        ns.connection_cap.give(address)


async def serve_agent(ns: NS, link: Link, hello: Hello, facts: dict[str, Any]) -> None:
    """Register the agent, tell it its TS (with a ticket), or serve it here."""
    row = await ns.db.register_agent(hello.identity, hello.info)
    ts = await assign(ns, row)
    config: dict[str, Any] = {
        "computer_id": row["id"],
        "taskserver": None,
        "policies": await policies.for_computer(ns, row["id"]),
        # Its key to check that work comes from this NS (protocol.workauth), given only here,
        # on the agent's own connection to the NS: a TS never sees it.
        "work_key": agent_work_key(ns.work_master, hello.identity).hex(),
    }
    if ts is not None:
        body, signature = auth.ticket(ns, hello.identity, facts["public_key"], ts["name"])
        config["taskserver"] = ts
        config["ticket"] = body
        config["ticket_signature"] = signature.hex()
    await link.send(
        Welcome(
            id=link.next_id(),
            reply_to=hello.id,
            version=PROTOCOL_VERSION,
            server=ns.name,
            config=config,
        )
    )
    link.handshake_done()
    if ts is None:
        assert ns.relay is not None
        await ns.relay.serve_agent(link, hello)
        return
    # The agent closes this connection and goes to its TS; do not wait on it for long.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(link.ws.wait_closed(), 30)
    await link.close(CLOSE_NORMAL, "use your task server")


async def assign(ns: NS, row: dict[str, Any]) -> dict[str, Any] | None:
    """Pick the agent's TS: keep its own while that TS is connected or went away less than
    ``ns.ts_grace_s`` ago (a restarting TS keeps its agents, and the work it holds for them); else
    the connected TS with the fewest computers; else none (the built-in service).

    An agent kept for a TS that is away is told to register again by the grace's end plus a
    jitter (``retry_in_s``, spread by that TS's count of computers), so it moves then, not when
    its backoff next wakes it. An agent that leaves a TS takes its unfinished work along, and its
    welcome waits (up to ``MOVED_WORK_WAIT_S``) until its new relay holds that work: the results
    it kept for it are then taken there, not refused as work that relay never gave.
    """
    retry_in_s: float | None = None
    async with ns.assign_lock:
        # Read in a transaction of our own, so after any write in progress: a TS's route is in
        # ``ns.routes`` while the transaction that stores its row may still be open, and on
        # PostgreSQL a read outside one would miss that row and send the agent to the built-in
        # service (on SQLite such a read waits for the writer anyway).
        async with ns.db.db.transaction():
            known = {t["name"]: t for t in await ns.db.taskserver_rows()}
            load = await ns.taskserver_load()
        servers = {name: t for name, t in known.items() if name in ns.routes}
        current = row["taskserver"]
        left = 0.0
        if current in known:
            # Its row's last_seen is when the NS saw it go; a TS not back since this NS started
            # went at some time the NS cannot know, so its grace counts from the start.
            away_since = max(known[current]["last_seen"] or 0.0, ns.started_at)
            left = ns.ts_grace_s - (time.time() - away_since)
        if current in servers or (current in known and left > 0):
            chosen: str | None = current
            if current not in servers:
                spread = min(
                    FAILOVER_SPREAD_MAX_S, max(1.0, load[current] * FAILOVER_SPREAD_PER_COMPUTER_S)
                )
                retry_in_s = left + FAILOVER_AFTER_GRACE_S + random.uniform(0.0, spread)
            servers = known
        elif servers:
            chosen = min(servers, key=lambda name: (load[name], name))
        else:
            chosen = None
        moved = chosen != current
        if moved:
            await ns.db.set_taskserver(row["id"], chosen)
            if current is not None:
                load[current] -= 1
            if chosen is not None:
                load[chosen] += 1
            if current is not None or not _made_now(row):
                # Its unfinished work follows it to its new relay (a computer this very
                # registration made has none: no statement, no commit for it).
                await ns.reroute(row["id"], current or BUILTIN, chosen or BUILTIN)
    if moved and current is not None:
        # Outside the lock: other registrations go on meanwhile. The dispatch ``reroute``
        # started holds the route's lock first, so this returns once that one is done.
        sent = ns.spawn(ns.dispatch_route(chosen or BUILTIN))
        with contextlib.suppress(Exception):  # a failure is logged by spawn; the agent goes on
            await asyncio.wait_for(asyncio.shield(sent), MOVED_WORK_WAIT_S)
    if chosen is None:
        return None
    t = servers[chosen]
    ts: dict[str, Any] = {
        "name": chosen,
        "url": t["url"],
        "public_key": bytes(t["public_key"] or b"").hex(),
        "tls_fingerprint": t["tls_fingerprint"],
    }
    if retry_in_s is not None:
        ts["retry_in_s"] = round(retry_in_s, 3)
    return ts


def _made_now(row: dict[str, Any]) -> bool:
    """Whether the agent's registration just made its computer's row (``register_agent`` sets
    ``created_at`` and ``last_seen`` to the same time only when it inserts the row)."""
    return row["created_at"] is not None and row["created_at"] == row["last_seen"]


async def after_presence(
    ns: NS, taskserver: str | None, online: list[str], missed: set[str], *, foreign: bool
) -> None:
    """Tickle, through the relay that reported them, the agents it says came online that must
    register with the NS: those a tickle missed while they were away (``missed``: they may have
    come straight back to their TS with the ticket they hold, so no registration gave them their
    new configuration), and, when the relay spoke for computers not assigned to it
    (``foreign``), those: the NS moved them meanwhile (to another TS, or to the built-in service),
    and registering sends them there. Either way each ends up served where the NS says."""
    route = ns.routes.get(taskserver or BUILTIN)
    if route is None or not online:
        return
    back = [n for n in online if n in missed]
    missed.difference_update(back)
    # The built-in service's agents came through a registration just now: nothing was missed.
    names = back if taskserver is not None else []
    if foreign:
        rows = {r["name"]: r for r in await ns.db.computers(online)}
        elsewhere = [n for n in online if n not in rows or rows[n]["taskserver"] != taskserver]
        ns.log.info("presence_elsewhere_tickled", taskserver=taskserver, count=len(elsewhere))
        names = sorted({*names, *elsewhere})
    if names:
        await route.tickle(names)


async def serve_taskserver(ns: NS, link: Link, hello: Hello, facts: dict[str, Any]) -> None:
    """A TS: take its roll-ups and presence, send it dispatches (through ``RemoteRoute``)."""

    name = hello.identity
    url = hello.info.get("url")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise HandshakeError(
            "a task server's hello must carry info.url (ws:// or wss://)",
            code="bad_hello",
            close_code=CLOSE_BAD_MESSAGE,
        )
    if name == BUILTIN:
        raise HandshakeError(
            f"the name {BUILTIN!r} is reserved", code="bad_identity", close_code=CLOSE_NOT_ALLOWED
        )
    tls_fp = hello.info.get("tls_fingerprint", "")
    old = ns.routes.get(name)
    if isinstance(old, RemoteRoute):
        await old.link.close(
            CLOSE_REPLACED, "replaced by a newer connection from the same task server"
        )
    await ns.db.upsert_taskserver(
        name, url, True, facts["public_key"], tls_fp if isinstance(tls_fp, str) else ""
    )
    await link.send(
        Welcome(
            id=link.next_id(),
            reply_to=hello.id,
            version=PROTOCOL_VERSION,
            server=ns.name,
            config={"server_public_key": ns.public_key.hex()},
        )
    )
    link.handshake_done()
    route = RemoteRoute(link)
    ns.routes[name] = route
    ns.log.info("taskserver_connected", taskserver=name, url=url)
    session = Session(Role.TASKSERVER)
    try:
        cancels, ns.pending_cancels[name] = ns.pending_cancels[name], []
        if cancels:
            ns.spawn(route.cancel(cancels))
        ns.spawn(ns.dispatch_route(name))
        ns.spawn(auth.tell_revoked(ns, link))  # tickets voided while it was away
        while True:
            message = await link.recv()
            session.check(message)
            if link.resolve(message):
                continue
            if isinstance(message, Reports):
                # While the disk is full this waits (reading nothing more from the TS, which
                # keeps its results) until the batch is stored (``Rollup.on_reports``).
                try:
                    await ns.on_reports(message.items, route=name)
                except ConnectionError:
                    if link.is_open:
                        raise
                    return  # the TS left while its batch waited for space: it keeps the batch
                await link.send(ReportsAck(id=link.next_id(), reply_to=message.id))
            elif isinstance(message, Presence):
                await ns.on_presence(name, message.online, message.offline, message.full)
    finally:
        if ns.routes.get(name) is route:
            del ns.routes[name]
            await ns.db.upsert_taskserver(name, url, False)
            await ns.db.set_all_offline(name)
            ns.log.info("taskserver_disconnected", taskserver=name)
        link.fail_waiters(ConnectionError(f"task server {name} disconnected"))


async def serve_admin(ns: NS, link: Link, hello: Hello, facts: dict[str, Any]) -> None:
    """An admin: requests answered in order, each checked against the admin's role and audited."""
    from server.admin_api import ApiError, handle

    who, role = str(facts["admin"]), str(facts["role"])
    link.peer = f"admin:{who}({role})@{link.peer.rsplit('@', 1)[-1]}"
    if not ns.admin_sessions.open(who, link, int(facts["mark"])):
        raise HandshakeError(
            f"the admin token of {who} was revoked or replaced just now; ask an admin for a token",
            code="unauthorized",
            close_code=CLOSE_UNAUTHORIZED,
        )
    session = Session(Role.ADMIN)
    limiter = RateLimiter(ns.admin_rate_per_s, ns.admin_rate_per_s * 4)
    try:
        await link.send(
            Welcome(
                id=link.next_id(),
                reply_to=hello.id,
                version=PROTOCOL_VERSION,
                server=ns.name,
                # The op -> least role table, so a client (the web console) offers only what
                # this admin may do; ops not in it need "admin". The NS checks every op anyway.
                config={"admin": who, "role": role, "op_roles": dict(auth.OP_ROLE)},
            )
        )
        link.handshake_done()
        while True:
            message = await link.recv()
            if not ns.admin_sessions.is_open(who, link):
                # Revoked or replaced meanwhile (perhaps by this very request's answer).
                await link.close(
                    CLOSE_UNAUTHORIZED, f"the admin token of {who} was revoked or replaced"
                )
                return
            session.check(message)
            if not limiter.allow(time.monotonic()):
                raise ProtocolError(
                    "too many requests per second",
                    code="rate_limited",
                    close_code=CLOSE_RATE_LIMITED,
                )
            assert isinstance(message, Request)
            read_only = auth.required_role(message.op) == "viewer"
            if not auth.allowed(role, message.op):
                need = auth.required_role(message.op)
                await _audit(
                    ns, who, message.op, _summary(message.args), f"refused: needs role {need}"
                )
                await link.send(
                    Error(
                        id=link.next_id(),
                        reply_to=message.id,
                        code="forbidden",
                        message=f"{message.op!r} needs the role {need}; you ({who}) are {role}",
                    )
                )
                continue
            try:
                data = await handle(ns, link, message.op, message.args, who)
            except ApiError as exc:
                if not read_only:
                    await _audit(ns, who, message.op, _summary(message.args), f"error: {exc.code}")
                await link.send(
                    Error(id=link.next_id(), reply_to=message.id, code=exc.code, message=str(exc))
                )
                continue
            except Exception:
                # A bug must not cost the admin the connection: answer, log, go on.
                ns.log.exception("admin_request_failed", op=message.op, peer=link.peer)
                await link.send(
                    Error(
                        id=link.next_id(),
                        reply_to=message.id,
                        code="internal_error",
                        message=f"the server failed on {message.op!r}; its log has the details",
                    )
                )
                continue
            if not read_only:
                await _audit(ns, who, message.op, _summary(message.args, data), "ok")
            await link.send(Response(id=link.next_id(), reply_to=message.id, data=data))
            if not ns.admin_sessions.is_open(who, link):
                await link.close(
                    CLOSE_UNAUTHORIZED, f"the admin token of {who} was revoked or replaced"
                )
                return
    finally:
        ns.admin_sessions.close(who, link)
        for subs in ns.watchers.values():
            subs.pop(link, None)
        ns.message_watchers.discard(link)


async def _audit(ns: NS, who: str, action: str, detail: str, outcome: str) -> None:
    """Write the audit row; when the database cannot take it (a full disk), log it instead."""
    try:
        await ns.db.audit(who, action, detail, outcome)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await ns.db.db.rollback()
        ns.log.error(
            "audit_write_failed",
            who=who,
            action=action,
            detail=detail,
            outcome=outcome,
            error=str(exc),
        )


def _summary(args: dict[str, Any], saved: Any = None) -> str:
    """What an admin asked for, for the audit trail (documents and secrets left out). For a
    document saved (a task, job, schedule, policy...), what it was saved as: its ``name`` and,
    for a schedule, what it runs, so the trail says which item changed whatever the file was
    called."""
    shown = {k: v for k, v in args.items() if k not in ("text", "document", "token")}
    if ("text" in args or "document" in args) and isinstance(saved, dict):
        shown.update({k: saved[k] for k in ("name", "run") if isinstance(saved.get(k), str)})
    text = ", ".join(f"{k}={v!r}" for k, v in sorted(shown.items()))
    return text[:500]
