"""Admin requests: one function per ``op``, all reached through :func:`handle`.

Every error a user can meet is an :class:`ApiError` whose message says what to do. The operations
live in ``server.adminops``, one module per concern (``fleet``, ``catalog``, ``runs``, ``trust``);
importing them here registers every one in the table ``handle`` dispatches through.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from typing import Any

from runtime.link import Link
from server.adminops import catalog, fleet, hierarchy, hierup, runs, schedules, trust
from server.adminops.base import _OPS, ApiError
from server.auth import OP_ROLE
from server.interface import NS
from server.store.dbapi import StorageFull, committed_reads

__all__ = ["ApiError", "handle"]

OP_MODULES = (fleet, catalog, runs, trust, schedules, hierarchy, hierup)
"""The modules whose import registers the admin operations."""


async def handle(ns: NS, link: Link, name: str, args: dict[str, Any], who: str = "") -> Any:
    """Run one admin operation for the admin ``who`` (their role was checked by the caller).

    A full disk refuses what would write (``disk_full``) and keeps serving reads.
    """
    link.who = who
    fn = _OPS.get(name)
    if fn is None:
        raise ApiError(
            "unknown_op", f"unknown operation {name!r}; known: {', '.join(sorted(_OPS))}"
        )
    if name == "run.start" and not args.get("check"):
        free = shutil.disk_usage(ns.data_dir).free
        if free < ns.min_free_bytes:
            raise ApiError(
                "disk_full",
                f"the server's disk is nearly full ({free // 1024} KiB free under {ns.data_dir}, "
                f"at least {ns.min_free_bytes // 1024} KiB needed): free some space; reads still work",
            )
    # A viewer's op only reads: answered from what was committed, never queued behind a write
    # burst (a reconnect storm's registrations); not the subscriptions, whose snapshot and
    # events must follow one order.
    reads = (
        committed_reads()
        if OP_ROLE.get(name) == "viewer" and not name.endswith(".watch")
        else contextlib.nullcontext()
    )
    try:
        with reads:
            return await fn(ns, link, args)
    except (sqlite3.OperationalError, StorageFull) as exc:
        if not isinstance(exc, StorageFull) and "full" not in str(exc):
            raise
        with contextlib.suppress(Exception):
            await ns.db.db.rollback()
        raise ApiError(
            "disk_full",
            f"the server's disk is full ({exc}): free space under {ns.data_dir}; nothing stored was lost",
        ) from None
