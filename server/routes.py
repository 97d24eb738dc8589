"""The relays the NS dispatches to: a connected Task Server, or its own built-in task service.

``BUILTIN`` is the built-in service's route name; every instance of a computer with no TS (or
whose TS is away) goes there. Each ``Route`` call returns once the relay took the message.
"""

from __future__ import annotations

from typing import Protocol

from protocol.messages import Cancel, Dispatch, Tickle
from runtime.link import Link
from taskserver.relay import Relay

BUILTIN = "@ns"
"""Route name of the NS's built-in task service."""


class Route(Protocol):
    """A relay the NS dispatches to: a connected TS, or the built-in task service."""

    async def dispatch(self, message: Dispatch) -> None: ...
    async def cancel(self, instance_ids: list[int]) -> None: ...
    async def tickle(self, computers: list[str]) -> None: ...


class RemoteRoute:
    """A Task Server over its link: each call returns when the TS acknowledged it."""

    def __init__(self, link: Link):
        self.link = link

    async def dispatch(self, message: Dispatch) -> None:
        await self.link.request(message, timeout_s=60)

    async def cancel(self, instance_ids: list[int]) -> None:
        await self.link.request(Cancel(id=self.link.next_id(), instance_ids=instance_ids))

    async def tickle(self, computers: list[str]) -> None:
        await self.link.send(Tickle(id=self.link.next_id(), computers=computers))


class BuiltinRoute:
    """The built-in task service, called in-process."""

    def __init__(self, relay: Relay):
        self.relay = relay

    async def dispatch(self, message: Dispatch) -> None:
        await self.relay.dispatch(message)

    async def cancel(self, instance_ids: list[int]) -> None:
        await self.relay.cancel(instance_ids)

    async def tickle(self, computers: list[str]) -> None:
        await self.relay.tickle(computers)
