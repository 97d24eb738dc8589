"""send-basic-inventory: what this machine is; the NS keeps it, with history."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import time
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.tasktypes.ip_configuration import collect as ip_configuration
from protocol.states import InstanceState
from protocol.tasks import unicast_mac
from runtime.runner import Outcome

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext

_REAL_FS = {
    "ext2",
    "ext3",
    "ext4",
    "xfs",
    "btrfs",
    "zfs",
    "apfs",
    "hfs",
    "ntfs",
    "vfat",
    "f2fs",
    "overlay",
}


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                key, _, value = line.strip().partition("=")
                if key:
                    out[key] = value.strip('"')
    except OSError:
        pass
    return out


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _disks() -> list[dict[str, Any]]:
    disks = []
    try:
        with open("/proc/mounts") as fh:
            mounts = [line.split()[:3] for line in fh]
    except OSError:
        mounts = [["", "/", ""]]
    for device, mount, fs in mounts:
        if fs and fs not in _REAL_FS:
            continue
        try:
            usage = shutil.disk_usage(mount)
        except OSError:
            continue
        disks.append(
            {"device": device, "mount": mount, "fs": fs, "total": usage.total, "free": usage.free}
        )
    return disks


def _uptime_s() -> float | None:
    try:
        with open("/proc/uptime") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def _users() -> list[str]:
    exe = shutil.which("who")
    if exe is None:
        return []
    proc = await asyncio.create_subprocess_exec(
        exe, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    return sorted(
        {line.split()[0] for line in out.decode(errors="replace").splitlines() if line.split()}
    )


def _macs(interfaces: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(the machine's own MAC, every MAC of its cards, sorted): only addresses that can name one
    card (``protocol.tasks.unicast_mac``: no all-zero loopback, no multicast or broadcast). Its
    own MAC is the first card that is up and carries an IP address (the one wake-on-lan should
    wake), else the first valid one; ``""`` when there is none."""
    valid = [(i, mac) for i in interfaces if (mac := unicast_mac(i.get("mac")))]
    carrying = [mac for i, mac in valid if i.get("up") and i.get("addresses")]
    own = (carrying or [mac for _, mac in valid] or [""])[0]
    return own, sorted({mac for _, mac in valid})


async def collect() -> dict[str, Any]:
    release = _os_release()
    ip = await ip_configuration()
    mac, macs = _macs(ip["interfaces"])
    return {
        "hostname": socket.gethostname(),
        "fqdn": socket.getfqdn(),
        "os": {
            "name": release.get("NAME") or platform.system(),
            "version": release.get("VERSION_ID") or platform.release(),
            "pretty": release.get("PRETTY_NAME") or platform.platform(),
            "kernel": platform.release(),
        },
        "architecture": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "disks": _disks(),
        "addresses": [a["address"] for i in ip["interfaces"] for a in i["addresses"]],
        "mac": mac,
        "macs": macs,
        "uptime_s": _uptime_s(),
        "users": await _users(),
        "agent_version": __version__,
    }


async def run(ctx: TaskContext) -> Outcome:
    started = time.time()
    data = await collect()
    return Outcome(InstanceState.SUCCEEDED, 0, json.dumps(data, indent=1), "", started, time.time())
