"""``taskfleet stats``: what the NS knows about itself, for an operator at a terminal.

Connections by role, runs in flight, the database's size on disk (file and write-ahead log), each
task server's link with its last keepalive round trip, the handshake gates and refusal counters.
The same state a Prometheus scrape reads (``server.metrics``), without one; ``--json`` prints the
``stats`` admin op's answer as it is.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from admin.client import AdminClient
from admin.common import EXIT_OK, _print_json
from admin.output import table


def human_bytes(n: int) -> str:
    """1536 → '1.5 KiB': sizes an operator reads at a glance."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def role_line(role: dict[str, Any]) -> str:
    """'active (standby: NAME, seen 0.4 s ago)': which NS of a pair answers, and whether the
    other one waits to take over (a standby answers no admin, so only the active one says)."""
    state = "active" if role.get("active") else "standing down"
    if not role.get("pair"):
        return f"{state} (SQLite: no standby)"
    standby = role.get("standby")
    if standby is None:
        return f"{state} (standby: none seen)"
    seen = f"seen {role.get('standby_seen_s', 0):.1f} s ago"
    if not role.get("standby_up"):
        seen += ": gone, no NS would take over"
    return f"{state} (standby: {standby}, {seen})"


def render(stats: dict[str, Any]) -> str:
    """The ``stats`` answer as a few labelled lines and a table of task servers."""
    conns = stats.get("connections", {})
    size = stats.get("database_bytes", {})
    lines = [
        f"uptime:          {stats.get('uptime_s', 0):.0f} s",
        "connections:     "
        + ", ".join(
            f"{label} {conns.get(role, 0)}"
            for role, label in (
                ("agent", "agents"),
                ("taskserver", "task servers"),
                ("admin", "admins"),
            )
        ),
        f"runs in flight:  {stats.get('runs_in_flight', 0)}"
        f" ({stats.get('instances_open', 0)} instances open)",
        f"database:        {human_bytes(size.get('db', 0))}"
        + (
            f" + {human_bytes(size['wal'])} write-ahead log"
            if "wal" in size
            else " (PostgreSQL: pg_database_size)"
        ),
    ]
    if "ns_role" in stats:
        lines.insert(0, f"role:            {role_line(stats['ns_role'])}")
    gate = stats.get("handshake_gate") or {}
    if gate:
        lines.append(
            f"handshakes:      {gate.get('handshakes', 0)} in progress,"
            f" {gate.get('waiting', 0)} waiting, {gate.get('refused', 0)} refused,"
            f" {gate.get('capped', 0)} capped since start"
        )
    refused = stats.get("refused") or {}
    if refused:
        lines.append(
            "refused:         " + ", ".join(f"{code} {n}" for code, n in sorted(refused.items()))
        )
    links = stats.get("taskservers") or {}
    if links:
        rows = [
            {
                "name": name,
                "rtt": f"{link['rtt_s'] * 1000:.1f} ms" if link.get("rtt_s") else "-",
                "open": "yes" if link.get("open") else "closing",
                "peer": link.get("peer", ""),
            }
            for name, link in sorted(links.items())
        ]
        lines += [
            "",
            "task servers (lag: the last keepalive ping's round trip):",
            table(rows, [("name", "name"), ("rtt", "lag"), ("open", "open"), ("peer", "peer")]),
        ]
    else:
        lines.append("task servers:    none connected")
    return "\n".join(lines)


async def v_stats(c: AdminClient, args: argparse.Namespace) -> int:
    stats = await c.call("stats")
    if args.json:
        _print_json(stats)
    else:
        print(render(stats))
    return EXIT_OK


def add_stats_verbs(verb: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """Register ``stats`` on the CLI (a viewer's token is enough)."""
    verb(
        "stats",
        v_stats,
        "what the NS knows about itself: connections, runs in flight, database size, TS links",
    )
