"""file-resource-cleanup: clear old or unreferenced files in the NS's resource folder."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

from runtime.runner import Outcome
from server.tasktypes.result import done

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


async def file_resource_cleanup(ctx: ServerContext) -> Outcome:
    started = time.time()
    root = os.path.join(ctx.ns.data_dir, "resources")
    cutoff = time.time() - int(ctx.params.get("older_than_days", 30)) * 86400
    referenced = " ".join(
        json.dumps(i) for i in [*await ctx.ns.db.tasks(), *await ctx.ns.db.jobs()]
    )
    deleted, freed = [], 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            info = os.stat(path)
            old = info.st_mtime < cutoff
            unused = bool(ctx.params.get("unreferenced", True)) and relative not in referenced
            if old or unused:
                os.remove(path)
                deleted.append(relative)
                freed += info.st_size
    return done(started, {"files": sorted(deleted), "bytes_freed": freed})
