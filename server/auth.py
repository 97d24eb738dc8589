"""Who may connect to the NS and what they may do: key enrolment, admin tokens, roles, tickets.

Agents and task servers prove their Ed25519 key (``runtime.link.challenge``). A new key waits as
``pending`` until an admin accepts it, or is accepted at once with a valid enrolment token.
An enrolment token is made for one role (``agent``, ``taskserver`` or ``child``, a child NS)
and enrols only that role; every TS enrolled (by token or by ``keys accept``) is raised as a message. A name that comes
back with another key than the accepted one is refused and raised as a message (coalesced per
name and per address: ``server.guards.Alerts``): no silent takeover. Admins present a token; its
role bounds their operations, and revoking or replacing it ends their open sessions at once.
Rejecting or deleting a key closes that peer's connection, and the TS are told to refuse the
agent's tickets (``revoke``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any

from protocol.errors import HandshakeError
from protocol.identity import fingerprint, hash_token, sign, ticket_payload
from protocol.messages import Hello, Revoke
from protocol.session import (
    CLOSE_PENDING,
    CLOSE_TOO_MANY_PENDING,
    CLOSE_UNAUTHORIZED,
    NAME,
    Role,
)
from runtime.keys import write_private
from runtime.link import Link, challenge
from server.interface import NS
from server.routes import RemoteRoute

ADMIN_ROLES = ("viewer", "operator", "admin")
RANK = {role: n for n, role in enumerate(ADMIN_ROLES)}
TICKET_TTL_S = 24 * 3600
MAX_PENDING_KEYS = 1_000
ENROL_ROLES = ("agent", "taskserver", "child")
"""What an enrolment token may be made for (``tokens create --for``)."""
ADMIN_NAME_MAX = 64
ADMIN_NAME_RULE = (
    "an admin name follows the rule for computer names: 1 to 64 characters, letters, digits,"
    " '.', '_' and '-', starting with a letter or digit"
)
REVOKE_BATCH = 1_000
"""Agents per ``revoke`` message sent to a TS."""

# The least role each admin operation needs. Anything not listed needs "admin".
OP_ROLE: dict[str, str] = {
    "computers.list": "viewer",
    "taskservers.list": "viewer",
    "tasks.list": "viewer",
    "jobs.list": "viewer",
    "task.show": "viewer",
    "job.show": "viewer",
    "task.history": "viewer",
    "job.history": "viewer",
    "types.list": "viewer",
    "runs.list": "viewer",
    "run.show": "viewer",
    "run.watch": "viewer",
    "run.unwatch": "viewer",
    "log.list": "viewer",
    "messages.list": "viewer",
    "whoami": "viewer",
    "stats": "viewer",
    "inventory.show": "viewer",
    "groups.list": "viewer",
    "groups.show": "viewer",
    "filters.list": "viewer",
    "filters.show": "viewer",
    "reports.list": "viewer",
    "items.list": "viewer",
    "folders.list": "viewer",
    "policies.list": "viewer",
    "messages.watch": "viewer",
    "schedules.list": "viewer",
    "schedule.show": "viewer",
    # The web console's pages (issue 21): reads only.
    "fleet.summary": "viewer",
    "computer.show": "viewer",
    "computer.runs": "viewer",
    # A child NS's runs (issue 24): read from its summary or asked of it; starting one there is
    # starting a run.
    "children.list": "viewer",
    "children.show": "viewer",
    "children.runs": "viewer",
    "children.run": "viewer",
    "children.start": "operator",
    "run.start": "operator",
    # A schedule starts runs of saved tasks and jobs later: what an operator may do now.
    "schedule.add": "operator",
    "schedule.enable": "operator",
    "schedule.disable": "operator",
    "schedule.delete": "operator",
    "run.stop": "operator",
}


def required_role(op: str) -> str:
    return OP_ROLE.get(op, "admin")


def allowed(role: str, op: str) -> bool:
    return RANK.get(role, -1) >= RANK[required_role(op)]


def admin_name_ok(name: str) -> bool:
    """The rule for admin names (``ADMIN_NAME_RULE``): no name can pass for ``(server)`` or an
    agent in the audit trail, nor carry a line break into it."""
    return len(name) <= ADMIN_NAME_MAX and NAME.fullmatch(name) is not None


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


async def bootstrap_admin(ns: NS) -> str | None:
    """At the first start: make the first admin token, write it 0600, return it (printed once)."""
    if await ns.db.admins():
        return None
    token = new_token("tfa")
    await ns.db.add_admin("admin", "admin", hash_token(token))
    path = os.path.join(ns.data_dir, "admin.token")
    if os.path.exists(path):
        os.remove(path)
    write_private(path, (token + "\n").encode())
    await ns.db.audit("(server)", "admins.add", "first admin token 'admin' (role admin)", "ok")
    return token


async def authenticate(ns: NS, link: Link, hello: Hello) -> dict[str, Any]:
    """The NS's check of a new peer (see the module docstring)."""
    if hello.role == Role.ADMIN:
        token = hello.credentials.get("token")
        mark = ns.admin_sessions.mark()
        admin = await ns.db.admin_by_token(hash_token(token)) if isinstance(token, str) else None
        if admin is None:
            raise HandshakeError(
                "admin token refused (unknown or revoked); ask an admin for a token (`taskfleet admins add`)",
                code="unauthorized",
                close_code=CLOSE_UNAUTHORIZED,
            )
        return {"admin": admin["name"], "role": admin["role"], "mark": mark}
    if hello.role == Role.CHILD:
        # A loop is refused before the key proof: no token is spent, no key kept for it.
        ns.hierarchy.check_child_hello(hello)
    key = await challenge(link, hello, ns.server_id)
    role, name = str(hello.role), hello.identity
    fp = fingerprint(key)
    address = link.peer.rsplit("@", 1)[-1]
    row = await ns.db.key(role, name)
    enrol = hello.credentials.get("enrol_token")
    if row is not None and bytes(row["public_key"]) != key:
        text = (
            f"{role} {name!r} presented key {fp}, not its registered key {row['fingerprint']} "
            f"({row['state']}; from {address}); refused. If the machine was reinstalled, "
            f"`taskfleet keys delete {name}` lets it enrol again."
        )
        ns.log.warning(
            "key_mismatch", peer_role=role, peer_name=name, fingerprint=fp, peer=link.peer
        )
        await alert(ns, ("key", role, name), _host(link), ("key", role, name, fp), text)
        raise HandshakeError(text, code="key_mismatch", close_code=CLOSE_UNAUTHORIZED)
    if row is not None and row["state"] == "rejected":
        raise HandshakeError(
            f"the key of {role} {name!r} was rejected by an admin",
            code="rejected",
            close_code=CLOSE_UNAUTHORIZED,
        )
    if row is not None and row["state"] == "accepted":
        return {"public_key": key}
    if isinstance(enrol, str) and enrol:
        # Shielded: once started, the spend and the key's acceptance finish together even if
        # this handshake is cut (a deadline, a lost connection); the agent's retry is then known.
        why = await asyncio.shield(
            ns.db.enrol_with_token(hash_token(enrol), role, name, key, fp, address)
        )
        if why is not None:
            ns.log.warning("enrol_token_refused", peer=link.peer, reason=why)
            if " is for " in why:  # a token for agents presented by a TS (or the reverse)
                await alert(
                    ns,
                    ("token", role, name),
                    _host(link),
                    ("token", role, name, fp),
                    f"{role} {name!r} (key {fp}, from {address}) tried to enrol with a token"
                    f" made for another role: {why}; refused, and the token's use was not spent",
                )
            new_token = f"ask an admin for a new token (`taskfleet tokens create --for {role}`)"
            # A token used up, expired or mistyped: the key waits for an admin like one that
            # came with no token (bounded the same way). Not for a revoked token nor one made
            # for another role: those may be in the wrong hands, and nothing is kept for them.
            if (
                " is for " not in why
                and " was revoked" not in why
                and await _keep_pending(ns, link, role, name, key, fp, address, row)
            ):
                new_token = (
                    f"the key {fp} now waits for an admin: `taskfleet keys accept {name}`;"
                    f" or {new_token}"
                )
            raise HandshakeError(
                f"enrolment refused: {why}; {new_token}",
                code="enrol_token_refused",
                close_code=CLOSE_UNAUTHORIZED,
            )
        await ns.db.audit(
            f"{role}:{name}", "keys.enrol", f"key {fp} accepted with an enrolment token", "ok"
        )
        ns.log.info("key_enrolled", peer_role=role, peer_name=name, fingerprint=fp)
        if role == Role.TASKSERVER:
            await taskserver_enrolled(ns, name, fp, address, "with an enrolment token")
        elif role == Role.CHILD:
            await child_enrolled(ns, name, fp, address, "with an enrolment token")
        return {"public_key": key}
    if not await _keep_pending(ns, link, role, name, key, fp, address, row):
        raise HandshakeError(
            "too many keys wait for acceptance; try again later",
            code="too_many_pending",
            close_code=CLOSE_TOO_MANY_PENDING,
        )
    raise HandshakeError(
        f"the key {fp} of {role} {name!r} waits for an admin: `taskfleet keys accept {name}` "
        "(or enrol with a token from `taskfleet tokens create`)",
        code="pending",
        close_code=CLOSE_PENDING,
    )


async def _keep_pending(
    ns: NS,
    link: Link,
    role: str,
    name: str,
    key: bytes,
    fp: str,
    address: str,
    row: Any,
) -> bool:
    """Make sure the (new) key waits as ``pending`` for an admin; False when it cannot, because
    ``max_pending_keys`` already wait. A key already pending is left as it is."""
    if row is not None:
        return bool(row["state"] == "pending")
    if await ns.db.pending_keys() >= ns.max_pending_keys:
        ns.log.warning("too_many_pending_keys", peer=link.peer)
        return False
    await ns.db.put_key(role, name, key, fp, "pending", address)
    ns.log.info("key_pending", peer_role=role, peer_name=name, fingerprint=fp, peer=link.peer)
    return True


def _host(link: Link) -> str:
    """The peer's IP address, without its port: what alerts are coalesced by."""
    remote = getattr(link.ws, "remote_address", None)
    return str(remote[0]) if remote else link.peer.rsplit("@", 1)[-1].rsplit(":", 1)[0]


async def alert(
    ns: NS, subject: tuple[str, ...], address: str, key: tuple[str, ...], text: str
) -> None:
    """Raise ``text`` as a warning, coalesced (``server.guards.Alerts``): at most one message per
    subject and per address per window, with the count of those held back since the last."""
    held = ns.trust_alerts.note(subject, address, key, time.monotonic())
    if held is None:
        return
    if held:
        text += (
            f" ({held} more such refusals since the last message were not raised; the log has each)"
        )
    await ns.raise_message("warning", text, "enrolment")


async def taskserver_enrolled(ns: NS, name: str, fp: str, address: str, how: str) -> None:
    """A new TS will be sent agents: say so, with what identifies it."""
    await ns.raise_message(
        "warning",
        f"task server {name!r} enrolled {how}: key {fp}, from {address}. Agents may now be"
        f" assigned to it; if you did not expect it, `taskfleet keys reject {name}`",
        "enrolment",
    )


async def child_enrolled(ns: NS, name: str, fp: str, address: str, how: str) -> None:
    """A new child NS will be sent every replicated definition: say so, with what identifies it."""
    await ns.raise_message(
        "warning",
        f"child NS {name!r} enrolled {how}: key {fp}, from {address}. It now receives every item"
        f" marked replicate = true; if you did not expect it, `taskfleet keys reject {name}`",
        "enrolment",
    )


async def cut_off(ns: NS, role: str, name: str, why: str) -> None:
    """An admin rejected or deleted the key of ``role`` ``name``: close its connection now; for
    an agent, void the tickets the NS gave it (stored, and told to every connected TS)."""
    if role == Role.TASKSERVER:
        route = ns.routes.get(name)
        if isinstance(route, RemoteRoute):
            ns.spawn(route.link.close(CLOSE_UNAUTHORIZED, why))
        return
    if role == Role.CHILD:
        ns.hierarchy.cut_child(name, why)
        return
    if role != Role.AGENT:
        return
    if ns.relay is not None:
        conn = ns.relay.agents.get(name)
        if conn is not None:
            ns.spawn(conn.link.close(CLOSE_UNAUTHORIZED, why))
    until = int(time.time() + TICKET_TTL_S)  # every ticket signed until now expires by then
    await ns.db.revoke_tickets(name, until)
    links = [r.link for r in ns.routes.values() if isinstance(r, RemoteRoute)]
    await asyncio.gather(*(tell_revoked(ns, link, {name: until}) for link in links))


async def tell_revoked(ns: NS, link: Link, agents: dict[str, int] | None = None) -> None:
    """Send a TS the agents whose tickets are void (None: every one still in force, for a TS that
    just connected); each batch waits for the TS's ``ack``. A TS that does not answer is told
    again when it reconnects."""
    if agents is None:
        agents = await ns.db.revoked_tickets()
    names = sorted(agents)
    for i in range(0, len(names), REVOKE_BATCH):
        batch = {n: agents[n] for n in names[i : i + REVOKE_BATCH]}
        try:
            await link.request(Revoke(id=link.next_id(), agents=batch), timeout_s=10)
        except Exception as exc:  # a TS that is gone or silent is told again at its reconnect
            ns.log.warning(
                "revoke_not_acknowledged", peer=link.peer, error=str(exc) or type(exc).__name__
            )
            return


async def end_admin_sessions(ns: NS, name: str, why: str, asking: Link | None = None) -> int:
    """End the open sessions of admin ``name`` now (its token was revoked or replaced): closed
    with 4401 and ``why``. The asking connection, if it is one of them, is closed once its
    answer is sent (``serve_admin`` sees it no longer open). Returns how many were ended."""
    links = ns.admin_sessions.end(name)
    for link in links:
        if link is not asking:
            ns.spawn(link.close(CLOSE_UNAUTHORIZED, why))
    return len(links)


def ticket(ns: NS, agent: str, public_key: bytes, taskserver: str) -> tuple[dict[str, Any], bytes]:
    """The NS vouches for an agent to its TS: a signed, expiring ticket."""
    body = {
        "agent": agent,
        "public_key": public_key.hex(),
        "taskserver": taskserver,
        "expires_at": int(time.time() + TICKET_TTL_S),
    }
    return body, sign(ns.key, ticket_payload(body))
