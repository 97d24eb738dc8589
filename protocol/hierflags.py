"""The hierarchy's two flags on a task, job, policy or filter document.

``replicate = true``: a parent NS sends the item to every child NS, where it is read-only.
``remote_start = true`` (tasks and jobs only, and only with ``replicate``): the parent may
start the item on a child's computers through that child. Both are top-level booleans; an item
saved without them (or with them false) stays on its own NS. The stored form carries a flag
only when it is true, so documents saved before the hierarchy existed are unchanged by it.
"""

from __future__ import annotations

from typing import Any

from protocol.errors import Problem

REPLICATE = "replicate"
REMOTE_START = "remote_start"


def flag_keys(startable: bool) -> tuple[str, ...]:
    """The flag keys a document of this kind may hold (for its list of known fields)."""
    return (REMOTE_START, REPLICATE) if startable else (REPLICATE,)


def check_flags(
    doc: dict[str, Any], problems: list[Problem], *, startable: bool
) -> dict[str, bool]:
    """The document's flags that are true, to merge into its stored form; each mistake goes
    to ``problems`` naming the key. ``startable``: a task or job (``remote_start`` allowed)."""
    out: dict[str, bool] = {}
    for key in (REPLICATE, REMOTE_START):
        if key not in doc:
            continue
        value = doc[key]
        if key == REMOTE_START and not startable:
            problems.append(
                Problem(key, "only a task or a job can be started from the parent NS; remove it")
            )
        elif not isinstance(value, bool):
            problems.append(Problem(key, "must be true or false"))
        elif value:
            out[key] = True
    if out.get(REMOTE_START) and not out.get(REPLICATE):
        problems.append(
            Problem(
                REMOTE_START,
                "needs replicate = true: only an item the parent NS replicates can be started"
                " from it",
            )
        )
    return out
