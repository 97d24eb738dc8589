"""An administrator's reads are answered from what was committed, without waiting for a write
in progress: during a reconnect storm the NS's writer is busy with registrations, and a
viewer's listing must still answer at once (issue 22: an admin served in under a second while
agents reconnect). Writes, and the NS's own reads, still take their turn."""

from __future__ import annotations

import asyncio

from admin.client import AdminClient
from tests.helpers import INSECURE


async def test_a_viewers_listing_answers_while_a_write_transaction_is_open(ns):
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        await c.call("whoami")  # connected and signed in before the writer is taken
        inside, release = asyncio.Event(), asyncio.Event()

        async def long_write() -> None:
            async with ns.db.db.transaction():
                await ns.db.raise_message("info", "written in a long transaction", "test")
                inside.set()
                await release.wait()

        held = asyncio.create_task(long_write())
        try:
            await asyncio.wait_for(inside.wait(), 10)
            listed = await asyncio.wait_for(c.call("computers.list"), 10)
            messages = await asyncio.wait_for(c.call("messages.list"), 10)
            assert listed == []
            assert "written in a long transaction" not in [m["text"] for m in messages]
            # An operator's write waits for the transaction instead.
            start = asyncio.create_task(c.call("task.add", text=_TASK, filename="t.toml"))
            await asyncio.sleep(0.3)
            assert not start.done()
        finally:
            release.set()
            await held
        await asyncio.wait_for(start, 10)
        texts = [m["text"] for m in await c.call("messages.list")]
        assert "written in a long transaction" in texts


_TASK = 'name = "t"\ntype = "run-script"\n[params]\nscript = "true"\n'
