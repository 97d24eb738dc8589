"""The floor: one barrier round over bare websockets + msgpack, with no taskfleet code.

    python bench/floor.py --agents 1000 --rounds 5 [--insecure] [--transport tlsio]

A server process (``python bench/floor.py serve``, started by this script, as the NS and TS are
in ``bench/run.py``) accepts N WebSocket connections. For each round the bench asks it, over one
control connection, to send one msgpack message to every connection (an ``execute``-shaped map)
and to wait until every connection has answered (a ``reports``-shaped map); the server then
answers the control connection. The round is timed by the bench, from its request to that answer,
as ``bench/run.py`` times a taskfleet barrier from ``run.start`` to the run's end.

The N clients run as asyncio tasks in the bench process, as taskfleet's lightweight agents do, and
with the same transport: TLS (a self-signed certificate, verified) unless ``--insecure``. Nothing
here imports taskfleet, so the figure is what websockets, msgpack and asyncio cost on this machine
for the same exchange: the bound a taskfleet barrier is compared with (``docs/performance.md``).

``--transport tlsio`` runs the same exchange over taskfleet's listener and TLS transport
(``runtime.link.listen`` with its gate opened wide, ``runtime.tlsio.Connect``) and nothing else of
taskfleet: what the same websockets + msgpack exchange costs on the transport taskfleet uses, so
that the part of a barrier's ratio the transport accounts for can be told from the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import random
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidHandshake

CONTROL = "/control"


def _pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (Ed25519, as taskfleet's own)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, None)
    )
    cert_path, key_path = folder / "floor.crt", folder / "floor.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# -- the server process -------------------------------------------------------------------------


async def serve_floor(cert: str | None, key: str | None, transport: str = "asyncio") -> None:
    # Clients closing as the bench ends are no news.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    conns: dict[int, ServerConnection] = {}
    replies: asyncio.Queue[int] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        done = getattr(ws, "handshake_done", None)
        if done is not None:  # taskfleet's listener (tlsio): free the gate's place
            done()
        if ws.request is not None and ws.request.path == CONTROL:
            await control(ws)
            return
        me = id(ws)
        conns[me] = ws
        try:
            async for frame in ws:
                msgpack.unpackb(frame)  # a report, decoded as the relay would
                replies.put_nowait(me)
        finally:
            conns.pop(me, None)

    async def control(ws: ServerConnection) -> None:
        async for frame in ws:
            request = msgpack.unpackb(frame)
            if request["op"] == "count":
                await ws.send(_pack({"connections": len(conns)}))
                continue
            round_no = request["round"]
            while not replies.empty():
                replies.get_nowait()
            targets = list(conns.values())
            for i, c in enumerate(targets):
                await c.send(
                    _pack(
                        {
                            "type": "execute",
                            "id": str(i),
                            "run_id": round_no,
                            "instance_id": round_no * 1_000_000 + i,
                            "task": {"name": "noop", "type": "noop", "timeout_s": 600},
                            "tokens": {"COMPUTERNAME": f"sim-{i:05d}"},
                            "timeout_s": 600.0,
                        }
                    )
                )
            waiting = {id(c) for c in targets}
            while waiting:
                waiting.discard(await replies.get())
            await ws.send(_pack({"round": round_no, "answered": len(targets)}))

    context = None
    if cert and key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    if transport == "tlsio":
        from runtime.gate import HANDSHAKES_AT_ONCE, Gate
        from runtime.keepalive import Keepalive
        from runtime.link import listen

        # A gate as wide as the floor's all-at-once connect needs; no pings during the rounds.
        gate = Gate(limit=HANDSHAKES_AT_ONCE, waiting=1_000_000, wait_s=600, hold_s=600)
        gate.keepalive = Keepalive(interval_s=3600)
        _, port = await listen(handler, "127.0.0.1", 0, ssl_context=context, gate=gate)
        print(f"ready port={port}", flush=True)
        await asyncio.Future()
    async with serve(
        handler,
        "127.0.0.1",
        0,
        ssl=context,
        compression=None,
        max_queue=None,
        ping_interval=None,
        open_timeout=600,  # N handshakes at once, on two CPUs
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"ready port={port}", flush=True)
        await asyncio.Future()


# -- the bench side -----------------------------------------------------------------------------

CONNECT_TRIES = 5


async def _client(
    url: str, context: ssl.SSLContext | None, connected: asyncio.Event, transport: str = "asyncio"
) -> None:
    opener: Any = connect
    if transport == "tlsio":
        from runtime.tlsio import Connect

        opener = Connect
    for attempt in range(CONNECT_TRIES):
        try:
            ws = await opener(
                url, ssl=context, compression=None, open_timeout=120, ping_interval=None
            )
            break
        except (OSError, InvalidHandshake, TimeoutError):
            # 10,000 connects at once can overflow the server's accept queue (a reset) or
            # outlast its handshake timeout: the floor times rounds, not connects, so a client
            # tries again a moment later.
            if attempt == CONNECT_TRIES - 1:
                raise
            await asyncio.sleep(0.5 + random.random())
    async with ws:
        connected.set()
        async for frame in ws:
            m = msgpack.unpackb(frame)
            await ws.send(
                _pack(
                    {
                        "type": "reports",
                        "id": m["id"],
                        "items": [
                            {
                                "instance_id": m["instance_id"],
                                "state": "succeeded",
                                "return_code": 0,
                                "started_at": time.time(),
                                "ended_at": time.time(),
                            }
                        ],
                    }
                )
            )


class Floor:
    """The floor's server process and its N clients, up for rounds on demand.

    ``clients_apart``: the clients run in a process of their own (``floor.py clients``) instead
    of this one, so that the floor can stay connected while taskfleet's N agents run in this
    process (each process holds its own N sockets under the open-file limit): ``bench/run.py
    --paired-floor`` times a floor round just before each taskfleet run.
    """

    def __init__(
        self,
        n: int,
        insecure: bool = False,
        transport: str = "asyncio",
        clients_apart: bool = False,
    ) -> None:
        self.n = n
        self.insecure = insecure
        self.transport = transport
        self.clients_apart = clients_apart
        self.connect_s = 0.0
        self.server_rss_per_conn_kib = 0.0
        self._tmp = Path(tempfile.mkdtemp(prefix="floor-"))
        self._stack = contextlib.AsyncExitStack()
        self._server: asyncio.subprocess.Process | None = None
        self._apart: asyncio.subprocess.Process | None = None
        self._clients: list[asyncio.Task[None]] = []
        self._ctl: Any = None
        self._round = 0

    async def start(self) -> Floor:
        """Start the server and connect the N clients (closed again if that fails)."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aenter__(self) -> Floor:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "serve"]
        argv += ["--transport", self.transport]
        client_ctx = None
        cafile = ""
        if not self.insecure:
            cert, key = make_cert(self._tmp)
            argv += ["--cert", str(cert), "--key", str(key)]
            cafile = str(cert)
            client_ctx = ssl.create_default_context(cafile=cafile)
        self._server = proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line.startswith("ready port="):
            raise RuntimeError(f"floor server did not start: {line!r}")
        port = int(line.split("=", 1)[1])
        url = f"{'ws' if self.insecure else 'wss'}://127.0.0.1:{port}"
        rss_before = _rss_kib(proc.pid)
        # The control connection first: N handshakes at once would starve its own.
        self._ctl = await self._stack.enter_async_context(
            connect(
                url + CONTROL,
                ssl=client_ctx,
                compression=None,
                open_timeout=600,
                ping_interval=None,
            )
        )
        t0 = time.perf_counter()
        if self.clients_apart:
            self._apart = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), "clients", "--url", url + "/",
                "--agents", str(self.n), "--cafile", cafile, "--transport", self.transport,
                stdin=asyncio.subprocess.PIPE,
            )  # fmt: skip
        else:
            for _ in range(self.n):
                self._clients.append(
                    asyncio.create_task(
                        _client(url + "/", client_ctx, asyncio.Event(), self.transport)
                    )
                )
        deadline = time.monotonic() + 600
        while await self._count() < self.n:
            for c in self._clients:
                if c.done() and c.exception() is not None:
                    raise RuntimeError(f"a floor client failed: {c.exception()!r}")
            if self._apart is not None and self._apart.returncode is not None:
                raise RuntimeError(f"the floor's clients exited ({self._apart.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError("floor clients did not all connect in 600 s")
            await asyncio.sleep(0.1)
        self.connect_s = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        self.server_rss_per_conn_kib = (_rss_kib(proc.pid) - rss_before) / self.n

    async def _count(self) -> int:
        await self._ctl.send(_pack({"op": "count"}))
        return int(msgpack.unpackb(await self._ctl.recv())["connections"])

    def _cpu_clients(self) -> float:
        return _cpu_s(self._apart.pid) if self._apart is not None else time.process_time()

    async def round(self) -> tuple[float, float, float]:
        """One barrier round: (seconds, CPU seconds of the server, CPU seconds of the clients)."""
        assert self._server is not None
        self._round += 1
        t, s0, c0 = time.perf_counter(), _cpu_s(self._server.pid), self._cpu_clients()
        await self._ctl.send(_pack({"op": "round", "round": self._round}))
        answer = msgpack.unpackb(await asyncio.wait_for(self._ctl.recv(), 600))
        took = time.perf_counter() - t
        if answer["answered"] != self.n:
            raise RuntimeError(f"floor round answered {answer['answered']} of {self.n}")
        return took, _cpu_s(self._server.pid) - s0, self._cpu_clients() - c0

    async def close(self) -> None:
        await self._stack.aclose()
        for c in self._clients:
            c.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        for proc in (self._apart, self._server):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)


async def measure(
    n: int,
    rounds: int,
    insecure: bool = False,
    transport: str = "asyncio",
) -> dict[str, Any]:
    """Start the floor server, connect N clients (in this process), time ``rounds`` rounds.

    ``transport``: ``asyncio`` (websockets as it comes) or ``tlsio`` (taskfleet's transport)."""
    async with Floor(n, insecure, transport) as fl:
        times: list[float] = []
        cpu_server: list[float] = []
        cpu_clients: list[float] = []
        for _ in range(rounds):
            t, s, c = await fl.round()
            times.append(t)
            cpu_server.append(s)
            cpu_clients.append(c)
            await asyncio.sleep(0.3)
        return {
            "agents": n,
            "transport": ("plain ws://" if insecure else "TLS")
            + (", taskfleet's transport" if transport == "tlsio" else ""),
            "connect_s": fl.connect_s,
            "rounds_s": times,
            "round_median_s": statistics.median(times),
            # CPU seconds per round, for comparing each side with taskfleet's per step.
            "cpu_server_s": statistics.median(cpu_server),
            "cpu_clients_s": statistics.median(cpu_clients),
            "server_rss_per_conn_kib": fl.server_rss_per_conn_kib,
        }


async def run_clients(url: str, n: int, cafile: str, transport: str) -> int:
    """``floor.py clients``: N floor clients in this process until stdin closes (the bench
    process that started it ended or closed it)."""
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    clients = [asyncio.create_task(_client(url, ctx, asyncio.Event(), transport)) for _ in range(n)]
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
    )
    eof = asyncio.ensure_future(stdin.read())
    done, _ = await asyncio.wait([eof, *clients], return_when=asyncio.FIRST_COMPLETED)
    failed = [c for c in done if c is not eof and c.exception() is not None]
    for c in [eof, *clients]:
        c.cancel()
    await asyncio.gather(eof, *clients, return_exceptions=True)
    if failed:
        print(f"floor clients: a client failed: {failed[0].exception()!r}", file=sys.stderr)
        return 1
    return 0


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="(internal) the floor's server process")
    s.add_argument("--cert")
    s.add_argument("--key")
    s.add_argument("--transport", choices=("asyncio", "tlsio"), default="asyncio")
    c = sub.add_parser("clients", help="(internal) N floor clients in a process of their own")
    c.add_argument("--url", required=True)
    c.add_argument("--agents", type=int, required=True)
    c.add_argument("--cafile", default="", help="the server's certificate (none: ws://)")
    c.add_argument("--transport", choices=("asyncio", "tlsio"), default="asyncio")
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--insecure", action="store_true", help="plain ws:// instead of TLS")
    p.add_argument(
        "--transport",
        choices=("asyncio", "tlsio"),
        default="asyncio",
        help="websockets as it comes, or over taskfleet's listener and TLS transport",
    )
    args = p.parse_args(argv)
    if args.cmd == "serve":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        asyncio.run(serve_floor(args.cert, args.key, args.transport))
        return 0
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if args.cmd == "clients":
        return asyncio.run(run_clients(args.url, args.agents, args.cafile, args.transport))
    result = asyncio.run(measure(args.agents, args.rounds, args.insecure, transport=args.transport))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
