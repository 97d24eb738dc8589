"""``taskfleet migrate --from DATA/server.db --to postgresql://...``: move an NS's state from
its SQLite file to PostgreSQL (then start the NS with ``--database``; docs/operations.md).

A local command on the NS's machine, like ``taskfleet server``: it reads the file and writes
the database itself, with no NS and no admin token involved (whoever may read the data folder
and write the database may move it). The copy itself is ``server.store.copy``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.parse
from typing import Any

from admin.common import EXIT_DATA, EXIT_FAILED, EXIT_OK, EXIT_USAGE, _print_json
from admin.config import DATABASE_ENV


def add_migrate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser(
        "migrate",
        help="copy an NS's state from its SQLite file to PostgreSQL (stop the NS first)",
        description="Copy every table of an NS's SQLite file into an empty PostgreSQL database,"
        " checked by counting each table's rows on both sides; then start the NS with"
        " --database URL. Stop the NS first: what it writes after the copy began is not copied.",
    )
    m.add_argument(
        "--from", dest="source", required=True, metavar="FILE", help="the NS's DATA/server.db"
    )
    m.add_argument(
        "--to",
        dest="target",
        default=os.environ.get(DATABASE_ENV),
        metavar="URL",
        help=f"postgresql://USER@HOST:PORT/DATABASE (default {DATABASE_ENV}); its password from"
        f" ~/.pgpass or PGPASSWORD (or the whole URL in {DATABASE_ENV}), never on the command line",
    )
    m.add_argument(
        "--force",
        action="store_true",
        help="the database already holds taskfleet rows: delete them and copy anew",
    )
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(func=cmd_migrate)


def _problem(target: str | None) -> str | None:
    if not target:
        return f"give --to postgresql://USER@HOST:PORT/DATABASE (or set {DATABASE_ENV})"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme not in ("postgresql", "postgres"):
        return f"--to takes a PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE), not {target!r}"
    if parts.password is not None and os.environ.get(DATABASE_ENV) != target:
        return (
            "the --to URL holds a password, which the command line would show: give it in"
            f" ~/.pgpass or PGPASSWORD, or the whole URL in {DATABASE_ENV}"
        )
    return None


def cmd_migrate(args: argparse.Namespace) -> int:
    from runtime.db import DatabaseUnusable
    from server.store.copy import CopyRefused, copy_to_postgres

    if problem := _problem(args.target):
        print(f"taskfleet migrate: {problem}", file=sys.stderr)
        return EXIT_USAGE

    def progress(table: str, rows: int) -> None:
        if not args.json:
            print(f"{table:<22} {rows:>10} rows", flush=True)

    try:
        counts = asyncio.run(
            copy_to_postgres(args.source, args.target, replace=args.force, progress=progress)
        )
    except CopyRefused as exc:
        print(f"taskfleet migrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DatabaseUnusable as exc:
        print(f"taskfleet migrate: {exc}", file=sys.stderr)
        return EXIT_DATA
    summary: dict[str, Any] = {"tables": counts, "rows": sum(counts.values())}
    if args.json:
        _print_json(summary)
    else:
        print(
            f"copied {summary['rows']} rows in {len(counts)} tables; the counts match."
            " Start the NS with --database (the same URL)."
        )
    return EXIT_OK
