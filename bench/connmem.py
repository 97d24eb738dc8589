"""Memory per idle WebSocket connection in a server process: taskfleet's listener and bare ones.

    python bench/connmem.py --connections 2000

A server process (this file with ``--serve``) opens one listener; the parent opens N client
connections, and the server reports its resident memory growth divided by N once all are open
and idle (after ``malloc_trim``). Listeners measured, each in a fresh process:

- ``taskfleet``: ``runtime.link.listen`` with TLS and the handshake gate, as a TS runs it
  (``runtime.tlsio``'s transport, the listener's one keepalive loop, ``tune_gc``), without
  taskfleet's own per-agent state;
- ``websockets-tls``: bare ``websockets.asyncio.server.serve`` with TLS (asyncio's defaults but
  the same 4 KiB read buffer, since ``runtime.link`` sets it for the process);
- ``websockets-plain``: the same without TLS;
- ``asyncio-tls``: no WebSocket at all, asyncio's TLS transport and a protocol that keeps
  nothing (the same 4 KiB read buffer): what TLS alone costs per connection in asyncio here;
- ``sslsocket-tls``: no WebSocket either, OpenSSL reading the socket itself (a non-blocking
  ``SSLSocket``, no memory BIOs): what TLS alone costs the way ``runtime.tlsio`` does it.

What taskfleet adds per agent on top (its relay state, the agent's queues) is the difference
between ``bench/run.py``'s "TS KiB / agent" and the ``taskfleet`` line here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KINDS = ("taskfleet", "websockets-tls", "websockets-plain", "asyncio-tls", "sslsocket-tls")


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def serve(kind: str, n: int) -> None:
    from websockets.asyncio.server import serve as ws_serve

    from runtime import heap
    from runtime.link import listen
    from runtime.tls import ensure_certificates, server_context

    heap.tune_gc()
    folder = tempfile.mkdtemp(prefix="connmem-")
    cert, key, _ = ensure_certificates(folder, "connmem")
    ctx = server_context(cert, key) if kind != "websockets-plain" else None
    opened = 0
    all_open = asyncio.Event()

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        nonlocal opened
        done = getattr(ws, "handshake_done", None)
        if done is not None:
            done()  # what a TS does after its welcome
        opened += 1
        if opened == n:
            all_open.set()
        try:
            async for _ in ws:
                pass
        except Exception:
            pass

    if kind == "taskfleet":
        server, port = await listen(handler, "127.0.0.1", 0, ssl_context=ctx)
    elif kind == "asyncio-tls":
        held: list[asyncio.BaseTransport] = []

        class Bare(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                nonlocal opened
                held.append(transport)
                opened += 1
                if opened == n:
                    all_open.set()

        loop = asyncio.get_running_loop()
        server = await loop.create_server(Bare, "127.0.0.1", 0, ssl=ctx, backlog=4096)
        port = next(iter(server.sockets)).getsockname()[1]
    elif kind == "sslsocket-tls":
        assert ctx is not None
        held_socks: list[ssl.SSLSocket] = []

        def one_open(sock: ssl.SSLSocket) -> None:
            nonlocal opened
            held_socks.append(sock)
            opened += 1
            if opened == n:
                all_open.set()

        server, port = _sslsocket_listener(ctx, one_open)
    else:
        server = await ws_serve(handler, "127.0.0.1", 0, ssl=ctx, compression=None)
        port = next(iter(server.sockets)).getsockname()[1]
    await asyncio.sleep(0.2)
    heap.trim()
    trace = os.environ.get("CONNMEM_TRACE") == "1"
    if trace:
        import tracemalloc

        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
    before = _rss_kib()
    print(port, flush=True)
    await all_open.wait()
    await asyncio.sleep(2.0)  # let the handshakes' garbage go
    heap.trim()
    await asyncio.sleep(0.5)
    if trace:  # where the Python-level bytes of a connection go (on stderr)
        diff = tracemalloc.take_snapshot().compare_to(snap0, "lineno")
        total = sum(d.size_diff for d in diff)
        print(f"python-level {total / n / 1024:.1f} KiB/conn:", file=sys.stderr)
        for d in diff[:25]:
            print(f"  {d.size_diff / n:8.0f} B  {d.traceback[0]}", file=sys.stderr)
    print(f"{(_rss_kib() - before) / n:.1f}", flush=True)
    await asyncio.sleep(3600)


def _sslsocket_listener(
    ctx: ssl.SSLContext, on_open: Callable[[ssl.SSLSocket], None]
) -> tuple[None, int]:
    """TLS with OpenSSL on the socket (no memory BIOs), no WebSocket: accept, handshake on the
    event loop's readiness, then read and drop whatever comes. What ``runtime.tlsio`` builds on."""
    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    lsock.setblocking(False)

    def drain(sock: ssl.SSLSocket) -> None:
        with contextlib.suppress(ssl.SSLWantReadError, BlockingIOError):
            sock.recv(4096)

    def step(sock: ssl.SSLSocket) -> None:
        try:
            sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), drain, sock)
        on_open(sock)

    def accept() -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            sock = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            loop.add_reader(sock.fileno(), step, sock)

    loop.add_reader(lsock.fileno(), accept)
    return None, lsock.getsockname()[1]


async def clients(port: int, n: int, tls: bool, kind: str = "") -> list[object]:
    from websockets.asyncio.client import connect

    ctx = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    scheme = "wss" if tls else "ws"
    gate = asyncio.Semaphore(50)
    out: list[object] = []

    async def one() -> None:
        async with gate:
            if kind in ("asyncio-tls", "sslsocket-tls"):  # no WebSocket: TLS, then a few bytes
                _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
                writer.write(b"x" * 200)
                await writer.drain()
                out.append(writer)
                return
            out.append(
                await connect(
                    f"{scheme}://127.0.0.1:{port}",
                    ssl=ctx,
                    compression=None,
                    proxy=None,
                    ping_interval=None,
                    open_timeout=60,
                )
            )

    await asyncio.gather(*(one() for _ in range(n)))
    return out


def measure(kind: str, n: int) -> float:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--connections", str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        async def run() -> float:
            conns = await clients(port, n, tls=kind != "websockets-plain", kind=kind)
            line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
            del conns
            return float(line)

        return asyncio.run(run())
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated, of " + ", ".join(KINDS)
    )
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.connections))
        return 0
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"RSS growth per idle connection, N = {args.connections} (KiB)")
    for kind in args.kinds.split(","):
        print(f"  {kind:18} {measure(kind, args.connections):6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
