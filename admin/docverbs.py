"""Verbs on saved tasks and jobs beyond ``add``: ``show`` (TOML by default, ``--json``; an
earlier version with ``--version N``), ``history`` and ``delete``."""

from __future__ import annotations

import argparse
import json

from admin import schema
from admin.client import AdminClient
from admin.output import iso, short_time, table
from admin.tomlout import TomlError, dumps

EXIT_OK, EXIT_USAGE = 0, 2


async def definition_verb(c: AdminClient, args: argparse.Namespace, kind: str) -> int:
    """``taskfleet task|job show|history|delete NAME``."""
    name = args.file
    if args.action == "show":
        return await _show(c, args, kind, name)
    if args.action == "history":
        rows = await c.call(f"{kind}.history", name=name)
        if args.json:
            print(json.dumps(schema.records(rows), indent=2, sort_keys=True))
            return EXIT_OK
        for r in rows:
            r["saved"] = short_time(r["saved_at"])
            r["by"] = r["saved_by"] or "-"
            r["now"] = "*" if r["current"] else ""
        print(
            table(
                rows,
                [
                    ("version", "version"),
                    ("now", "current"),
                    ("saved", "saved (utc)"),
                    ("by", "by"),
                    ("summary", "what changed"),
                ],
            )
        )
        return EXIT_OK
    result = await c.call(f"{kind}.delete", name=name)
    if args.json:
        print(json.dumps(schema.record(result), indent=2, sort_keys=True))
    else:
        print(f"deleted {kind} {result['deleted']} (its versions are kept: `{kind} history`)")
    return EXIT_OK


async def _show(c: AdminClient, args: argparse.Namespace, kind: str, name: str) -> int:
    shown = await c.call(f"{kind}.show", name=name, version=args.doc_version)
    document = shown["document"]
    if args.json and not args.toml:
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return EXIT_OK
    try:
        text = dumps(document)
    except TomlError as exc:
        schema.print_error(
            args.json, "usage", f"this {kind} cannot be written as TOML ({exc}): use --json"
        )
        return EXIT_USAGE
    by = f" by {shown['saved_by']}" if shown["saved_by"] else ""
    print(f"# {kind} {name}, version {shown['version']}, saved {iso(shown['saved_at'])}{by}")
    print(text, end="")
    return EXIT_OK
