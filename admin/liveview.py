"""`taskfleet watch ID --output`: a run's output as its scripts print it (docs/protocol.md, "Live
output"), then the usual final summary.

The NS sends ``output`` events (``run.watch`` with ``output: true``), each with pieces of what
scripts printed. As text, each complete line is printed with its computer (and job step) in
front, ``pc-1 | line``; a line still being printed waits for its end (or the end of its instance).
Control characters in them (colours, titles, a ``\\r`` inside a line) are shown escaped
(:func:`admin.output.printable`): the text is the agent's, the terminal the admin's.
With ``--json``, one JSON object per line (ndjson): one per piece, ``{"event": "output", ...}``
with the time in ISO 8601 UTC, and last the run, ``{"event": "run", "run": {...}}``.
"""

from __future__ import annotations

import json
from typing import Any

from admin.client import AdminClient
from admin.output import iso, printable
from admin.views import TERMINAL

Key = tuple[int, str]
"""A script's output: (instance id, job step or '')."""


def _prefix(item: dict[str, Any]) -> str:
    step = item.get("step") or ""
    computer = printable(str(item["computer"]))
    return f"{computer} [{printable(step)}] | " if step else f"{computer} | "


HELD_MAX = 4096
"""The most of an unfinished line held back per script; past it, the text is shown as it is."""


class Lines:
    """Whole lines out of pieces of output, per instance and step, each with its prefix."""

    def __init__(self) -> None:
        self._partial: dict[Key, tuple[str, str]] = {}
        """The unfinished last line of each script's output so far, with its prefix."""

    def take(self, item: dict[str, Any]) -> list[str]:
        """The lines a piece completes. Skipped output is shown as a line of its own."""
        key = (int(item["instance_id"]), str(item.get("step") or ""))
        prefix = _prefix(item)
        out: list[str] = []
        _, held = self._partial.pop(key, ("", ""))
        skipped = int(item.get("skipped") or 0)
        if skipped:
            if held:
                out.append(prefix + printable(held))
            held = ""
            out.append(f"{prefix}[... {skipped} bytes skipped ...]")
        *whole, rest = (held + str(item.get("text") or "")).split("\n")
        out.extend(prefix + printable(line.rstrip("\r")) for line in whole)
        if len(rest) > HELD_MAX:
            # A script that never ends a line (a progress bar, `yes | tr -d '\n'`): shown as it
            # comes, in pieces, rather than held for the whole run.
            out.append(prefix + printable(rest) + " …")
            rest = ""
        if rest:
            self._partial[key] = (prefix, rest)
        return out

    def end(self, instance_id: int) -> list[str]:
        """An instance ended: its unfinished lines are all it will print."""
        keys = [k for k in self._partial if k[0] == instance_id]
        return [self._line(k) for k in keys]

    def rest(self) -> list[str]:
        """Every unfinished line (the run ended)."""
        return [self._line(k) for k in list(self._partial)]

    def _line(self, key: Key) -> str:
        prefix, text = self._partial.pop(key)
        return prefix + printable(text.rstrip("\r"))


def _say(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


def output_json(run_id: int, item: dict[str, Any]) -> dict[str, Any]:
    """One piece of output as ``watch --output --json`` prints it (one line of ndjson)."""
    return {
        "event": "output",
        "run_id": run_id,
        "instance_id": item["instance_id"],
        "computer": item["computer"],
        "step": item.get("step") or "",
        "text": item.get("text") or "",
        "skipped": int(item.get("skipped") or 0),
        "at": iso(item.get("at")),
    }


def print_ndjson(data: dict[str, Any]) -> None:
    """One JSON object on one line (the final ``{"event": "run", ...}`` line too)."""
    print(json.dumps(data, sort_keys=True, default=str, separators=(",", ":")), flush=True)


async def follow_output(c: AdminClient, run_id: int, *, as_json: bool) -> dict[str, Any]:
    """Watch a run to its end printing its output live; return the final run."""
    lines = Lines()
    final: dict[str, Any] = {}
    async for kind, data in c.watch(run_id, output=True):
        if kind == "output":
            for item in data.get("items") or ():
                if as_json:
                    print_ndjson(output_json(run_id, item))
                else:
                    _say(lines.take(item))
        elif kind == "instance" and data.get("parent_id") is None and data["state"] in TERMINAL:
            _say(lines.end(int(data["instance_id"])))
        elif kind == "run":
            final = data
    _say(lines.rest())
    return final
