"""WebSocket frames the common way, without ``websockets``' general machinery.

Every taskfleet message is one unfragmented binary frame, no extension (``compression=None``).
``websockets`` builds a ``Frame``, checks it and serializes it through a ``BytesIO`` to send one,
and parses one through a chain of generators, an event list and ``process_event`` to receive it:
about 5 µs each way per frame, paid per agent per run by the TS and by every simulated agent.
Here a binary frame is written and read directly, and ``websockets`` keeps everything else:
the opening handshake, control frames (ping, pong, close), text and fragmented frames, limits
and every error, which it answers with its own close codes.

Receiving (:class:`FastFrames`, a mixin for a ``websockets.asyncio`` connection):

- A connection starts on ``websockets``' parser and moves to this one only at a frame boundary
  of it: the connection open, no fragmented message under way, nothing buffered, and its parser
  waiting for the first byte of a frame (``StreamReader.at_eof``). Should ``websockets`` ever
  change so that this cannot be told, the connection simply stays on ``websockets``' parser.
- Then every complete frame that is binary, final, without reserved bits, masked as its side
  requires and within the connection's size limit is handed on as ``process_event`` would:
  to the connection's ``sink`` if it has one (``Link.deliver``), else to the queue ``recv``
  reads. A partial frame waits in a buffer for the rest.
- A complete ping or pong is handed to ``websockets`` alone, which parses exactly that frame
  and is at a frame boundary again (it answers pings and settles pongs as usual).
- Anything else (a close, a text or fragmented frame, a bad header, a frame over the limit)
  hands the rest of the stream, from that frame on, to ``websockets`` for good: it closes the
  connection with the code it always would.
"""

from __future__ import annotations

import os
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import CLIENT, OPEN
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

_AT_EOF = StreamReader.at_eof.__code__
"""The code of the generator ``websockets``' frame parser waits in between frames."""

_BINARY_FIN = 0x82  # FIN, no reserved bits, opcode 2
_PING_FIN = 0x89
_PONG_FIN = 0x8A


def header(length: int, masked: bool) -> bytes:
    """The header of a final binary frame of ``length`` bytes, its mask bit set if ``masked``
    (the masking key, four bytes, follows it)."""
    bit = 0x80 if masked else 0
    if length < 126:
        return bytes((_BINARY_FIN, bit | length))
    if length < 65536:
        return bytes((_BINARY_FIN, bit | 126)) + length.to_bytes(2, "big")
    return bytes((_BINARY_FIN, bit | 127)) + length.to_bytes(8, "big")


def send_binary(ws: Any, data: bytes) -> None:
    """Write one binary message as one frame on an open connection, now.

    The caller checked that the connection is open (``Link.send_now``). Writes ``websockets``
    still holds (none, unless it is mid-call) go first, so frames keep their order."""
    protocol = ws.protocol
    if protocol.expect_continuation_frame or protocol.extensions:
        protocol.send_binary(data)  # never taskfleet's own frames: the general way
        ws.send_data()
        return
    if protocol.writes:
        ws.send_data()
    if protocol.side is CLIENT:
        key = os.urandom(4)
        ws.transport.write(header(len(data), True) + key + apply_mask(data, key))
    else:
        ws.transport.write(header(len(data), False) + data)


class FastFrames:
    """Mixin for a ``websockets.asyncio`` connection: see the module.

    The connection's ``data_received`` calls :meth:`_fast_received`; ``_ws_received`` is
    ``websockets``' own ``data_received`` (the class names it, as the mixin cannot)."""

    _fast: bytearray | None = None
    """None while ``websockets`` parses; the bytes of a partial frame (often none) once here."""
    _fast_off = False
    """The stream went back to ``websockets`` for good."""

    sink: Any = None
    """Takes each data frame instead of the queue ``recv`` reads (``GatedConnection``)."""

    # Provided by the websockets connection this is mixed into.
    protocol: Any
    recv_messages: Any

    def _ws_received(self, data: bytes) -> None:
        raise NotImplementedError

    def _fast_may_start(self) -> bool:
        protocol = self.protocol
        if (
            protocol.state is not OPEN
            or protocol.current_size is not None
            or protocol.expect_continuation_frame
            or protocol.extensions
            or protocol.reader.buffer
            or protocol.parser_exc is not None
        ):
            return False
        gen = protocol.parser
        while True:
            inner = getattr(gen, "gi_yieldfrom", None)
            if inner is None:
                break
            gen = inner
        return getattr(gen, "gi_code", None) is _AT_EOF

    def _fast_give_up(self, rest: bytes | bytearray) -> None:
        self._fast = None
        self._fast_off = True
        if rest:
            self._ws_received(bytes(rest))

    def _fast_received(self, data: bytes) -> None:
        buf = self._fast
        if buf is None:
            if self._fast_off or not self._fast_may_start():
                self._ws_received(data)
                return
            buf = self._fast = bytearray()
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        protocol = self.protocol
        server = protocol.side is not CLIENT
        limit = protocol.max_message_size
        pos, end = 0, len(view)
        while end - pos >= 2:
            b0, b1 = view[pos], view[pos + 1]
            length = b1 & 0x7F
            at = pos + 2
            if length == 126:
                if end - at < 2:
                    break
                length = int.from_bytes(view[at : at + 2], "big")
                at += 2
            elif length == 127:
                if end - at < 8:
                    break
                length = int.from_bytes(view[at : at + 8], "big")
                at += 8
            masked = bool(b1 & 0x80)
            if (
                b0 not in (_BINARY_FIN, _PING_FIN, _PONG_FIN)
                or masked is not server
                or (limit is not None and length > limit)
            ):
                self._fast_give_up(view[pos:])
                return
            stop = at + (4 if masked else 0) + length
            if stop > end:
                break
            if b0 != _BINARY_FIN:
                # A ping or a pong: websockets parses exactly this frame (it answers a ping).
                self._ws_received(bytes(view[pos:stop]))
                pos = stop
                if not self._fast_may_start():
                    self._fast_give_up(view[pos:])
                    return
                continue
            if masked:
                payload = apply_mask(view[at + 4 : stop], view[at : at + 4])
            else:
                payload = bytes(view[at:stop])
            pos = stop
            frame = Frame(Opcode.BINARY, payload)
            # As process_event would: to the sink (Link.deliver), or to the queue recv reads.
            sink = self.sink
            if sink is not None:
                sink(frame)
            else:
                self.recv_messages.put(frame)
        if pos == end:
            buf.clear()
        elif view is buf:
            del buf[:pos]
        else:
            buf[:] = view[pos:]
