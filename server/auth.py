"""Who may connect to the NS and what they may do: key enrolment, admin tokens, roles, tickets.

Agents and task servers prove their Ed25519 key (``runtime.link.challenge``). A new key waits as
``pending`` until an admin accepts it, or is accepted at once with a valid enrolment token.
A name that comes back with another key than the accepted one is refused and raised as a
message: no silent takeover. Admins present a token; its role bounds their operations.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any

from protocol.errors import HandshakeError
from protocol.identity import fingerprint, hash_token, sign, ticket_payload
from protocol.messages import Hello
from protocol.session import (
    CLOSE_PENDING,
    CLOSE_TOO_MANY_PENDING,
    CLOSE_UNAUTHORIZED,
    Role,
)
from runtime.keys import write_private
from runtime.link import Link, challenge
from server.interface import NS

ADMIN_ROLES = ("viewer", "operator", "admin")
RANK = {role: n for n, role in enumerate(ADMIN_ROLES)}
TICKET_TTL_S = 24 * 3600
MAX_PENDING_KEYS = 1_000

# The least role each admin operation needs. Anything not listed needs "admin".
OP_ROLE: dict[str, str] = {
    "computers.list": "viewer",
    "taskservers.list": "viewer",
    "tasks.list": "viewer",
    "jobs.list": "viewer",
    "types.list": "viewer",
    "runs.list": "viewer",
    "run.show": "viewer",
    "run.watch": "viewer",
    "log.list": "viewer",
    "messages.list": "viewer",
    "whoami": "viewer",
    "stats": "viewer",
    "inventory.show": "viewer",
    "groups.list": "viewer",
    "filters.list": "viewer",
    "reports.list": "viewer",
    "items.list": "viewer",
    "folders.list": "viewer",
    "policies.list": "viewer",
    "messages.watch": "viewer",
    "run.start": "operator",
    "run.stop": "operator",
}


def required_role(op: str) -> str:
    return OP_ROLE.get(op, "admin")


def allowed(role: str, op: str) -> bool:
    return RANK.get(role, -1) >= RANK[required_role(op)]


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
        admin = await ns.db.admin_by_token(hash_token(token)) if isinstance(token, str) else None
        if admin is None:
            raise HandshakeError(
                "admin token refused (unknown or revoked); ask an admin for a token (`taskfleet admins add`)",
                code="unauthorized",
                close_code=CLOSE_UNAUTHORIZED,
            )
        return {"admin": admin["name"], "role": admin["role"]}
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
        if (
            role,
            name,
            fp,
        ) not in ns.mismatches_raised:  # one message per key, however often it knocks
            ns.mismatches_raised.add((role, name, fp))
            await ns.raise_message("warning", text, "enrolment")
        ns.log.warning("key_mismatch", role=role, name=name, fingerprint=fp, peer=link.peer)
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
            raise HandshakeError(
                f"enrolment refused: {why}; ask an admin for a new token (`taskfleet tokens create`)",
                code="enrol_token_refused",
                close_code=CLOSE_UNAUTHORIZED,
            )
        await ns.db.audit(
            f"{role}:{name}", "keys.enrol", f"key {fp} accepted with an enrolment token", "ok"
        )
        ns.log.info("key_enrolled", role=role, name=name, fingerprint=fp)
        return {"public_key": key}
    if row is None:
        if await ns.db.pending_keys() >= ns.max_pending_keys:
            ns.log.warning("too_many_pending_keys", peer=link.peer)
            raise HandshakeError(
                "too many keys wait for acceptance; try again later",
                code="too_many_pending",
                close_code=CLOSE_TOO_MANY_PENDING,
            )
        await ns.db.put_key(role, name, key, fp, "pending", address)
        ns.log.info("key_pending", role=role, name=name, fingerprint=fp, peer=link.peer)
    raise HandshakeError(
        f"the key {fp} of {role} {name!r} waits for an admin: `taskfleet keys accept {name}` "
        "(or enrol with a token from `taskfleet tokens create`)",
        code="pending",
        close_code=CLOSE_PENDING,
    )


def ticket(ns: NS, agent: str, public_key: bytes, taskserver: str) -> tuple[dict[str, Any], bytes]:
    """The NS vouches for an agent to its TS: a signed, expiring ticket."""
    body = {
        "agent": agent,
        "public_key": public_key.hex(),
        "taskserver": taskserver,
        "expires_at": int(time.time() + TICKET_TTL_S),
    }
    return body, sign(ns.key, ticket_payload(body))
