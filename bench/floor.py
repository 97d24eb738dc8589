"""The floor: one barrier round over bare websockets + msgpack, with no taskfleet code.

    python bench/floor.py --agents 1000 --rounds 5 [--insecure] [--transport tlsio]
    python bench/floor.py --agents 100000 --rounds 3 --servers 6 --client-procs 8

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


def set_tls_buffer(kib: int | None) -> None:
    """asyncio's TLS read buffer per connection (256 KiB, zero-filled, for the connection's
    life), or ``kib``: the 4 KiB ``runtime/link.py`` sets for taskfleet's own asyncio TLS.
    At 100,000 connections the default alone would take 25 GiB on each side."""
    from asyncio import sslproto

    if kib and hasattr(sslproto.SSLProtocol, "max_size"):
        sslproto.SSLProtocol.max_size = kib * 1024


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
        gate = Gate(limit=HANDSHAKES_AT_ONCE, waiting=1_000_000, wait_s=600, hold_s=600, pause_at=0)
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

CONNECT_TRIES = 8


async def _client(
    url: str,
    context: ssl.SSLContext | None,
    connected: asyncio.Event,
    transport: str = "asyncio",
    opening: asyncio.Semaphore | None = None,
) -> None:
    """One floor client: connect (with ``opening``, at most its count of handshakes of this
    process at once), then answer every ``execute`` with a ``reports``."""
    opener: Any = connect
    if transport == "tlsio":
        from runtime.tlsio import Connect

        opener = Connect
    for attempt in range(CONNECT_TRIES):
        try:
            async with opening or contextlib.nullcontext():
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
    """The floor's server processes and its N clients, up for rounds on demand.

    ``servers``: how many server processes share the N connections (client ``i`` connects to
    server ``i % servers``), as taskfleet's agents are spread over that many TS processes; a
    round is timed from its request to every server until the last one has every answer.
    ``client_procs``: the clients run in that many processes of their own (``floor.py
    clients``) instead of this one (0), so that the floor can stay connected while taskfleet's N
    agents run in this process, and so that N may exceed one process's open-file limit (each
    process holds its own sockets). ``clients_apart`` is ``client_procs=1``: ``bench/run.py
    --paired-floor`` times a floor round just before each taskfleet run.
    """

    def __init__(
        self,
        n: int,
        insecure: bool = False,
        transport: str = "asyncio",
        clients_apart: bool = False,
        servers: int = 1,
        client_procs: int = 0,
        tls_buffer_kib: int | None = None,
        opening_at_once: int = 0,
    ) -> None:
        self.n = n
        self.opening_at_once = opening_at_once
        """Handshakes under way at once in each client process (0: no cap)."""
        self.tls_buffer_kib = tls_buffer_kib
        self.insecure = insecure
        self.transport = transport
        self.servers = max(1, servers)
        self.client_procs = max(client_procs, 1 if clients_apart else 0)
        self.connect_s = 0.0
        self.server_rss_per_conn_kib = 0.0
        self._tmp = Path(tempfile.mkdtemp(prefix="floor-"))
        self._stack = contextlib.AsyncExitStack()
        self._procs: list[asyncio.subprocess.Process] = []
        self._apart: list[asyncio.subprocess.Process] = []
        self._clients: list[asyncio.Task[None]] = []
        self._ctls: list[Any] = []
        self._round = 0

    async def start(self) -> Floor:
        """Start the servers and connect the N clients (closed again if that fails)."""
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

    async def _serve(self, argv: list[str]) -> str:
        """Start one server process; its URL."""
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        self._procs.append(proc)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line.startswith("ready port="):
            raise RuntimeError(f"floor server did not start: {line!r}")
        port = int(line.split("=", 1)[1])
        return f"{'ws' if self.insecure else 'wss'}://127.0.0.1:{port}"

    async def _start(self) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "serve"]
        argv += ["--transport", self.transport, *self._tls_buffer_args()]
        client_ctx = None
        cafile = ""
        if not self.insecure:
            cert, key = make_cert(self._tmp)
            argv += ["--cert", str(cert), "--key", str(key)]
            cafile = str(cert)
            client_ctx = ssl.create_default_context(cafile=cafile)
        urls = [await self._serve(argv) for _ in range(self.servers)]
        rss_before = sum(_rss_kib(p.pid) for p in self._procs)
        # The control connections first: N handshakes at once would starve their own.
        for url in urls:
            self._ctls.append(
                await self._stack.enter_async_context(
                    connect(
                        url + CONTROL,
                        ssl=client_ctx,
                        compression=None,
                        open_timeout=600,
                        ping_interval=None,
                    )
                )
            )
        t0 = time.perf_counter()
        if self.client_procs:
            for j in range(self.client_procs):
                # Process j holds clients j, j + P, j + 2P...: client i goes to server i % K.
                mine = len(range(j, self.n, self.client_procs))
                self._apart.append(
                    await asyncio.create_subprocess_exec(
                        *self._clients_argv(urls, mine, j, cafile), stdin=asyncio.subprocess.PIPE
                    )
                )
        else:
            for i in range(self.n):
                url = urls[i % len(urls)] + "/"
                self._clients.append(
                    asyncio.create_task(_client(url, client_ctx, asyncio.Event(), self.transport))
                )
        deadline = time.monotonic() + 1800
        while await self._count() < self.n:
            for c in self._clients:
                if c.done() and c.exception() is not None:
                    raise RuntimeError(f"a floor client failed: {c.exception()!r}")
            for proc in self._apart:
                if proc.returncode is not None:
                    raise RuntimeError(f"the floor's clients exited ({proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError("floor clients did not all connect in 1800 s")
            await asyncio.sleep(0.1)
        self.connect_s = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        rss_after = sum(_rss_kib(p.pid) for p in self._procs)
        self.server_rss_per_conn_kib = (rss_after - rss_before) / self.n

    def _clients_argv(self, urls: list[str], n: int, first: int, cafile: str) -> list[str]:
        """``floor.py clients`` for ``n`` clients, the floor's ``first``, ``first + P``..."""
        argv = [sys.executable, str(Path(__file__).resolve()), "clients"]
        argv += [a for u in urls for a in ("--url", u + "/")]
        argv += ["--agents", str(n), "--first", str(first), "--step", str(self.client_procs)]
        argv += ["--cafile", cafile, "--transport", self.transport]
        argv += ["--opening-at-once", str(self.opening_at_once)]
        return argv + self._tls_buffer_args()

    def _tls_buffer_args(self) -> list[str]:
        return ["--tls-buffer-kib", str(self.tls_buffer_kib)] if self.tls_buffer_kib else []

    async def _count(self) -> int:
        total = 0
        for ctl in self._ctls:
            await ctl.send(_pack({"op": "count"}))
            total += int(msgpack.unpackb(await ctl.recv())["connections"])
        return total

    def _cpu_clients(self) -> float:
        if self._apart:
            return sum(_cpu_s(p.pid) for p in self._apart)
        return time.process_time()

    def _cpu_servers(self) -> float:
        return sum(_cpu_s(p.pid) for p in self._procs)

    async def round(self) -> tuple[float, float, float]:
        """One barrier round: (seconds, CPU seconds of the servers, CPU seconds of the clients)."""
        assert self._procs
        self._round += 1
        t, s0, c0 = time.perf_counter(), self._cpu_servers(), self._cpu_clients()
        request = _pack({"op": "round", "round": self._round})
        await asyncio.gather(*(ctl.send(request) for ctl in self._ctls))
        answers = await asyncio.wait_for(asyncio.gather(*(ctl.recv() for ctl in self._ctls)), 600)
        took = time.perf_counter() - t
        answered = sum(int(msgpack.unpackb(a)["answered"]) for a in answers)
        if answered != self.n:
            raise RuntimeError(f"floor round answered {answered} of {self.n}")
        return took, self._cpu_servers() - s0, self._cpu_clients() - c0

    async def close(self) -> None:
        await self._stack.aclose()
        for c in self._clients:
            c.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        for proc in [*self._apart, *self._procs]:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)


async def measure(
    n: int,
    rounds: int,
    insecure: bool = False,
    transport: str = "asyncio",
    servers: int = 1,
    client_procs: int = 0,
    warmup: int = 0,
    tls_buffer_kib: int | None = None,
    opening_at_once: int = 0,
) -> dict[str, Any]:
    """Start the floor's server(s), connect N clients (in this process, or spread over
    ``client_procs`` processes), time ``rounds`` rounds.

    ``transport``: ``asyncio`` (websockets as it comes) or ``tlsio`` (taskfleet's transport).
    ``warmup`` rounds go first, untimed: with clients in processes of their own the first round
    can meet handshakes still settling on the client side. ``tls_buffer_kib``: see
    :func:`set_tls_buffer` (clients in this process keep this process's setting)."""
    async with Floor(
        n,
        insecure,
        transport,
        servers=servers,
        client_procs=client_procs,
        tls_buffer_kib=tls_buffer_kib,
        opening_at_once=opening_at_once,
    ) as fl:
        for _ in range(warmup):
            await fl.round()
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
            "servers": fl.servers,
            "tls_buffer_kib": tls_buffer_kib,
            "client_procs": fl.client_procs,
            "connect_s": fl.connect_s,
            "rounds_s": times,
            "round_median_s": statistics.median(times),
            # CPU seconds per round, for comparing each side with taskfleet's per step.
            "cpu_server_s": statistics.median(cpu_server),
            "cpu_clients_s": statistics.median(cpu_clients),
            "server_rss_per_conn_kib": fl.server_rss_per_conn_kib,
        }


async def run_clients(
    urls: list[str],
    n: int,
    cafile: str,
    transport: str,
    first: int = 0,
    step: int = 1,
    opening_at_once: int = 0,
) -> int:
    """``floor.py clients``: N floor clients in this process until stdin closes (the bench
    process that started it ended or closed it). Client ``k`` here is the floor's client
    ``first + k * step``, and connects to ``urls[that % len(urls)]``."""
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    # 12,500 handshakes at once from each of eight processes outlast the client's timeout on a
    # busy machine and start again from nothing: ``opening_at_once`` (0: no cap) bounds them.
    opening = asyncio.Semaphore(opening_at_once) if opening_at_once > 0 else None
    clients = [
        asyncio.create_task(
            _client(urls[(first + k * step) % len(urls)], ctx, asyncio.Event(), transport, opening)
        )
        for k in range(n)
    ]
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
    c.add_argument("--url", action="append", required=True, help="a server (repeatable)")
    c.add_argument("--agents", type=int, required=True)
    c.add_argument("--first", type=int, default=0, help="the floor's number of the first client")
    c.add_argument("--step", type=int, default=1, help="between the floor's numbers of clients")
    c.add_argument("--opening-at-once", type=int, default=0, help="handshakes at once (0: all)")
    c.add_argument("--cafile", default="", help="the server's certificate (none: ws://)")
    c.add_argument("--transport", choices=("asyncio", "tlsio"), default="asyncio")
    for sp in (s, c, p):
        sp.add_argument(
            "--tls-buffer-kib",
            type=int,
            help="asyncio's TLS read buffer in the floor's processes, KiB (default: asyncio's 256)",
        )
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--insecure", action="store_true", help="plain ws:// instead of TLS")
    p.add_argument(
        "--servers",
        type=int,
        default=1,
        help="server processes the N connections are spread over (as agents over TS processes)",
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="processes the N clients are spread over (default 0: in this process)",
    )
    p.add_argument(
        "--transport",
        choices=("asyncio", "tlsio"),
        default="asyncio",
        help="websockets as it comes, or over taskfleet's listener and TLS transport",
    )
    args = p.parse_args(argv)
    if args.cmd in ("serve", "clients"):
        set_tls_buffer(args.tls_buffer_kib)
    if args.cmd == "serve":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        asyncio.run(serve_floor(args.cert, args.key, args.transport))
        return 0
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if args.cmd == "clients":
        return asyncio.run(
            run_clients(
                args.url,
                args.agents,
                args.cafile,
                args.transport,
                args.first,
                args.step,
                args.opening_at_once,
            )
        )
    if args.servers < 1 or args.client_procs < 0:
        p.error("--servers must be at least 1 and --client-procs 0 or more")
    result = asyncio.run(
        measure(
            args.agents,
            args.rounds,
            args.insecure,
            transport=args.transport,
            servers=args.servers,
            client_procs=args.client_procs,
            tls_buffer_kib=args.tls_buffer_kib,
        )
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
