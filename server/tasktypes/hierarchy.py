"""replicate-hierarchy: a full reconciliation of every child NS now, recursively
(``ns.hierarchy.reconcile``, docs/hierarchy.md), reported one line per child, each tier below
indented under its parent: whether it is linked, the items sent, what it changed, its clashes
and its lag. A child not linked now is listed as such (its items wait for it: it is reconciled
when its link comes back); with no children it succeeds and says so."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from protocol.states import InstanceState
from runtime.runner import Outcome

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def run(ctx: ServerContext) -> Outcome:
    started = time.time()
    reports = await ctx.ns.hierarchy.reconcile()
    if not reports:
        text = "no children linked: nothing to replicate\n"
        return Outcome(InstanceState.SUCCEEDED, 0, text, "", started, time.time())
    text = "\n".join(report_lines(reports)) + "\n"
    return Outcome(InstanceState.SUCCEEDED, 0, text, "", started, time.time())


def report_lines(reports: list[dict[str, Any]], depth: int = 0) -> list[str]:
    """One line per child REPORT, then its own children's, indented two spaces per tier."""
    lines: list[str] = []
    for r in reports:
        clashes = r.get("clashes") or []
        named = ", ".join(f"{c.get('kind')} {c.get('name')}" for c in clashes[:5])
        more = f" (+{len(clashes) - 5} more)" if len(clashes) > 5 else ""
        lines.append(
            f"{'  ' * depth}{r.get('child')}: "
            + ("connected" if r.get("connected") else "not connected (reconciled when it links)")
            + f", sent {r.get('sent', 0)} items, changed {r.get('changed', 0)},"
            + f" clashes {len(clashes)}"
            + (f" ({named}{more})" if clashes else "")
            + f", lag {float(r.get('lag_s') or 0):.1f}s"
        )
        lines += report_lines(list(r.get("below") or []), depth + 1)
    return lines
