"""Fuzzing with hypothesis: the codec, and a live server, against random and mutated frames.

The server runs in its own thread and event loop, so that hypothesis can drive a plain
synchronous client. Whatever arrives, the server closes that one connection with a documented
code (or keeps it open), never crashes, never leaks a task, and still serves a real agent.
"""

from __future__ import annotations

import asyncio
import threading

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidMessage
from websockets.sync.client import connect as sync_connect

from admin.client import AdminClient
from agent.agent import Agent
from protocol import codec
from protocol.errors import ProtocolError
from protocol.messages import Message
from server.core import NotificationServer
from tests.helpers import INSECURE, task_doc, until, wait_run
from tests.protocol.samples import SAMPLES

DOCUMENTED = {1000, 1009, 4400, 4401, 4402, 4403, 4405, 4408, 4409, 4422, 4429, 4431, 4432}
VALID = [codec.encode(m) for m in SAMPLES.values()]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, cut, or spliced: close to real, the worst kind."""
    frame = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        i = draw(st.integers(0, max(len(frame) - 1, 0)))
        if op == "flip" and frame:
            frame[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del frame[i:]
        else:
            frame[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(frame)


def random_maps() -> st.SearchStrategy[bytes]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.text(max_size=20),
        st.binary(max_size=20),
    )
    values = st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    keys = st.sampled_from(
        ["type", "id", "version", "role", "identity", "credentials", "items", "op", "x"]
    )
    types = st.sampled_from([*[m.TYPE for m in SAMPLES.values()], "nope"])
    return st.builds(
        lambda d, t: msgpack.packb({**d, "type": t}),
        st.dictionaries(keys, values, max_size=6),
        types,
    )


FRAMES = st.one_of(st.binary(max_size=400), mutated(), random_maps())


@given(FRAMES)
@settings(max_examples=400, deadline=None)
def test_codec_returns_a_message_or_a_protocol_error(data: bytes) -> None:
    """Any bytes decode to a message or raise a ProtocolError (FrameError/MessageError): never
    another exception."""
    try:
        assert isinstance(codec.decode(data), Message)
    except ProtocolError:
        pass


def _header(prefix: int, size: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, 2 ** (8 * size) - 1).map(
        lambda n: bytes([prefix]) + n.to_bytes(size, "big")
    )


# msgpack headers of every container and string kind, with any length (the lengths are claims:
# the bytes that follow may be fewer), and a few whole small values.
PIECES = st.one_of(
    st.integers(0, 15).map(lambda n: bytes([0x90 | n])),  # fixarray
    st.integers(0, 15).map(lambda n: bytes([0x80 | n])),  # fixmap
    _header(0xDC, 2),  # array 16
    _header(0xDD, 4),  # array 32
    _header(0xDE, 2),  # map 16
    _header(0xDF, 4),  # map 32
    _header(0xDB, 4),  # str 32
    _header(0xC6, 4),  # bin 32
    st.integers(0, 255).map(lambda n: b"\xd9" + bytes([n]) + b"a" * n),  # a whole str 8
    st.sampled_from([b"\x90", b"\x80", b"\xc0", b"\xa1a", b"\x01"]),
)
HELLO_FRAMES = st.builds(
    lambda head, pieces: head + b"".join(piece * times for piece, times in pieces),
    st.sampled_from([b"\x81\xa4type\xa5hello", b"\x82\xa4type\xa5hello\xa1x", b""]),
    st.lists(st.tuples(PIECES, st.integers(1, 3_000)), max_size=12),
)


def _within(obj: object, limits: codec.Limits) -> int:
    """Count the objects in a decoded frame, checking each container against ``limits``."""
    if isinstance(obj, list):
        assert len(obj) <= limits.max_array_len
        return 1 + sum(_within(item, limits) for item in obj)
    if isinstance(obj, dict):
        assert len(obj) <= limits.max_map_len
        return 1 + sum(_within(k, limits) + _within(v, limits) for k, v in obj.items())
    if isinstance(obj, str):
        assert len(obj.encode()) <= limits.max_str_len
    if isinstance(obj, bytes):
        assert len(obj) <= limits.max_bin_len
    return 1


@given(HELLO_FRAMES)
@settings(max_examples=300, deadline=None)
def test_the_decoder_before_hello_bounds_every_object_while_decoding(data: bytes) -> None:
    """What a peer may send before it is authenticated (``codec.HELLO_LIMITS``): a frame over
    16 KiB is refused by its size (1009) before msgpack sees it; any other decodes to a plain
    map whose every array, map, string and binary is within the limits (msgpack stops at the
    first header over them), or is refused with a ProtocolError; never another exception."""
    limits = codec.HELLO_LIMITS
    try:
        obj = codec.decode_frame(data, limits)
    except ProtocolError as exc:
        if len(data) > limits.max_frame_bytes:
            assert exc.close_code == 1009
        return
    assert len(data) <= limits.max_frame_bytes
    assert _within(obj, limits) <= len(data)  # each object took at least a byte
    try:
        assert isinstance(codec.decode(data, limits), Message)
    except ProtocolError:
        pass


class ServerThread:
    """An NS in a thread of its own, with its own event loop."""

    def __init__(self, data_dir: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ns = NotificationServer(data_dir=data_dir, insecure=True, handshake_timeout_s=2)
        self.call(self.ns.start())

    def call(self, coro, timeout_s: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks())

        return self.call(count())

    def close(self) -> None:
        self.call(self.ns.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerThread(str(tmp_path_factory.mktemp("fuzz") / "ns"))
    try:
        yield s
    finally:
        s.close()


@given(st.lists(FRAMES, min_size=1, max_size=4))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_live_server_closes_bad_peers_with_documented_codes(server, frames: list[bytes]) -> None:
    """Random and mutated frames on a live connection: the server closes it with a documented
    code, or leaves it open; it never crashes."""
    try:
        ws = sync_connect(
            server.ns.url, compression=None, proxy=None, open_timeout=10, max_size=2**22
        )
    except InvalidMessage:  # pragma: no cover - the server was too busy to answer the upgrade
        pytest.fail("the server did not accept a new connection")
    with ws:
        try:
            for frame in frames:
                ws.send(frame)
            for _ in range(10):
                ws.recv(timeout=3)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                assert exc.rcvd.code in DOCUMENTED, (
                    f"undocumented close code {exc.rcvd.code}: {exc.rcvd.reason}"
                )
        except TimeoutError:
            pass  # still open: a frame the server is waiting to complete, within its deadline


def test_after_the_fuzz_no_task_leaked_and_a_real_agent_is_served(server, tmp_path):
    """Runs after the live fuzz (same server): its task count settles back, and an enrolled
    agent registers and runs a task."""

    async def settle() -> int:
        async def few() -> bool:
            return len(asyncio.all_tasks()) <= 12

        await until(few, "the server's tasks to settle after the fuzz", 30)
        return len(asyncio.all_tasks())

    assert server.call(settle(), 40) <= 12

    async def agent_runs() -> str:
        ns = server.ns
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            enrol = (await c.call("tokens.create", uses=1))["token"]
            agent = Agent(
                server_url=ns.url,
                name="after-fuzz",
                trust=INSECURE,
                enrol_token=enrol,
                data_dir=str(tmp_path / "a"),
            )
            task = asyncio.create_task(agent.run())
            try:
                await asyncio.wait_for(agent.connected.wait(), 15)
                await c.call("task.add", text=task_doc("fz", "echo alive"), filename="fz.toml")
                final = await wait_run(
                    c, (await c.call("run.start", task="fz", computers=["after-fuzz"]))["run_id"]
                )
                return str(final["instances"][0]["output"]).strip()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    assert server.call(agent_runs(), 60) == "alive"
