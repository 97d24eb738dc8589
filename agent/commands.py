"""The per-platform command table: what "restart the computer" or "stop a service" runs.

Each entry is an argument list with ``{placeholders}`` filled per argument (never a shell
string). The agent's configuration can override any entry with ``--commands FILE`` (TOML)::

    [commands]
    "power.restart" = ["/usr/local/bin/fake-restart", "{delay_s}", "{message}"]

so a test, or an unusual platform, points a command at something else.
"""

from __future__ import annotations

import platform
import tomllib
from typing import Any

_LINUX: dict[str, list[str]] = {
    "service.start": ["systemctl", "start", "{service}"],
    "service.stop": ["systemctl", "stop", "{service}"],
    "service.restart": ["systemctl", "restart", "{service}"],
    "service.query": ["systemctl", "status", "--no-pager", "{service}"],
    "service.reload": ["systemctl", "reload", "{service}"],
    "service.enable": ["systemctl", "enable", "{service}"],
    "service.disable": ["systemctl", "disable", "{service}"],
    "service.status": ["systemctl", "status", "--no-pager", "{service}"],
    "defragment": ["fstrim", "-v", "{volume}"],
    "power.restart": ["shutdown", "-r", "+{delay_min}", "{message}"],
    "power.shutdown": ["shutdown", "-h", "+{delay_min}", "{message}"],
    "power.logoff": ["loginctl", "terminate-user", "{user}"],
}
_MACOS: dict[str, list[str]] = {
    "service.start": ["launchctl", "start", "{service}"],
    "service.stop": ["launchctl", "stop", "{service}"],
    "service.restart": ["launchctl", "kickstart", "-k", "system/{service}"],
    "service.query": ["launchctl", "list", "{service}"],
    "service.status": ["launchctl", "list", "{service}"],
    "service.enable": ["launchctl", "enable", "system/{service}"],
    "service.disable": ["launchctl", "disable", "system/{service}"],
    "power.restart": ["shutdown", "-r", "+{delay_min}"],
    "power.shutdown": ["shutdown", "-h", "+{delay_min}"],
}
_WINDOWS: dict[str, list[str]] = {
    "service.start": ["sc", "start", "{service}"],
    "service.stop": ["sc", "stop", "{service}"],
    "service.query": ["sc", "query", "{service}"],
    "defragment": ["defrag", "{volume}", "/O"],
    "power.restart": ["shutdown", "/r", "/t", "{delay_s}", "/c", "{message}"],
    "power.shutdown": ["shutdown", "/s", "/t", "{delay_s}", "/c", "{message}"],
    "power.logoff": ["shutdown", "/l"],
}


def default_table() -> dict[str, list[str]]:
    """The table for this platform."""
    system = platform.system()
    if system == "Windows":
        return dict(_WINDOWS)
    if system == "Darwin":
        return dict(_MACOS)
    return dict(_LINUX)


class CommandTable:
    """Named commands, with overrides from the agent's configuration."""

    def __init__(self, overrides: dict[str, list[str]] | None = None):
        self.table = default_table()
        self.table.update(overrides or {})

    @classmethod
    def load(cls, path: str | None) -> CommandTable:
        if not path:
            return cls()
        with open(path, "rb") as fh:
            doc: dict[str, Any] = tomllib.load(fh)
        commands = doc.get("commands", {})
        bad = [
            k
            for k, v in commands.items()
            if not (isinstance(v, list) and all(isinstance(a, str) for a in v))
        ]
        if bad:
            raise ValueError(f"{path}: commands {', '.join(bad)} must be lists of strings")
        return cls(commands)

    def argv(self, name: str, **values: Any) -> list[str] | None:
        """The command ``name`` with its placeholders filled, or None when this platform has none."""
        template = self.table.get(name)
        if not template:
            return None
        try:
            return [part.format(**{k: str(v) for k, v in values.items()}) for part in template]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"command {name!r} in the command table uses an unknown placeholder {exc}; "
                f"known here: {', '.join('{' + k + '}' for k in values)}"
            ) from None
