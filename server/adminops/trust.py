"""Admin operations on trust: who the admin is (``whoami``), agent and task-server keys
(accept, reject, delete), enrolment tokens, admins and their tokens, and the audit trail. A
rejected or deleted key, or a replaced or revoked admin token, ends the connections it opened
(``server.auth``). Each registers itself with :func:`server.adminops.base.op`."""

from __future__ import annotations

import time
from typing import Any

from protocol.identity import hash_token
from runtime.link import Link
from server import auth
from server.adminops.base import ApiError, _arg, op
from server.interface import NS


@op("whoami")
async def whoami(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return {"admin": link.who}


@op("keys.list")
async def keys_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.keys()


@op("keys.accept")
async def keys_accept(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    names = _arg(args, "names", list, [])
    if not names and not args.get("all"):
        raise ApiError("bad_request", "name the keys to accept, or accept --all pending keys")
    decided = await ns.db.decide_keys(
        None if args.get("all") else [str(n) for n in names], "accepted"
    )
    accepted = sorted({k["name"] for k in decided})
    for k in decided:
        if k["role"] == "taskserver":
            await auth.taskserver_enrolled(
                ns, k["name"], k["fingerprint"], k["address"], f"by {link.who} (keys accept)"
            )
    missing = sorted(set(map(str, names)) - set(accepted))
    if missing and not args.get("all"):
        raise ApiError(
            "unknown_key", f"no pending key for: {', '.join(missing)}; `taskfleet keys` lists them"
        )
    return {"accepted": accepted}


@op("keys.reject")
async def keys_reject(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    decided = await ns.db.decide_keys([name], "rejected", only_pending=False)
    if not decided:
        raise ApiError("unknown_key", f"no key named {name!r}; `taskfleet keys` lists them")
    for k in decided:  # its connection ends now, and its tickets open no TS
        await auth.cut_off(ns, k["role"], name, f"the key of {name} was rejected by an admin")
    return {"rejected": sorted({k["name"] for k in decided})}


@op("keys.delete")
async def keys_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    roles = await ns.db.delete_keys(name)
    if not roles:
        raise ApiError("unknown_key", f"no key named {name!r}; `taskfleet keys` lists them")
    for role in roles:  # its connection ends now, and its tickets open no TS
        await auth.cut_off(ns, role, name, f"the key of {name} was deleted by an admin")
    return {"deleted": name}


@op("tokens.create")
async def tokens_create(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    ttl_s = _arg(args, "ttl_s", int, 3600)
    uses = _arg(args, "uses", int, 1)
    role = _arg(args, "role", str, "agent")
    if not 1 <= ttl_s <= 365 * 86400 or not 1 <= uses <= 1_000_000:
        raise ApiError("bad_request", "ttl must be 1 s to 365 days and uses 1 to 1,000,000")
    if role not in auth.ENROL_ROLES:
        raise ApiError(
            "bad_request",
            f"an enrolment token is for one of: {', '.join(auth.ENROL_ROLES)} (not {role!r})",
        )
    token = auth.new_token("tfe")
    expires_at = time.time() + ttl_s
    token_id = await ns.db.add_enrol_token(hash_token(token), uses, expires_at, link.who, role)
    return {"id": token_id, "token": token, "uses": uses, "expires_at": expires_at, "role": role}


@op("tokens.list")
async def tokens_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.enrol_tokens()


@op("tokens.revoke")
async def tokens_revoke(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    token_id = _arg(args, "id", int)
    if not await ns.db.revoke_enrol_token(token_id):
        raise ApiError(
            "unknown_token",
            f"no enrolment token #{token_id} that is not revoked already; `taskfleet tokens` lists them",
        )
    return {"revoked": token_id}


@op("admins.add")
async def admins_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    role = _arg(args, "role", str, "viewer")
    if role not in auth.ADMIN_ROLES:
        raise ApiError("bad_request", f"role must be one of {', '.join(auth.ADMIN_ROLES)}")
    if not auth.admin_name_ok(name):
        raise ApiError("bad_request", f"{name!r} is refused: {auth.ADMIN_NAME_RULE}")
    token = auth.new_token("tfa")
    await ns.db.add_admin(name, role, hash_token(token))
    # A name given again gets a new token (and maybe another role): the old token is void, and
    # so are the sessions it opened.
    ended = await auth.end_admin_sessions(
        ns, name, f"the admin token of {name} was replaced (role now {role})", link
    )
    return {"name": name, "role": role, "token": token, "sessions_ended": ended}


@op("admins.list")
async def admins_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.admins()


@op("admins.revoke")
async def admins_revoke(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    if not await ns.db.revoke_admin(name):
        raise ApiError(
            "unknown_admin", f"no active admin named {name!r}; `taskfleet admins list` lists them"
        )
    ended = await auth.end_admin_sessions(ns, name, f"the admin token of {name} was revoked", link)
    return {"revoked": name, "sessions_ended": ended}


@op("audit.list")
async def audit_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.audit_trail(
        max(1, min(_arg(args, "limit", int, 100), 10_000)),
        who=_arg(args, "who", str, ""),
        action=_arg(args, "action", str, ""),
    )
