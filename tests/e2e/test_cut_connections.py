"""Connections cut in the middle of frames: a proxy between the agents and their TS drops
connections at random points; every run still completes with one result per computer."""

from __future__ import annotations

import asyncio
import contextlib
import random

from tests.helpers import Fleet, free_port, until, wait_run

AGENTS = 30
RUNS = 4


class CuttingProxy:
    """A TCP proxy that cuts some connections after a random number of bytes (TLS passes through,
    so frames are cut anywhere). It stops cutting after ``max_cuts``: chaos with a bound."""

    def __init__(self, target_port: int, *, seed: int = 7, max_cuts: int = 60):
        self.target_port = target_port
        self.rng = random.Random(seed)
        self.max_cuts = max_cuts
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        cut = self.cuts < self.max_cuts and self.rng.random() < 0.7
        budget = [self.rng.randint(1_000, 8_000) if cut else -1]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(4096):
                    if budget[0] >= 0:
                        if len(data) >= budget[0]:
                            dst.write(data[: budget[0]])
                            self.cuts += 1
                            budget[0] = -2
                            break
                        budget[0] -= len(data)
                    if budget[0] == -2:
                        break
                    dst.write(data)
                    await dst.drain()
            for w in (writer, up_writer):
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_runs_complete_when_connections_are_cut_mid_frame(fleet: Fleet):
    """30 agents reach their TS through a proxy that cuts connections mid-frame: 4 runs all
    complete, one terminal result per computer each, none doubled."""
    await fleet.server()
    ts_port, proxy_port = free_port(), free_port()
    proxy = CuttingProxy(ts_port)
    await proxy.start(proxy_port)
    try:
        await fleet._proc(
            "ts-1",
            [
                "taskserver",
                "--server",
                fleet.ns.url,
                "--data",
                str(fleet.root / "ts-1"),
                "--listen",
                f"127.0.0.1:{ts_port}",
                "--advertise",
                f"wss://127.0.0.1:{proxy_port}",
                "--name",
                "ts-1",
                "--enrol-token",
                fleet.ts_enrol_token,
                *fleet.trust_args(),
            ],
        ).start()
        await fleet.simulate(AGENTS, "--task-delay-ms", "300")
        async with fleet.admin() as c:

            async def online():
                return sum(1 for r in await c.call("computers.list") if r["online"]) == AGENTS

            await until(online, "agents online through the proxy", 120)
            await c.call("task.add", document={"name": "n", "type": "noop", "timeout_s": 120})
            run_ids = [
                (await c.call("run.start", task="n", all=True))["run_id"] for _ in range(RUNS)
            ]
            finals = [await wait_run(c, r, 150) for r in run_ids]
        for final in finals:
            computers = [i["computer"] for i in final["instances"]]
            assert len(computers) == AGENTS and len(set(computers)) == AGENTS
            assert {i["status"] for i in final["instances"]} == {"succeeded"}, final["status"]
        assert proxy.cuts >= 10, (
            f"the proxy cut only {proxy.cuts} connections: too few to prove anything"
        )
        print(f"connections cut: {proxy.cuts}")
    finally:
        await proxy.close()
