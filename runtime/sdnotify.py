"""systemd's notify protocol, without a dependency: a role run by a ``Type=notify`` unit says
when it is ready (``READY=1``), when it stops (``STOPPING=1``) and that its event loop still
turns (``WATCHDOG=1``).

The protocol is one datagram per message, ``KEY=VALUE`` lines, sent to the AF_UNIX socket named
by ``NOTIFY_SOCKET`` (a path, or an abstract socket written ``@name``). When the unit sets
``WatchdogSec=``, systemd passes ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process meant);
the pings are sent every half of that **from the event loop**, so a loop stalled by blocking
code misses them and systemd restarts the process: that is what the watchdog is for. Without
``NOTIFY_SOCKET`` every call does nothing, so the roles call it unconditionally.

The variables are taken out of ``os.environ`` once read (as ``sd_notify``'s
``unset_environment`` does): scripts the agent starts must not speak for the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import MutableMapping

NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """The notify socket of this process, if systemd gave one (else every method is a no-op)."""

    def __init__(self, address: str | None, watchdog_s: float | None):
        self.address = address
        """The socket address as ``sendto`` takes it (an abstract one starts with a NUL byte)."""
        self.watchdog_s = watchdog_s
        """The watchdog period systemd enforces (pings go at half of it), or None."""
        self._sock: socket.socket | None = None
        self._pinger: asyncio.Task[None] | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read (and remove) ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        env = os.environ if environ is None else environ
        raw = {name: env.pop(name, "") for name in NOTIFY_VARS}
        address = raw["NOTIFY_SOCKET"] or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        watchdog_s = None
        pid = raw["WATCHDOG_PID"]
        if raw["WATCHDOG_USEC"] and (not pid or pid == str(os.getpid())):
            with contextlib.suppress(ValueError):
                usec = int(raw["WATCHDOG_USEC"])
                watchdog_s = usec / 1e6 if usec > 0 else None
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """One message (``send(READY="1", STATUS="...")``); False if it could not be sent. A
        notification is best effort: a full or vanished socket never stops a role."""
        if self.address is None:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        """The role serves: systemd ends ``systemctl start`` and starts the watchdog."""
        self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))
        self.start_watchdog()

    def status(self, status: str) -> None:
        """A line for ``systemctl status``."""
        self.send(STATUS=status)

    def stopping(self, status: str = "stopping") -> None:
        """The role has begun a clean stop: systemd waits for it, no watchdog restart now."""
        self.stop_watchdog()
        self.send(STOPPING="1", STATUS=status)

    def start_watchdog(self) -> None:
        """Ping every half period from the running event loop (once; no-op without a watchdog)."""
        if self.watchdog_s is None or self.address is None or self._pinger is not None:
            return
        self._pinger = asyncio.get_running_loop().create_task(
            self._ping_forever(self.watchdog_s / 2), name="sd-watchdog"
        )

    async def _ping_forever(self, every_s: float) -> None:
        while True:
            self.send(WATCHDOG="1")
            await asyncio.sleep(every_s)

    def stop_watchdog(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None

    def close(self) -> None:
        self.stop_watchdog()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
