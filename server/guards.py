"""The NS's trust state held in memory: open admin sessions by name, and coalesced alerts.

- :class:`AdminSessions`: the admin connections open now, by admin name. Revoking an admin, or
  giving the name a new token (``admins add`` again, with another role or the same), ends that
  admin's open sessions at once: a session never outlives the token it presented. Kept in memory
  and changed only by those operations, so a request costs no database read to stay honest.
- :class:`Alerts`: at most one message per subject and per address per window, the rest counted
  and told in the next message, in bounded memory (500 made-up keys claiming one name raise one
  message, not 500).

Pure bookkeeping: the callers (``server.auth``, ``server.connections``) do the I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

from runtime.link import Link

V = TypeVar("V")

ALERT_WINDOW_S = 600.0
"""At most one message per subject (a role and name) and per address in this long."""
ALERTS_REMEMBERED = 4096
"""Subjects, addresses and keys remembered for coalescing; past this the oldest are forgotten."""


class AdminSessions:
    """Open admin connections by admin name (see the module docstring)."""

    def __init__(self) -> None:
        self._links: dict[str, set[Link]] = {}
        self._ends = 0
        self._ended_at: dict[str, int] = {}
        """When (counted in ends) each name's sessions were last ended: a session whose token
        was checked before an end and that opens after it is refused (the token may be void)."""

    def mark(self) -> int:
        """Take this before reading an admin's token from the database; pass it to ``open``."""
        return self._ends

    def open(self, name: str, link: Link, mark: int) -> bool:
        """Count ``link`` as a session of ``name``; False if the name's sessions were ended since
        ``mark`` was taken (the caller closes the link)."""
        if self._ended_at.get(name, 0) > mark:
            return False
        self._links.setdefault(name, set()).add(link)
        return True

    def close(self, name: str, link: Link) -> None:
        """The session ended (its connection closed)."""
        links = self._links.get(name)
        if links is not None:
            links.discard(link)
            if not links:
                del self._links[name]

    def is_open(self, name: str, link: Link) -> bool:
        """Whether ``link`` may still act for ``name`` (checked before each request: a dict and a
        set lookup)."""
        links = self._links.get(name)
        return links is not None and link in links

    def end(self, name: str) -> list[Link]:
        """End every open session of ``name`` now; return their links for the caller to close."""
        self._ends += 1
        self._ended_at[name] = self._ends
        return list(self._links.pop(name, ()))

    def count(self, name: str) -> int:
        return len(self._links.get(name, ()))


class Alerts:
    """Coalesced alerts: one message per subject and per address per window, the rest counted.

    ``note`` is called for every event worth a message (a key that does not match its name's, a
    token presented for the wrong role); a subject's first part names the kind of event, and
    addresses are counted per kind. An event already noted for the same ``key`` (the same
    machine knocking again) is never counted twice. Otherwise the first event for a subject, or
    from an address, in a window is raised with the count of those held back since the last
    message for it; the others are only counted. All three maps are bounded (oldest dropped).
    """

    def __init__(self, window_s: float = ALERT_WINDOW_S, remembered: int = ALERTS_REMEMBERED):
        self.window_s = window_s
        self.remembered = remembered
        self._keys: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._last: OrderedDict[tuple[str, ...], list[float]] = OrderedDict()
        """subject or address → [when its last message was raised, events held back since]."""
        self.held_back = 0
        """Events held back in all, since the start."""

    def note(
        self, subject: tuple[str, ...], address: str, key: tuple[str, ...], now: float
    ) -> int | None:
        """An event about ``subject`` from ``address`` (``key``: what makes it the same event
        again). None: stay quiet; else raise a message now, saying this many were held back."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return None
        _remember(self._keys, key, None, self.remembered)
        places = [("subject", *subject), ("address", subject[0], address)]
        for place in places:
            last = self._last.get(place)
            if last is not None and now - last[0] < self.window_s:
                last[1] += 1  # counted once, where it was held back
                self.held_back += 1
                return None
        held = 0
        for place in places:
            last = self._last.pop(place, None)
            if last is not None:
                held += int(last[1])
            _remember(self._last, place, [now, 0.0], self.remembered)
        return held


def _remember(
    table: OrderedDict[tuple[str, ...], V], key: tuple[str, ...], value: V, at_most: int
) -> None:
    """Put ``key`` last (newest) in ``table``; drop the oldest past ``at_most``."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > at_most:
        table.popitem(last=False)
