"""get-ip-configuration: interfaces, addresses, masks, MACs, gateways and DNS servers."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import socket
import time
from typing import TYPE_CHECKING, Any

from protocol.states import InstanceState
from runtime.runner import Outcome

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext


async def _ip_json(*args: str) -> Any:
    exe = shutil.which("ip")
    if exe is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        exe, "-j", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    try:
        return json.loads(out or b"null")
    except json.JSONDecodeError:
        return None


def _mask(prefix: int, family: str) -> str:
    net = ipaddress.ip_network(f"{'0.0.0.0' if family == 'inet' else '::'}/{prefix}")
    return str(net.netmask)


def _dns() -> list[str]:
    servers: list[str] = []
    try:
        with open("/etc/resolv.conf") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1])
    except OSError:
        pass
    return servers


async def collect() -> dict[str, Any]:
    """The machine's IP configuration, from ``ip -j`` where present, else from /sys and socket."""
    interfaces: list[dict[str, Any]] = []
    links = await _ip_json("addr", "show")
    if isinstance(links, list):
        for link in links:
            interfaces.append(
                {
                    "name": link.get("ifname"),
                    "mac": link.get("address"),
                    "up": "UP" in (link.get("flags") or []),
                    "addresses": [
                        {
                            "family": "ipv4" if a.get("family") == "inet" else "ipv6",
                            "address": a.get("local"),
                            "prefix": a.get("prefixlen"),
                            "netmask": _mask(int(a.get("prefixlen", 0)), str(a.get("family"))),
                        }
                        for a in link.get("addr_info", [])
                        if a.get("local")
                    ],
                }
            )
    else:
        for _, name in socket.if_nameindex():
            try:
                with open(f"/sys/class/net/{name}/address") as fh:
                    mac = fh.read().strip()
            except OSError:
                mac = None
            interfaces.append({"name": name, "mac": mac, "up": None, "addresses": []})
    gateways: list[str] = []
    routes = await _ip_json("route", "show", "default")
    if isinstance(routes, list):
        gateways = [r["gateway"] for r in routes if r.get("gateway")]
    return {
        "interfaces": interfaces,
        "gateways": gateways,
        "dns_servers": _dns(),
        "hostname": socket.gethostname(),
        "collected_at": time.time(),
        "pid": os.getpid(),
    }


async def run(ctx: TaskContext) -> Outcome:
    started = time.time()
    data = await collect()
    return Outcome(InstanceState.SUCCEEDED, 0, json.dumps(data, indent=1), "", started, time.time())
