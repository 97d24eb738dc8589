"""msgpack codec with limits: bytes in, a checked message out, and back.

Every limit is enforced before a handler sees anything, so a hostile peer costs at
most one bounded frame. Breaking a limit raises :class:`~protocol.errors.FrameError`
(close code 4400) or, for frames over ``max_frame_bytes``, close code 1009.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import FrameError
from protocol.messages import Message, depth_ok, from_wire, to_wire


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one frame. The defaults suit every role; dispatches are chunked to fit."""

    max_frame_bytes: int = 1 << 20
    max_str_len: int = 1 << 20
    max_bin_len: int = 1 << 16
    max_array_len: int = 10_000
    max_map_len: int = 1_024
    max_depth: int = 12


DEFAULT_LIMITS = Limits()

HELLO_LIMITS = Limits(
    max_frame_bytes=16 << 10,
    max_str_len=8 << 10,
    max_bin_len=1 << 10,
    max_array_len=1_024,
    max_map_len=64,
    max_depth=8,
)
"""Bounds on what a peer may send before it is authenticated (its ``hello`` and ``proof``).

A ``hello`` fits in a few KiB (an agent's with a ticket and a few dozen addresses: under 3 KiB),
so an unknown peer's frame is held to 16 KiB, and msgpack stops at the first string, array or
map over these lengths as it reads its header, before it builds anything. A frame of a million
empty arrays (one MiB) cost the NS 0.19 s of CPU and hundreds of MB under the default limits;
under these it is refused at its header, and a 16 KiB frame holds at most 16 Ki objects."""


def _no_ext(code: int, data: bytes) -> Any:
    raise FrameError(f"msgpack extension type {code} is not allowed")


def _unpack(data: bytes | bytearray | memoryview, limits: Limits) -> Any:
    """msgpack-decode one frame within every limit but nesting depth."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError("text frames are not accepted; send binary msgpack")
    if len(data) > limits.max_frame_bytes:
        raise FrameError(
            f"frame of {len(data)} bytes exceeds the limit of {limits.max_frame_bytes}",
            code="frame_too_large",
            close_code=1009,
        )
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_no_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except FrameError:
        raise
    except Exception as exc:  # msgpack raises a family of unrelated exceptions
        raise FrameError(f"not a valid msgpack frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"a frame must hold one msgpack map, got {type(obj).__name__}")
    return obj


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode one frame to a plain object, enforcing every limit. Raises :class:`FrameError`."""
    obj = _unpack(data, limits)
    if not depth_ok(obj, limits.max_depth):
        raise FrameError(f"frame nests deeper than {limits.max_depth} levels")
    return obj


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode one frame into a checked :class:`Message`.

    The nesting limit is enforced by the message's compiled checker in the same walk that
    checks the fields (``from_wire``), not by a second pass over the frame.
    """
    return from_wire(_unpack(data, limits), limits.max_depth)


def encode(message: Message) -> bytes:
    """Encode a message for the wire."""
    return bytes(msgpack.packb(to_wire(message), use_bin_type=True))
