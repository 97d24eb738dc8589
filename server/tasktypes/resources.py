"""file-resource-cleanup: clear old or unreferenced files in the NS's resource folder.

A file is *referenced* when an item (a task, job, policy, report or filter) names it: its path
relative to the folder (``pkg/setup.sh``) appears in one of the item's texts as whole path
components. ``up.sh`` is not named by ``pkg/setup.sh`` (``setup.sh`` is one component), nor
``setup.sh`` by ``setup.sh.bak``; ``pkg/setup.sh`` is named by ``resources/pkg/setup.sh`` and by
``sh pkg/setup.sh --quiet``. The text does not say where a path starts, so a top-level
``setup.sh`` counts as named by ``pkg/setup.sh`` too: when unsure, the file is kept.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from runtime.runner import Outcome
from server.tasktypes.result import done

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext

_NAME_CHAR = r"[\w.+~@-]"
"""Characters that continue a file name: a match next to one is part of a longer name."""
_NAME_GOES_ON = r"[\w+~@-]|\.\w"
"""After a match, what makes it part of a longer name (``setup.sh.bak``, ``setup.sh-old``); a
full stop that ends a sentence (``run setup.sh.``) does not."""
_SEPARATOR = r"[/\\]"


def texts(value: Any) -> Iterator[str]:
    """Every string in a saved item (its keys and values, at any depth)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from texts(item)


def naming(relative: str) -> re.Pattern[str]:
    """A pattern that finds ``relative`` (a path under the resource folder) as whole path
    components: not inside a longer name on either side; ``/`` or ``\\`` between components."""
    path = _SEPARATOR.join(re.escape(p) for p in re.split(_SEPARATOR, relative))
    return re.compile(f"(?<!{_NAME_CHAR}){path}(?!{_NAME_GOES_ON})")


async def _item_texts(ctx: ServerContext) -> list[str]:
    """The texts of every item that may name a resource file."""
    db = ctx.ns.db
    items = [
        *await db.tasks(),
        *await db.jobs(),
        *await db.policies(),
        *await db.reports(),
        *await db.filters(),
    ]
    return list(texts(items))


async def file_resource_cleanup(ctx: ServerContext) -> Outcome:
    started = time.time()
    root = os.path.join(ctx.ns.data_dir, "resources")
    cutoff = time.time() - int(ctx.params.get("older_than_days", 30)) * 86400
    unreferenced = bool(ctx.params.get("unreferenced", True))
    named = await _item_texts(ctx) if unreferenced else []
    deleted, freed = [], 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            info = os.stat(path)
            old = info.st_mtime < cutoff
            pattern = naming(relative)
            unused = unreferenced and not any(pattern.search(t) for t in named)
            if old or unused:
                os.remove(path)
                deleted.append(relative)
                freed += info.st_size
    return done(started, {"files": sorted(deleted), "bytes_freed": freed})
