"""Admin verbs for trust: keys, enrolment tokens, admin tokens, the audit trail, messages."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from admin import schema
from admin.client import AdminClient
from admin.hierview import hierarchy_columns, hierarchy_line
from admin.output import short_time, table
from protocol import policies
from protocol.session import NAME

_FOR = {"agent": "agents", "taskserver": "task servers", "child": "child NS"}


def duration_s(text: str) -> int:
    """``90``, ``30m``, ``1h``, ``7d`` → seconds."""
    seconds = policies.duration_s(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90, 30m, 1h or 7d")
    return seconds


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _show(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    columns: list[tuple[str, str]],
    as_json: Callable[[dict[str, Any]], dict[str, Any]] = schema.record,
) -> int:
    """``--json``: each row by the schema (``as_json``: its converter); else a table (an ``at``
    time shows as ``when``)."""
    if args.json:
        _json([as_json(r) for r in rows])
        return 0
    for r in rows:
        if "at" in r:
            r["when"] = short_time(r["at"])
    print(table(rows, hierarchy_columns(rows, columns)))
    return 0


async def v_keys(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "accept":
        if not args.names and not args.all:
            schema.print_error(args.json, "usage", "keys accept needs NAME ... or --all")
            return 2
        result = await c.call("keys.accept", names=args.names, all=args.all)
        if args.json:
            _json(result)
        else:
            print(f"accepted: {', '.join(result['accepted']) or '(none pending)'}")
        return 0
    if args.action in ("reject", "delete"):
        if len(args.names) != 1:
            schema.print_error(args.json, "usage", f"keys {args.action} needs one NAME")
            return 2
        result = await c.call(f"keys.{args.action}", name=args.names[0])
        if args.json:
            _json(result)
            return 0
        print(
            f"{args.action}ed {args.names[0]}"
            if args.action == "reject"
            else f"deleted {result['deleted']}"
        )
        return 0
    rows = await c.call("keys.list")
    if args.json:
        _json([schema.key(r) for r in rows])
        return 0
    for r in rows:
        r["since"] = short_time(r["created_at"])
    print(
        table(
            rows,
            [
                ("name", "name"),
                ("role", "role"),
                ("state", "state"),
                ("fingerprint", "fingerprint"),
                ("address", "address"),
                ("since", "since (utc)"),
            ],
        )
    )
    return 0


async def v_tokens(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        if args.ids:
            schema.print_error(
                args.json, "usage", "tokens create takes no ID (see --for, --ttl, --uses)"
            )
            return 2
        t = await c.call("tokens.create", ttl_s=args.ttl, uses=args.uses, role=args.role)
        if args.json:
            _json(schema.token(t))
        else:
            who = _FOR.get(t.get("role", "agent"), "agents")
            print(
                f"enrolment token #{t['id']} for {who} (shown once; {t['uses']} use(s),"
                f" expires {short_time(t['expires_at'])} UTC):"
            )
            print(t["token"])
        return 0
    if args.action == "revoke":
        if not args.ids:
            schema.print_error(
                args.json, "usage", "tokens revoke needs the ID of a token (`taskfleet tokens`)"
            )
            return 2
        revoked = []
        for token_id in args.ids:
            await c.call("tokens.revoke", id=token_id)
            revoked.append(token_id)
            if not args.json:
                print(f"revoked enrolment token #{token_id}")
        if args.json:
            _json({"revoked": revoked})
        return 0
    rows = await c.call("tokens.list")
    if args.json:
        _json([schema.token(r) for r in rows])
        return 0
    now = time.time()
    for r in rows:
        r["expires"] = short_time(r["expires_at"])
        r["for"] = r.get("role", "agent")
        if r.get("revoked_at"):
            r["state"] = "revoked"
        elif r["expires_at"] < now:
            r["state"] = "expired"
        elif r["uses_left"] <= 0:
            r["state"] = "used up"
        else:
            r["state"] = "usable"
    print(
        table(
            rows,
            [
                ("id", "id"),
                ("for", "for"),
                ("state", "state"),
                ("uses_left", "uses left"),
                ("expires", "expires (utc)"),
                ("created_by", "by"),
            ],
        )
    )
    return 0


async def v_admins(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "add":
        if not args.name:
            schema.print_error(args.json, "usage", "admins add needs a NAME")
            return 2
        if len(args.name) > 64 or not NAME.fullmatch(args.name):
            schema.print_error(
                args.json,
                "usage",
                f"{args.name!r} is refused: an admin name follows the rule for computer"
                " names: 1 to 64 characters, letters, digits, '.', '_' and '-', starting with a"
                " letter or digit",
            )
            return 2
        a = await c.call("admins.add", name=args.name, role=args.role)
        if args.json:
            _json(schema.admin(a))
        else:
            print(f"admin {a['name']} ({a['role']}); token, shown once:")
            print(a["token"])
            if a.get("sessions_ended"):
                print(
                    f"(its old token is void: {a['sessions_ended']} open session(s) ended)",
                    file=sys.stderr,
                )
        return 0
    if args.action == "revoke":
        if not args.name:
            schema.print_error(args.json, "usage", "admins revoke needs a NAME")
            return 2
        r = await c.call("admins.revoke", name=args.name)
        ended = r.get("sessions_ended", 0)
        if args.json:
            _json({"revoked": args.name, "sessions_ended": ended})
            return 0
        print(f"revoked {args.name}" + (f" ({ended} open session(s) ended)" if ended else ""))
        return 0
    rows = await c.call("admins.list")
    if args.json:
        _json([schema.admin(r) for r in rows])
        return 0
    for r in rows:
        r["state"] = "revoked" if r["revoked_at"] else "active"
    print(table(rows, [("name", "name"), ("role", "role"), ("state", "state")]))
    return 0


async def v_audit(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("audit.list", limit=args.limit)
    columns = [("when", "when (utc)"), ("who", "who"), ("action", "action"), ("detail", "detail")]
    return _show(rows, args, [*columns, ("outcome", "outcome")], schema.audit_row)


async def v_messages(c: AdminClient, args: argparse.Namespace) -> int:
    if args.watch:
        await c.call("messages.watch")
        print("watching messages (Ctrl-C to stop)", file=sys.stderr)
        while True:
            event = await c._events.get()
            if event is None:
                return 3
            if event.kind == "message":
                d = event.data
                if args.json:  # one object a line, as it comes
                    print(json.dumps(schema.message(d), sort_keys=True, default=str), flush=True)
                else:
                    print(f"{short_time(time.time())}  {d['severity']:<8}  {d['text']}", flush=True)
    rows = await c.call("messages.list", limit=args.limit)
    if args.json:
        _json([schema.message(r) for r in rows])
        return 0
    for r in rows:
        r["when"] = short_time(r["at"])
    print(table(rows, [("when", "when (utc)"), ("severity", "severity"), ("text", "message")]))
    return 0


async def v_groups(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "add":
        if not args.name:
            schema.print_error(args.json, "usage", "groups add needs a NAME")
            return 2
        g = await c.call(
            "groups.add", name=args.name, parent=args.parent or "", replicate=args.replicate
        )
        if args.json:
            _json(schema.record(g, "group_id"))
        else:
            print(f"added group {g['name']}" + (" (replicated)" if args.replicate else ""))
        return 0
    if args.action in ("add-member", "remove-member"):
        if not args.name or not args.computers:
            schema.print_error(args.json, "usage", f"groups {args.action} needs GROUP NAME...")
            return 2
        op = "groups.add_member" if args.action == "add-member" else "groups.remove_member"
        r = await c.call(op, group=args.name, computers=args.computers)
        if args.json:
            _json(r)
        elif args.action == "add-member":
            print(
                f"group {r['group']}: {r['added']} computer(s) added"
                + (f", {r['already']} already in it" if r["already"] else "")
            )
        else:
            print(
                f"group {r['group']}: {r['removed']} computer(s) removed"
                + (f", {r['not_members']} were not in it" if r["not_members"] else "")
            )
        return 0
    if args.action in ("show", "delete"):
        if not args.name or args.computers:
            schema.print_error(args.json, "usage", f"groups {args.action} needs one GROUP")
            return 2
        if args.action == "delete":
            r = await c.call("groups.delete", group=args.name)
            if args.json:
                _json(r)
            else:
                print(f"deleted group {r['deleted']} ({r['members']} computer(s) were in it)")
            return 0
        g = await c.call("groups.show", group=args.name)
        if args.json:
            _json(g)
            return 0
        print(f"group {g['name']}" + (f" (in {g['parent']})" if g["parent"] else ""))
        if g.get("replicate") or g.get("origin"):
            print(hierarchy_line(g))
        print(f"nested groups: {', '.join(g['groups']) or '(none)'}")
        print(f"computers reached by --group {g['name']}: {g['computers']}")
        for m in g["members"]:
            m["state"] = "online" if m["online"] else "offline"
            m["agent"] = "yes" if m["has_agent"] else "no (device)"
        print(table(g["members"], [("name", "member"), ("agent", "agent"), ("state", "state")]))
        return 0
    rows = await c.call("groups.list")
    if args.json:
        _json(schema.records(rows, "group_id"))
    else:
        columns = [("name", "name"), ("parent", "parent"), ("computers", "computers")]
        print(table(rows, hierarchy_columns(rows, columns)))
    return 0


async def v_filter(c: AdminClient, args: argparse.Namespace) -> int:
    saved = await c.add_document("filter.add", args.file)
    if args.json:
        _json(schema.record(saved))
        return 0
    print(
        f"{'replaced' if saved['replaced'] else 'added'} filter {saved['name']}: {len(saved['members'])} computer(s) now match"
    )
    return 0


async def v_filters(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action:
        if not args.name:
            schema.print_error(args.json, "usage", f"filters {args.action} needs a NAME")
            return 2
        if args.action == "delete":
            r = await c.call("filters.delete", name=args.name)
            if args.json:
                _json(r)
            else:
                print(f"deleted filter {r['deleted']}")
            return 0
        f = await c.call("filters.show", name=args.name)
        if args.json:
            _json(schema.record(f))
            return 0
        print(f"filter {f['name']}: {f['query']}")
        print(f"members computed: {short_time(f['members_at'])} UTC")
        for m in f["members"]:
            m["state"] = "online" if m["online"] else "offline"
        print(table(f["members"], [("name", "member"), ("state", "state")]))
        return 0
    rows = await c.call("filters.list")
    return _show(rows, args, [("name", "name"), ("members", "computers"), ("query", "query")])


async def v_report(c: AdminClient, args: argparse.Namespace) -> int:
    saved = await c.add_document("report.add", args.file)
    if args.json:
        _json(schema.record(saved))
        return 0
    print(f"{'replaced' if saved['replaced'] else 'added'} report {saved['name']}")
    return 0


async def v_reports(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("reports.list")
    return _show(rows, args, [("name", "name"), ("snapshots", "snapshots"), ("query", "query")])


async def v_items(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("items.list", folder=args.folder or "")
    return _show(
        rows,
        args,
        [("id", "id"), ("kind", "kind"), ("path", "path")],
        lambda r: schema.record(r, "item_id"),
    )


async def v_folders(c: AdminClient, args: argparse.Namespace) -> int:
    return _show(await c.call("folders.list"), args, [("path", "folder"), ("items", "items")])


def _told(r: dict[str, Any]) -> str:
    """What a policy change told its agents (``tickled``, ``offline`` counts)."""
    if not r.get("tickled") and not r.get("offline"):
        return ""
    return f"; {r['tickled']} connected agent(s) get it now" + (
        f", {r['offline']} offline when they connect" if r.get("offline") else ""
    )


async def v_policy(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action in ("enable", "disable", "delete"):
        r = await c.call(f"policy.{args.action}", name=args.file)
        if args.json:
            _json(r)
        elif args.action == "delete":
            print(f"deleted policy {r['deleted']}{_told(r)}")
        elif not r["changed"]:
            print(f"policy {r['policy']} was already {args.action}d")
        else:
            print(f"policy {r['policy']} {args.action}d{_told(r)}")
        return 0
    saved = await c.add_document("policy.add", args.file)
    if args.json:
        _json(schema.record(saved))
        return 0
    state = "enabled" if saved["enabled"] else "disabled"
    print(
        f"{'replaced' if saved['replaced'] else 'added'} policy {saved['name']} ({state})"
        + _told(saved)
    )
    return 0


async def v_policies(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("policies.list")
    if args.json:
        _json(schema.records(rows))
    else:
        for r in rows:
            r["when"] = ", ".join(f"{k}={v}" for k, v in r["schedule"].items())
        columns = [("name", "name"), ("task", "task"), ("enabled", "enabled")]
        columns.append(("when", "schedule"))
        print(table(rows, hierarchy_columns(rows, columns)))
    return 0


async def v_log(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("log.list", limit=args.limit)
    columns = [
        ("when", "when (utc)"),
        ("level", "level"),
        ("message", "message"),
        ("source", "source"),
    ]
    return _show(rows, args, columns, schema.log_entry)


async def v_inventory(c: AdminClient, args: argparse.Namespace) -> int:
    rows = await c.call("inventory.show", computer=args.computer, history=args.history)
    if not rows:
        schema.print_error(
            args.json,
            "no_inventory",
            f"no inventory for {args.computer}: run a send-basic-inventory task on it",
        )
        return 1
    rows = schema.records(rows)
    _json(rows if args.history else rows[0])
    return 0


def add_trust_verbs(verb: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """Register the trust verbs on the CLI."""
    v = verb(
        "keys",
        v_keys,
        "list agent and TS keys; `keys accept NAME|--all`, `keys reject|delete NAME`",
    )
    v.add_argument(
        "action",
        nargs="?",
        choices=["accept", "reject", "delete"],
        help="accept, reject or delete keys (none: list the keys)",
    )
    v.add_argument("names", nargs="*", metavar="NAME", help="the computers or task servers")
    v.add_argument("--all", action="store_true", help="with accept: every pending key")
    v = verb(
        "tokens",
        v_tokens,
        "enrolment tokens: `tokens create [--for agent|taskserver|child] --ttl 1h --uses 100`,"
        " `tokens revoke ID`, `tokens`",
    )
    v.add_argument(
        "action",
        nargs="?",
        choices=["create", "revoke"],
        help="create a token or revoke some (none: list the tokens)",
    )
    v.add_argument("ids", nargs="*", type=int, metavar="ID", help="with revoke: the token's id")
    v.add_argument("--ttl", type=duration_s, default=3600, help="lifetime: 90, 30m, 1h, 7d")
    v.add_argument(
        "--uses", type=int, default=1, help="with create: how many enrolments it allows (default 1)"
    )
    v.add_argument(
        "--for",
        dest="role",
        choices=["agent", "taskserver", "child"],
        default="agent",
        help="who the token enrols: agents (the default), task servers, or child NS"
        " (`taskfleet server --parent`); one role only",
    )
    v = verb(
        "admins",
        v_admins,
        "admin tokens: `admins add NAME --role R`, `admins list`, `admins revoke NAME`",
    )
    v.add_argument(
        "action",
        nargs="?",
        choices=["add", "list", "revoke"],
        help="add an admin (prints its token once), list them, or revoke one (none: list)",
    )
    v.add_argument("name", nargs="?", help="with add, revoke: the admin's name")
    v.add_argument(
        "--role",
        choices=["viewer", "operator", "admin"],
        default="viewer",
        help="with add: what the admin may do (docs/security.md; default viewer)",
    )
    v = verb("audit", v_audit, "what admins did: who, what, when")
    v.add_argument("--limit", type=int, default=100, help="the newest N entries (default 100)")
    v = verb(
        "messages", v_messages, "messages and alerts raised by the server; --watch follows them"
    )
    v.add_argument("--limit", type=int, default=100, help="the newest N messages (default 100)")
    v.add_argument("--watch", action="store_true", help="print new messages as they are raised")
    v = verb("inventory", v_inventory, "a computer's basic inventory (--history: every one kept)")
    v.add_argument("computer", help="the computer's name")
    v.add_argument("--history", action="store_true", help="every inventory kept, newest first")
    v = verb(
        "groups",
        v_groups,
        "organizational groups; `groups add NAME [--parent P] [--replicate]`,"
        " `groups add-member|remove-member GROUP NAME...`, `groups show|delete GROUP`",
    )
    v.add_argument(
        "action",
        nargs="?",
        choices=["add", "add-member", "remove-member", "show", "delete"],
        help="what to do with GROUP (none: list the groups)",
    )
    v.add_argument("name", nargs="?", metavar="GROUP", help="the group")
    v.add_argument(
        "computers", nargs="*", metavar="NAME", help="with add-member, remove-member: computers"
    )
    v.add_argument("--parent", help="with add: the group to nest the new one in")
    v.add_argument(
        "--replicate",
        action="store_true",
        help="with add: a parent NS sends the group (not its members) to its child NS",
    )
    v = verb(
        "filter", v_filter, "`filter add FILE`: save a filter (name, query over computer.<field>)"
    )
    v.add_argument("action", choices=["add"], help="add: save the filter document FILE")
    v.add_argument("file", help="a filter document (TOML or JSON)")
    v = verb(
        "filters",
        v_filters,
        "list filters with their cached membership; `filters show|delete NAME`",
    )
    v.add_argument(
        "action",
        nargs="?",
        choices=["show", "delete"],
        help="show a filter's members or delete it (none: list the filters)",
    )
    v.add_argument("name", nargs="?", help="with show, delete: the filter")
    v = verb("report", v_report, "`report add FILE`: save a report (name, query: read-only SQL)")
    v.add_argument("action", choices=["add"], help="add: save the report document FILE")
    v.add_argument("file", help="a report document (TOML or JSON)")
    verb("reports", v_reports, "list reports")
    v = verb("items", v_items, "tasks, jobs, reports and filters, by folder")
    v.add_argument("--folder", help="only the items of this folder")
    verb("folders", v_folders, "folders and how many items each holds")
    v = verb(
        "policy",
        v_policy,
        "`policy add FILE`: a client task, a schedule, targets; `policy enable|disable|delete NAME`",
    )
    v.add_argument(
        "action",
        choices=["add", "enable", "disable", "delete"],
        help="add a policy document, or enable, disable or delete a policy",
    )
    v.add_argument("file", metavar="FILE|NAME", help="add: the policy document; else its name")
    verb("policies", v_policies, "list policies")
    v = verb("log", v_log, "the server log (write-server-log entries)")
    v.add_argument("--limit", type=int, default=100, help="the newest N entries (default 100)")
