"""atheris target: the msgpack codec and message checks against coverage-guided input.

    pip install atheris
    python fuzzing/fuzz_codec.py -atheris_runs=200000 fuzzing/corpus

The property: any bytes decode to a message or raise ``ProtocolError``; nothing else escapes.
The same for the decoder a peer meets before it is authenticated (``codec.HELLO_LIMITS``),
which must also bound what it builds while decoding: a frame over 16 KiB is refused by its size,
and every array, map, string and binary it returns is within the limits.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from protocol import codec
    from protocol.conditions import ConditionError, parse_condition
    from protocol.errors import ProtocolError


def _within(obj: object, limits: codec.Limits) -> int:
    """Count the objects in a decoded frame; fail on any container over ``limits``."""
    if isinstance(obj, list):
        if len(obj) > limits.max_array_len:
            raise AssertionError(f"an array of {len(obj)} passed the hello limits")
        return 1 + sum(_within(item, limits) for item in obj)
    if isinstance(obj, dict):
        if len(obj) > limits.max_map_len:
            raise AssertionError(f"a map of {len(obj)} passed the hello limits")
        return 1 + sum(_within(k, limits) + _within(v, limits) for k, v in obj.items())
    if isinstance(obj, str) and len(obj.encode()) > limits.max_str_len:
        raise AssertionError("a string over the hello limits")
    if isinstance(obj, bytes) and len(obj) > limits.max_bin_len:
        raise AssertionError("a binary over the hello limits")
    return 1


def test_one_input(data: bytes) -> None:
    try:
        codec.decode(data)
    except ProtocolError:
        pass
    # Before hello: bounded while decoding, not after.
    try:
        obj = codec.decode_frame(data, codec.HELLO_LIMITS)
    except ProtocolError:
        pass
    else:
        if len(data) > codec.HELLO_LIMITS.max_frame_bytes:
            raise AssertionError("a frame over 16 KiB passed the hello limits")
        if _within(obj, codec.HELLO_LIMITS) > len(data):
            raise AssertionError("more objects than bytes")
    try:
        codec.decode(data, codec.HELLO_LIMITS)
    except ProtocolError:
        pass
    # The condition parser sees text from job documents: same promise, its own error.
    try:
        parse_condition(data.decode("utf-8", errors="replace"))
    except ConditionError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
