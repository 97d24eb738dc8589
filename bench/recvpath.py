"""Server CPU per frame received: a read loop (``Link.recv``) against ``Link.deliver``.

    python bench/recvpath.py --connections 500 --frames 40 --repeat 3

A server process (this file with ``--serve``) opens taskfleet's TLS listener; the parent opens N
connections over ``runtime.tlsio`` and sends M small frames on each, in waves. The server reports
its own CPU time from the first wave to the last frame, per frame, for each way of reading (a
fresh process each, alternating): what the relay spends to take one agent message.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol import codec  # noqa: E402
from protocol.messages import Ack, Message  # noqa: E402
from runtime.link import Link, listen  # noqa: E402
from runtime.tls import ClientTrust, ensure_certificates, server_context  # noqa: E402
from runtime.tlsio import Connect  # noqa: E402

MODES = ("recv", "deliver")


async def serve(mode: str, expected: int) -> None:
    cert, key, ca = ensure_certificates(tempfile.mkdtemp(prefix="recvpath-"), "recvpath")
    got = 0
    all_in = asyncio.Event()

    def count(_: Message) -> None:
        nonlocal got
        got += 1
        if got == expected:
            all_in.set()

    async def handler(ws: Any) -> None:
        ws.handshake_done()
        link = Link(ws)
        if mode == "deliver":
            await link.deliver(count)
            return
        try:
            while True:
                count(await link.recv())
        except Exception:
            return

    _, port = await listen(handler, "127.0.0.1", 0, ssl_context=server_context(cert, key))
    print(port, ca, flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # every client is connected
    start = time.process_time()
    print("go", flush=True)
    await all_in.wait()
    print(f"{(time.process_time() - start) / expected * 1e6:.2f}", flush=True)


async def send(port: int, ca: str, proc: subprocess.Popen[str], n: int, m: int) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    ctx = ClientTrust(ca_file=ca).context("wss://127.0.0.1")
    conns = [
        await Connect(f"wss://127.0.0.1:{port}", ssl=ctx, proxy=None, ping_interval=None)
        for _ in range(n)
    ]
    proc.stdin.write("ready\n")
    proc.stdin.flush()
    await asyncio.to_thread(proc.stdout.readline)
    frame = codec.encode(Ack(id="1", reply_to="x"))
    for _ in range(m):
        for c in conns:
            await c.send(frame)
        await asyncio.sleep(0.01)  # a wave, then the next: as agents' reports come
    return float(await asyncio.to_thread(proc.stdout.readline))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--frames", type=int, default=40, help="per connection")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    expected = args.connections * args.frames
    if args.serve:
        asyncio.run(serve(args.serve, expected))
        return 0
    print(f"server CPU per frame received, {args.connections} connections x {args.frames} frames")
    for _ in range(args.repeat):
        for mode in MODES:
            argv = [sys.executable, __file__, "--serve", mode]
            argv += ["--connections", str(args.connections), "--frames", str(args.frames)]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert proc.stdout is not None
                port, ca = proc.stdout.readline().split()
                us = asyncio.run(send(int(port), ca, proc, args.connections, args.frames))
                print(f"  {mode:8} {us:6.2f} us", flush=True)
            finally:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
