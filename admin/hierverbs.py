"""The hierarchy on the command line (docs/hierarchy.md): the server's flags that link it to a
parent NS (``--parent``, ``--parent-fingerprint``, ``--parent-ca``, with the enrolment token
given as a task server's is), their checks, and the ``children`` verb (``children``,
``children show NAME``)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from admin import schema
from admin.client import AdminClient
from admin.common import EXIT_OK, EXIT_USAGE, _print_json
from admin.output import ago, table
from runtime.tls import ClientTrust


def add_parent_flags(s: argparse.ArgumentParser) -> None:
    """``taskfleet server``'s flags for a child NS (in a configuration file: ``[hierarchy]``)."""
    s.add_argument(
        "--parent",
        metavar="URL",
        help="link this NS to a parent NS as its child (wss://HOST:PORT, the parent's main"
        " address; URL1,URL2 for a pair): it receives the parent's replicated items and sends summaries up; enrol"
        " with a token from `taskfleet tokens create --for child` on the parent"
        " (--enrol-token-file). In a configuration file: parent in [hierarchy]",
    )
    s.add_argument(
        "--parent-fingerprint",
        metavar="SHA256:...",
        help="the parent's TLS certificate fingerprint (what its `taskfleet server` printed at"
        " its start): the child pins it",
    )
    s.add_argument(
        "--parent-ca",
        metavar="FILE",
        help="trust the parent's certificate through this CA file instead of a pin",
    )


def parent_settings(args: argparse.Namespace) -> dict[str, Any] | str:
    """The NotificationServer arguments for ``--parent`` (none without it), or what is wrong
    with the flags given, naming the fix (a usage error)."""
    url = getattr(args, "parent", None)
    fp, ca = getattr(args, "parent_fingerprint", None), getattr(args, "parent_ca", None)
    token_given = bool(getattr(args, "enrol_token_file", None)) or _flagged(args, "enrol_token")
    if not url:
        for given, flag in ((fp, "--parent-fingerprint"), (ca, "--parent-ca")):
            if given:
                return f"{flag} is for a child NS: give --parent URL (the parent's address) too"
        if token_given:
            return (
                "an enrolment token is for a child NS linking to its parent: give --parent URL"
                " too, or leave the token out"
            )
        return {}
    problem = _parent_url_problem(url, fp, ca, bool(args.insecure))
    if problem is not None:
        return problem
    if ca and not os.path.isfile(ca):
        return f"--parent-ca {ca}: no such file; give the parent's CA file (its DATA/tls/ca.pem)"
    return {
        "parent": url,
        "parent_trust": ClientTrust(ca_file=ca, fingerprint=fp, insecure=bool(args.insecure)),
        "enrol_token": getattr(args, "enrol_token", None) or "",
    }


def _parent_url_problem(url: str, fp: str | None, ca: str | None, insecure: bool) -> str | None:

    from runtime.servers import split_urls

    urls = split_urls(url)  # a parent that is an active/standby pair: URL1,URL2
    if not urls:
        return "--parent needs the parent's address (wss://HOST:PORT, or URL1,URL2 for a pair)"
    for one in urls:
        if (problem := _one_parent_url_problem(one, fp, ca, insecure)) is not None:
            return problem
    return None


def _one_parent_url_problem(url: str, fp: str | None, ca: str | None, insecure: bool) -> str | None:
    from admin.client import url_problem

    if (problem := url_problem(url)) is not None:
        return f"--parent {problem}"
    if url.startswith("wss://") and not (fp or ca):
        return (
            f"no way to trust the parent NS at {url}: pass --parent-fingerprint SHA256:..., the"
            " fingerprint the parent's `taskfleet server` printed at its start, or --parent-ca"
            " FILE (its DATA/tls/ca.pem)"
        )
    if url.startswith("ws://") and not insecure:
        return f"--parent {url} is plain ws://: use wss://{url[5:]} (--insecure allows ws:// for tests)"
    return None


def _flagged(args: argparse.Namespace, dest: str) -> bool:
    """Whether ``dest`` was given on the command line or in the file (not by the environment:
    a TASKFLEET_ENROL_TOKEN meant for another role on the machine is not an error here)."""
    view = getattr(args, "config_view", None)
    for name, value, source in getattr(view, "entries", []):
        if name == dest:
            return bool(value) and source in ("flag", "file")
    return False


# -- the children verb -----------------------------------------------------------------


async def v_children(c: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            schema.print_error(
                args.json, "usage", "children show needs the child's name (`taskfleet children`)"
            )
            return EXIT_USAGE
        row = await c.call("children.show", name=args.name)
        if args.json:
            _print_json(schema.child_detail(row))
        else:
            print(_show(row))
        return EXIT_OK
    if args.name:
        schema.print_error(
            args.json, "usage", f"did you mean `taskfleet children show {args.name}`?"
        )
        return EXIT_USAGE
    rows = await c.call("children.list")
    if args.json:
        _print_json([schema.child(r) for r in rows])
        return EXIT_OK
    if not rows:
        print("no children linked (a child NS links with `taskfleet server --parent URL`)")
        return EXIT_OK
    print(table([_line(r) for r in rows], COLUMNS))
    return EXIT_OK


COLUMNS = [
    ("name", "NAME"),
    ("connected", "CONNECTED"),
    ("acked", "ACKED"),
    ("lag", "LAG"),
    ("clashes", "CLASHES"),
    ("computers", "ONLINE/TOTAL"),
]


def _line(r: dict[str, Any]) -> dict[str, Any]:
    online, total = r.get("online"), r.get("total")
    return {
        "name": r["name"],
        "connected": "yes" if r["connected"] else f"no ({ago(r.get('last_seen'), time.time())})",
        "acked": r.get("acked_seq", 0),
        "lag": f"{float(r.get('lag_s') or 0):.1f}s",
        "clashes": len(r.get("clashes") or []),
        "computers": "-" if total is None else f"{online}/{total}",
    }


def _show(r: dict[str, Any]) -> str:
    now = time.time()
    lines = [
        f"child:      {r['name']}",
        f"id:         {r.get('ns_id', '')}",
        f"connected:  {'yes' if r['connected'] else 'no'}"
        f" (linked {ago(r.get('linked_at'), now)}, last seen {ago(r.get('last_seen'), now)})",
        f"acked:      change {r.get('acked_seq', 0)} (lag {float(r.get('lag_s') or 0):.1f}s)",
    ]
    below = r.get("below") or []
    if below:
        lines.append(f"below:      {', '.join(below)}")
    clashes = r.get("clashes") or []
    lines.append(f"clashes:    {len(clashes) or 'none'}")
    lines += [
        f"  {c.get('kind')} {c.get('name')}: the child's own item keeps the name; rename one"
        for c in clashes
    ]
    summary = r.get("summary")
    if not summary:
        lines.append("summary:    none yet")
        return "\n".join(lines)
    comp = summary.get("computers") or {}
    by_os = ", ".join(f"{k} {v}" for k, v in sorted((comp.get("by_os") or {}).items()))
    lines.append(
        f"summary:    {ago(summary.get('at'), now)}: computers {comp.get('online', 0)} online"
        f" of {comp.get('total', 0)}" + (f" ({by_os})" if by_os else "")
    )
    runs = summary.get("runs") or []
    lines.append(
        f"runs:       {len(runs)} of this NS's items (`taskfleet runs --child {r['name']}`)"
    )
    for b in summary.get("below") or []:
        state = "connected" if b.get("connected") else "not connected"
        lines.append(f"  below: {b.get('name')} ({state}, lag {float(b.get('lag_s') or 0):.1f}s)")
    return "\n".join(lines)


def add_children_verb(verb: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """Register ``children`` on the CLI."""
    v = verb(
        "children",
        v_children,
        "child NS linked to this one: `children` (lag, clashes, computers), `children show NAME`",
    )
    v.add_argument(
        "action", nargs="?", choices=["show"], help="show one child (none: list the children)"
    )
    v.add_argument("name", nargs="?", help="with show: the child NS's name")
