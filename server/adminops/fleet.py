"""Admin operations on the fleet: computers (list, add a device, delete), task servers, a
computer's inventory, groups (and their members) and filters. Each registers itself with
:func:`server.adminops.base.op`."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
import weakref
from typing import Any

from protocol.errors import ValidationError
from protocol.filters import validate_filter
from protocol.messages import Report
from protocol.session import NAME
from protocol.states import InstanceState
from runtime.link import Link
from server import auth
from server.adminops.base import (
    ApiError,
    _arg,
    _document,
    _refuse_unknown,
    op,
    refuse_read_only,
)
from server.interface import NS
from server.store.runs import wire_id


def _computer_view(row: dict[str, Any]) -> dict[str, Any]:
    import json

    return {
        "id": row["id"],
        "name": row["name"],
        "has_agent": bool(row["has_agent"]),
        "online": bool(row["online"]),
        "taskserver": row["taskserver"] or ("(built-in)" if row["has_agent"] else None),
        "last_seen": row["last_seen"],
        "os": row["os"],
        "agent_version": row["agent_version"],
        "addresses": json.loads(row["addresses"] or "[]"),
    }


@op("computers.list")
async def computers_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Every computer; ``offline_for_s`` (> 0): only those whose agent is offline and was last
    seen that many seconds ago or more (stale ones; devices are never listed then)."""
    offline_for_s = _arg(args, "offline_for_s", int, 0)
    if offline_for_s < 0:
        raise ApiError("bad_request", "argument 'offline_for_s' must be 0 or more seconds")
    # ``group`` (with its nested groups, as a run on it reaches) and ``filter`` narrow the list
    # on the server, so the console's Computers page needs no second request per computer.
    group = (await _group_or_refuse(ns, args))["name"] if args.get("group") else ""
    filter_name = (
        (await _filter_or_refuse(ns, {"name": args["filter"]}))["name"]
        if args.get("filter")
        else ""
    )
    if offline_for_s:
        rows = await ns.db.stale_computers(time.time() - offline_for_s)
    else:
        rows = await ns.db.group_computers([group]) if group else await ns.db.computers()
    if filter_name:
        members = {r["name"] for r in await ns.db.filter_member_names(filter_name)}
        rows = [r for r in rows if r["name"] in members]
    if group and offline_for_s:
        reached = {r["name"] for r in await ns.db.group_computers([group])}
        rows = [r for r in rows if r["name"] in reached]
    return [_computer_view(r) for r in rows]


async def _computer_or_refuse(ns: NS, args: dict[str, Any]) -> dict[str, Any]:
    name = _arg(args, "computer", str)
    rows = await ns.db.computers([name])
    if not rows:
        raise ApiError(
            "unknown_computer", f"unknown computer {name!r}: `taskfleet computers` lists them"
        )
    return rows[0]


@op("computer.show")
async def computer_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """One computer for the console's Computer page, in one request: its view, the groups it
    is directly in, the filters holding it, and its latest inventory (``None``: none yet)."""
    row = await _computer_or_refuse(ns, args)
    inventory = await ns.db.inventory(row["name"])
    return {
        **_computer_view(row),
        "mac": row["mac"],
        "created_at": row["created_at"],
        "groups": await ns.db.computer_groups(int(row["id"])),
        "filters": await ns.db.computer_filters(int(row["id"])),
        "inventory": inventory[0] if inventory else None,
    }


@op("computer.runs")
async def computer_runs(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """What ran on a computer: every run with an instance on it, newest first, with its state
    there (``Store.computer_runs``); ``limit`` clamped to 1-1000."""
    row = await _computer_or_refuse(ns, args)
    limit = max(1, min(_arg(args, "limit", int, 100), 1000))
    return await ns.db.computer_runs(int(row["id"]), limit)


SUMMARY_KEEP_S = 2.0
"""How long a fleet summary is served again: every open Fleet page asks every few seconds (and
at each message), and the failures read scans the newest runs' instances; many tabs cost the NS
one read per this time, not one each."""
_summaries: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], tuple[float, Any]]] = (
    weakref.WeakKeyDictionary()
)


@op("fleet.summary")
async def fleet_summary(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """The console's Fleet page in one request: computers (total, online, with an agent, and
    per TS), the runs in flight, the latest failed or timed-out instances, the newest
    messages. ``failures`` and ``messages`` (default 10) are clamped to 1-100. An answer up to
    ``SUMMARY_KEEP_S`` old may be served again."""
    failures = max(1, min(_arg(args, "failures", int, 10), 100))
    messages = max(1, min(_arg(args, "messages", int, 10), 100))
    kept = _summaries.setdefault(ns, {})
    now = time.monotonic()
    hit = kept.get((failures, messages))
    if hit is not None and now - hit[0] < SUMMARY_KEEP_S:
        return hit[1]
    summary = await _summary(ns, failures, messages)
    kept[(failures, messages)] = (now, summary)
    return summary


async def _summary(ns: NS, failures: int, messages: int) -> dict[str, Any]:
    by_ts = await ns.db.fleet_counts()
    total = sum(int(t["computers"]) for t in by_ts)
    agents = sum(int(t["agents"]) for t in by_ts)
    return {
        "computers": total,
        "online": sum(int(t["online"]) for t in by_ts),
        "agents": agents,
        "no_agent": total - agents,
        "by_taskserver": [
            {
                "taskserver": t["taskserver"],
                "computers": int(t["computers"]),
                "online": int(t["online"]),
                # The built-in service is the NS itself; devices with no TS have no link.
                "connected": t["taskserver"] == "(built-in)" or t["taskserver"] in ns.routes,
            }
            for t in by_ts
        ],
        "runs_in_flight": await ns.db.running_runs(100),
        "failures": await ns.db.recent_failures(failures),
        "messages": await ns.db.messages(messages),
    }


_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def device_mac(text: str) -> str:
    """A device's MAC address as six hex pairs (``:`` or ``-`` between them), normalised to
    ``aa:bb:cc:dd:ee:ff``; empty for none. Anything else is a ``bad_request``."""
    if not text:
        return ""
    if not _MAC.fullmatch(text):
        raise ApiError(
            "bad_request",
            f"--mac {text!r} is not a MAC address: give six hex pairs separated by ':' or '-', "
            "for example aa:bb:cc:dd:ee:ff",
        )
    return text.replace("-", ":").lower()


def device_address(text: str) -> str:
    """A device's address: an IPv4 or IPv6 address, or a host name of RFC 1123 labels (letters,
    digits and '-', 1-63 characters each, not starting or ending with '-'; 253 characters at most;
    the last label not all digits); empty for none. Anything else is a ``bad_request``."""
    if not text:
        return ""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text))
    labels = text.split(".")
    if (
        len(text) > 253
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ApiError(
            "bad_request",
            f"--address {text!r} is neither an IP address nor a host name: give an IPv4 or IPv6 "
            "address (192.0.2.7, 2001:db8::7) or a host name of letters, digits, '-' and '.' "
            "(pc-7.example.org)",
        )
    return text


@op("computers.add")
async def computers_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    if not NAME.fullmatch(name):
        raise ApiError(
            "bad_request",
            "a computer name has 1-255 characters: letters, digits, '.', '_', '-', starting with a letter or digit",
        )
    address = device_address(_arg(args, "address", str, ""))
    mac = device_mac(_arg(args, "mac", str, ""))
    # A device is served by the connected TS with the fewest computers (or the built-in service).
    servers = [t for t in await ns.db.taskservers() if t["name"] in ns.routes]
    ts = min(servers, key=lambda t: (t["computers"], t["name"]))["name"] if servers else None
    try:
        row = await ns.db.add_device(name, address, ts, mac)
    except ValueError as exc:
        raise ApiError("exists", str(exc)) from None
    finally:
        ns.forget_taskserver_load()
    return _computer_view(row)


COMPUTER_DELETED = "the computer was deleted"
"""The reason its unfinished instances end ``stopped`` with when a computer is deleted."""


@op("computers.delete")
async def computers_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Forget computers that left the fleet (``names``), with their agent keys unless
    ``keep_key``. Their unfinished instances end ``stopped`` ("the computer was deleted")
    through the roll-up, as a result would (counts, barriers and runs' ends stay right), and
    their relays are told to drop the work; their history stays, by name
    (``Store.delete_computers``). A connected agent is closed and its tickets void
    (``auth.cut_off``). With ``keep_key`` an online computer is refused: its agent would
    register again at once."""
    names = _arg(args, "names", list)
    if not names or not all(isinstance(n, str) for n in names):
        raise ApiError("bad_request", "argument 'names' must list the computers to delete")
    keep_key = _arg(args, "keep_key", bool, False)
    names = list(dict.fromkeys(names))
    rows = await ns.db.computers(names)
    _refuse_unknown("computer", names, {r["name"] for r in rows})
    online = sorted(r["name"] for r in rows if r["online"])
    if keep_key and online:
        raise ApiError(
            "computer_online",
            f"{', '.join(online)} {'is' if len(online) == 1 else 'are'} online: with --keep-key"
            " its agent would register again at once; stop the agent first, or delete the"
            " computer with its key (without --keep-key)",
        )
    ids = [int(r["id"]) for r in rows]
    work = await ns.db.unfinished_work(ids)
    if work:
        now = time.time()
        await ns.on_reports(
            [
                Report(
                    instance_id=int(w["id"]),
                    state=InstanceState.STOPPED,
                    computer=str(w["computer"]),
                    reason=COMPUTER_DELETED,
                    ended_at=now,
                )
                for w in work
            ]
        )
        by_route: dict[str, list[int]] = {}
        for w in work:
            if w["route"]:
                by_route.setdefault(w["route"], []).append(wire_id(w["epoch"], w["id"]))
        for route, wire_ids in by_route.items():
            handle = ns.routes.get(route)
            try:
                if handle is None:
                    raise ConnectionError(f"{route} is not connected")
                await handle.cancel(wire_ids)
            except Exception:  # told when it connects (``pending_cancels``)
                ns.pending_cancels[route].extend(wire_ids)
    await ns.db.delete_computers(ids, COMPUTER_DELETED)
    ns.forget_taskserver_load()
    keys: list[str] = []
    if not keep_key:
        keys = await ns.db.delete_agent_keys([r["name"] for r in rows if r["has_agent"]])
        for name in keys:  # a connected agent is closed now; its tickets open no TS
            await auth.cut_off(ns, "agent", name, f"the computer {name} was deleted by an admin")
    return {"deleted": sorted(names), "keys_deleted": keys, "stopped": len(work)}


@op("taskservers.list")
async def taskservers_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return [
        {
            "name": t["name"],
            "url": t["url"],
            "online": t["name"] in ns.routes,
            "computers": t["computers"],
        }
        for t in await ns.db.taskservers()
    ]


@op("inventory.show")
async def inventory_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """The latest basic inventory of a computer (``history``: every one, newest first); a name
    that is no computer is ``unknown_computer`` (a usage error), not an empty inventory."""
    computer = _arg(args, "computer", str)
    rows = await ns.db.inventory(computer, bool(args.get("history", False)))
    if not rows and not await ns.db.computers([computer]):
        raise ApiError(
            "unknown_computer", f"unknown computer {computer!r}: `taskfleet computers` lists them"
        )
    return rows


# -- groups, filters ---------------------------------------------------------------------


@op("groups.list")
async def groups_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.groups()


@op("groups.add")
async def groups_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    if not NAME.fullmatch(name):
        raise ApiError(
            "bad_request",
            "a group name has letters, digits, '.', '_', '-', starting with a letter or digit",
        )
    replicate = _arg(args, "replicate", bool, False)
    await refuse_read_only(ns, "group", name)
    try:
        group_id = await ns.db.add_group(name, _arg(args, "parent", str, "") or None, replicate)
    except ValueError as exc:
        raise ApiError("unknown_group", str(exc)) from None
    except Exception:
        raise ApiError("exists", f"a group named {name!r} exists") from None
    return {"id": group_id, "name": name, "replicate": replicate}


async def _group_or_refuse(ns: NS, args: dict[str, Any]) -> dict[str, Any]:
    name = _arg(args, "group", str)
    group = await ns.db.group(name)
    if group is None:
        raise ApiError("unknown_group", f"no group named {name!r}; `taskfleet groups` lists them")
    return group


async def _member_rows(ns: NS, args: dict[str, Any]) -> list[dict[str, Any]]:
    names = _arg(args, "computers", list)
    if not names or not all(isinstance(n, str) for n in names):
        raise ApiError("bad_request", "argument 'computers' must list computer names")
    names = list(dict.fromkeys(names))
    rows = await ns.db.computers(names)
    _refuse_unknown("computer", names, {r["name"] for r in rows})
    return rows


@op("groups.add_member")
async def groups_add_member(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Put computers (``computers``, every one must exist) in group ``group``."""
    group = await _group_or_refuse(ns, args)
    rows = await _member_rows(ns, args)
    added = await ns.db.add_to_group(group["id"], [r["id"] for r in rows])
    return {"group": group["name"], "added": added, "already": len(rows) - added}


@op("groups.remove_member")
async def groups_remove_member(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Take computers out of group ``group`` (the computers stay, and in their other groups)."""
    group = await _group_or_refuse(ns, args)
    rows = await _member_rows(ns, args)
    removed = await ns.db.remove_from_group(group["id"], [r["id"] for r in rows])
    return {"group": group["name"], "removed": removed, "not_members": len(rows) - removed}


@op("groups.show")
async def groups_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """A group: its parent, the groups nested in it, its own members, and how many computers
    a run on it reaches (its members and those of every group below it)."""
    group = await _group_or_refuse(ns, args)
    members = await ns.db.group_members(group["id"])
    return {
        "name": group["name"],
        "parent": group["parent"],
        "replicate": group["replicate"],
        "origin": group["origin"],
        "groups": await ns.db.nested_groups(group["id"]),
        "members": [
            {"name": m["name"], "online": bool(m["online"]), "has_agent": bool(m["has_agent"])}
            for m in members
        ],
        "computers": len(await ns.db.group_computers([group["name"]])),
    }


@op("groups.delete")
async def groups_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Delete a group (its computers stay). Refused (``in_use``) while groups are nested in it,
    a policy targets it, or an assign-to-group task fills it without creating it."""
    group = await _group_or_refuse(ns, args)
    name = group["name"]
    await refuse_read_only(ns, "group", name)
    users = [f"group {g} (nested in it)" for g in await ns.db.nested_groups(group["id"])]
    users += [
        f"policy {p['name']}"
        for p in await ns.db.policies()
        if name in (p.get("targets") or {}).get("groups", [])
    ]
    users += [
        f"task {t['name']} (assign-to-group)"
        for t in await ns.db.tasks()
        if t.get("type") == "assign-to-group"
        and (t.get("params") or {}).get("group") == name
        and not (t.get("params") or {}).get("create")
    ]
    if users:
        raise ApiError(
            "in_use",
            f"group {name!r} is named by {', '.join(users)}: change or delete "
            f"{'them' if len(users) > 1 else 'it'} first",
        )
    held = await ns.db.delete_group(group["id"])
    return {"deleted": name, "members": held}


@op("filter.add")
async def filter_add(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    from server.tasktypes.filters import recompute_filters

    try:
        definition, _ = validate_filter(_document(args))
    except ValidationError as exc:
        raise ApiError("invalid_document", str(exc)) from None
    await refuse_read_only(ns, "filter", definition["name"])
    replaced = await ns.db.save_filter(definition)
    changes = await recompute_filters(ns, definition["name"])
    return {**definition, "replaced": replaced, "members": changes[definition["name"]]["added"]}


@op("filters.list")
async def filters_list(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    return await ns.db.filters()


async def _filter_or_refuse(ns: NS, args: dict[str, Any]) -> dict[str, Any]:
    name = _arg(args, "name", str)
    found = await ns.db.filter_definition(name)
    if found is None:
        raise ApiError(
            "unknown_filter", f"no filter named {name!r}; `taskfleet filters` lists them"
        )
    return found


@op("filters.show")
async def filters_show(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """A filter as saved and its cached members (as computed at ``members_at``)."""
    found = await _filter_or_refuse(ns, args)
    members = await ns.db.filter_member_names(found["name"])
    return {
        **found,
        "members": [
            {"name": m["name"], "online": bool(m["online"]), "has_agent": bool(m["has_agent"])}
            for m in members
        ],
    }


@op("filters.delete")
async def filters_delete(ns: NS, link: Link, args: dict[str, Any]) -> Any:
    """Delete a filter and its cached membership; refused (``in_use``) while a policy targets
    it."""
    found = await _filter_or_refuse(ns, args)
    name = found["name"]
    await refuse_read_only(ns, "filter", name)
    users = [
        p["name"]
        for p in await ns.db.policies()
        if name in (p.get("targets") or {}).get("filters", [])
    ]
    if users:
        raise ApiError(
            "in_use",
            f"filter {name!r} is targeted by policy {', '.join(users)}: change or delete "
            f"{'them' if len(users) > 1 else 'it'} first",
        )
    await ns.db.delete_item("filter", name)
    return {"deleted": name}
