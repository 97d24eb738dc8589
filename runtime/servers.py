"""The NS addresses a client was given, and which one to try first.

A site may run two NS on one PostgreSQL database, one active and one standby
(``server.store.lease``); every client (agent, TS, admin) is then given both addresses
(``--server URL1,URL2``, or the same string in a configuration file) and follows the active
one. The standby does not accept connections at all until it takes over (its listener is bound
but not listening: a connection is refused at once), so moving on costs one refused connection.

:class:`ServerList` is the one place that choice is made: a connection attempt tries every
address once, starting with the last that worked, and moves to the next on a connection that
fails before the NS answered (refused, unreachable, closed, timed out). An answer of the NS
itself (a :class:`~protocol.errors.RemoteError`: a refusal of this client) ends the round at
once: it came from the active NS. The caller keeps its own backoff, which now counts whole
rounds: nothing waits between the addresses of one round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from websockets.exceptions import WebSocketException

from protocol.errors import ProtocolError, RemoteError

T = TypeVar("T")
P = ParamSpec("P")

UNREACHABLE = (OSError, TimeoutError, WebSocketException, ProtocolError)
"""A connection that failed before the NS answered: try the next address."""


def split_urls(value: str) -> tuple[str, ...]:
    """``URL1,URL2`` as its addresses (spaces around the commas allowed, empty ones dropped).
    Kept per text: ten thousand simulated agents of one process share one tuple."""
    found = _SPLIT.get(value)
    if found is None:
        if len(_SPLIT) > 64:
            _SPLIT.clear()
        found = _SPLIT[value] = tuple(p.strip() for p in value.split(",") if p.strip())
    return found


_SPLIT: dict[str, tuple[str, ...]] = {}


class ServerList:
    """The addresses of the NS (one, or the two of an active/standby pair); see the module."""

    __slots__ = ("_first", "current", "urls")  # one per agent: ten thousands in a simulation

    def __init__(self, urls: str | Sequence[str]):
        # Nothing usable: kept as given, for the connection to fail with its own message.
        self.urls = (split_urls(urls) if isinstance(urls, str) else tuple(urls)) or (str(urls),)
        self._first = 0
        self.current = self.urls[0]
        """The address of the last connection that worked (or the first one, before any)."""

    def __str__(self) -> str:
        return ",".join(self.urls)

    def order(self) -> list[str]:
        """Every address once, the last one that worked first."""
        return [*self.urls[self._first :], *self.urls[: self._first]]

    def worked(self, url: str) -> None:
        """Start the next round with ``url``."""
        self._first = self.urls.index(url)
        self.current = url

    async def connect(
        self,
        connect: Callable[Concatenate[str, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``connect(url, **kwargs)`` with each address in turn until one answers; the first
        error that is more than "nothing listens there" is raised when none did (a certificate
        that does not verify says more than a standby's refused port)."""
        failed: list[BaseException] = []
        for url in self.order():
            try:
                result = await connect(url, *args, **kwargs)
            except RemoteError:
                raise
            except UNREACHABLE as exc:
                failed.append(exc)
                continue
            self.worked(url)
            return result
        telling = [e for e in failed if not isinstance(e, ConnectionRefusedError)]
        raise (telling or failed)[0]
