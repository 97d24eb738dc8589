"""wake-on-lan: the magic packet for the target's MAC, sent from the task server's network."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

from protocol.states import InstanceState
from protocol.tasks import replace_tokens
from runtime.runner import Outcome, ScriptRun

_MAC = re.compile(r"^([0-9A-Fa-f]{2})([:-]?)([0-9A-Fa-f]{2})(\2[0-9A-Fa-f]{2}){4}$")


def magic_packet(mac: str) -> bytes:
    """Six 0xFF bytes, then the MAC sixteen times."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    return b"\xff" * 6 + raw * 16


def _send(packet: bytes, address: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(packet, (address, port))


async def run(
    params: dict[str, Any],
    tokens: dict[str, str],
    timeout_s: float,
    track: Callable[[ScriptRun], None],
) -> Outcome:
    started = time.time()
    mac = replace_tokens(str(params.get("mac", "%MACADDRESS%")), tokens).strip()
    if not _MAC.match(mac):
        why = (
            "the NS knows no MAC for this computer"
            if not mac or "%" in mac
            else f"{mac!r} is not a MAC"
        )
        return Outcome.failed(
            f"{why}: give params.mac, add the device with --mac, or run"
            " send-basic-inventory on its agent first (its inventory sets the MAC)",
            started_at=started,
        )
    address, port = str(params.get("broadcast", "255.255.255.255")), int(params.get("port", 9))
    try:
        _send(magic_packet(mac), address, port)
    except OSError as exc:
        return Outcome.failed(
            f"could not send to {address}:{port}: {exc.strerror or exc}", started_at=started
        )
    return Outcome(
        InstanceState.SUCCEEDED,
        0,
        f"magic packet for {mac} sent to {address}:{port}",
        "",
        started,
        time.time(),
    )
