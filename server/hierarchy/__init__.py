"""The NS's place in a hierarchy of NS (issue 24; the administrator's guide: docs/hierarchy.md).

A parent NS holds shared definitions; its children run their own fleets. Items marked
``replicate = true`` on a parent go down to every child (and on to theirs) within seconds,
read-only there; children send summaries up. :class:`Hierarchy` is the running NS's part of it
(``ns.hierarchy``), made of the parent's side (``parent.Children``: the children linked now,
their pushers, ``reconcile``) and the child's side (``child.ParentLink``: the link up). The ops
the two sides ask of each other are registered in ``ops``; this package imports every module
that registers some, so both tables are complete when the NS starts.
"""

from __future__ import annotations

import asyncio
import contextlib

from runtime.tls import ClientTrust
from server.hierarchy import up
from server.hierarchy.child import ParentLink
from server.hierarchy.parent import Children
from server.interface import NS


class Hierarchy(Children, ParentLink):
    """``ns.hierarchy``: this NS's children (as their parent) and its parent (as a child)."""

    def __init__(
        self,
        ns: NS,
        *,
        parent_url: str | None = None,
        trust: ClientTrust | None = None,
        enrol_token: str = "",
    ):
        self.ns = ns
        Children.__init__(self)
        ParentLink.__init__(self, parent_url, trust, enrol_token)
        self._loop_task: asyncio.Task[None] | None = None
        self._installed = False

    async def start(self) -> None:
        """Listen to the journal (pushes wake on it); link to the parent, if there is one."""
        if not self._installed:  # the summaries go up while the parent link is up
            up.install(self.ns)
            self._installed = True
        if self.parent_url:  # an NS no longer given --parent has nothing above it
            self.load_parent_state()
        listeners = self.ns.db.journal_listeners
        if self.journal_changed not in listeners:
            listeners.append(self.journal_changed)
        if self.parent_url and self._loop_task is None:
            self._loop_task = self.ns.spawn(self.parent_loop())

    def halt(self) -> None:
        """Stop at once (an NS standing down): no more pushes, no parent link."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        self.stop_children()

    async def stop(self) -> None:
        """Stop pushing, close the children's links and the parent's."""
        self.halt()
        for link in [c.link for c in self.links.values()]:
            with contextlib.suppress(Exception):
                await link.close(1001, "the parent NS stops")
        if self._loop_task is not None:
            with contextlib.suppress(BaseException):
                await self._loop_task
            self._loop_task = None
