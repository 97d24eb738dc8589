"""The msgpack codec: every message survives a round trip, and every limit is enforced."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from protocol.codec import DEFAULT_LIMITS, Limits, decode, decode_frame, encode
from protocol.errors import FrameError
from protocol.messages import (
    MESSAGE_TYPES,
    Dispatch,
    Execute,
    Report,
    Reports,
    Target,
    Tickle,
    to_wire,
)
from tests.protocol.samples import SAMPLES


def test_samples_cover_every_message_type() -> None:
    """Every wire type in MESSAGE_TYPES has a sample in samples.py, so none escapes the round trip."""
    assert set(SAMPLES) == set(MESSAGE_TYPES)
    for name, message in SAMPLES.items():
        assert type(message) is MESSAGE_TYPES[name]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name: str) -> None:
    """encode then decode gives back an equal message of the same class, nested records included."""
    message = SAMPLES[name]
    data = encode(message)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(message)
    assert back == message


def test_round_trip_rebuilds_nested_records() -> None:
    """Nested Target and Report maps come back as dataclasses, not plain dicts."""
    dispatch = decode(encode(SAMPLES["dispatch"]))
    assert isinstance(dispatch, Dispatch)
    assert all(isinstance(t, Target) for t in dispatch.targets)
    assert dispatch.targets[0].tokens == {"COMPUTERNAME": "pc-0042", "RUNID": "17"}
    reports = decode(encode(SAMPLES["reports"]))
    assert isinstance(reports, Reports)
    assert all(isinstance(r, Report) for r in reports.items)
    assert reports.items[1].return_code == 3
    assert reports.items[0].return_code is None


def test_wire_form_is_a_map_with_type() -> None:
    """The encoded frame is one msgpack map holding the wire name under "type"."""
    raw = msgpack.unpackb(encode(SAMPLES["ack"]), raw=False)
    assert raw == {"type": "ack", "id": "t3", "reply_to": "n9"}
    assert to_wire(SAMPLES["cancel"])["type"] == "cancel"


def test_integer_given_for_float_field_decodes_as_float() -> None:
    """A peer may send 30 where a float is expected; it arrives as 30.0."""
    frame = msgpack.packb(
        {
            "type": "execute",
            "id": "x",
            "run_id": 1,
            "instance_id": 2,
            "task": {},
            "tokens": {},
            "timeout_s": 30,
        }
    )
    message = decode(frame)
    assert isinstance(message, Execute)
    assert message.timeout_s == 30.0
    assert isinstance(message.timeout_s, float)


# -- limits -----------------------------------------------------------------------------------

SMALL = Limits(
    max_frame_bytes=256,
    max_str_len=8,
    max_bin_len=8,
    max_array_len=4,
    max_map_len=4,
    max_depth=3,
)


def _pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def _refused(data: Any, limits: Limits = SMALL) -> FrameError:
    with pytest.raises(FrameError) as info:
        decode_frame(data, limits)
    return info.value


def test_frame_over_max_frame_bytes_is_refused_with_1009() -> None:
    """A frame longer than max_frame_bytes is refused before parsing, with close code 1009."""
    data = _pack({"s": "x" * 300})
    err = _refused(data, Limits(max_frame_bytes=len(data) - 1))
    assert err.code == "frame_too_large"
    assert err.close_code == 1009
    assert str(len(data)) in err.message


def test_frame_of_exactly_max_frame_bytes_is_accepted() -> None:
    """The frame limit is inclusive: a frame of exactly max_frame_bytes decodes."""
    data = _pack({"s": "x" * 300})
    assert decode_frame(data, Limits(max_frame_bytes=len(data))) == {"s": "x" * 300}


def test_default_frame_limit_refuses_oversized_frame() -> None:
    """The default limit refuses a frame one byte over 1 MiB with 1009."""
    err = _refused(b"\x00" * (DEFAULT_LIMITS.max_frame_bytes + 1), DEFAULT_LIMITS)
    assert err.close_code == 1009


def test_values_at_each_limit_are_accepted() -> None:
    """A frame exactly at the string, array, map and depth limits decodes."""
    obj = {"a": "x" * 8, "b": [1, 2, 3, 4], "c": {"d": [0]}, "e": b"12345678"}
    assert decode_frame(_pack(obj), SMALL) == obj


@pytest.mark.parametrize(
    ("what", "obj", "needle"),
    [
        ("string", {"a": "x" * 9}, "max_str_len"),
        ("binary", {"a": b"x" * 9}, "max_bin_len"),
        ("array", {"a": [1, 2, 3, 4, 5]}, "max_array_len"),
        ("map", {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, "max_map_len"),
        ("nested map", {"a": {"1": 1, "2": 2, "3": 3, "4": 4, "5": 5}}, "max_map_len"),
    ],
)
def test_size_limits_are_refused(what: str, obj: Any, needle: str) -> None:
    """A string, binary, array or map longer than its limit is a FrameError with close code 4400."""
    err = _refused(_pack(obj))
    assert err.close_code == 4400
    assert err.code == "bad_frame"
    assert needle in err.message, what


def test_nesting_deeper_than_max_depth_is_refused() -> None:
    """Containers nested one level deeper than max_depth are refused with close code 4400."""
    assert decode_frame(_pack({"a": {"b": [1]}}), SMALL) == {"a": {"b": [1]}}
    err = _refused(_pack({"a": {"b": [[1]]}}))
    assert err.close_code == 4400
    assert "deeper than 3" in err.message


def test_absurd_nesting_with_default_limits_is_refused() -> None:
    """Thousands of nested arrays are refused with a FrameError, not a crash."""
    err = _refused(b"\x81\xa1a" + b"\x91" * 2000 + b"\x00", DEFAULT_LIMITS)
    assert err.close_code == 4400


@pytest.mark.parametrize(
    "ext",
    [msgpack.ExtType(5, b""), msgpack.ExtType(5, b"abc"), msgpack.Timestamp(1, 0)],
    ids=["empty-ext", "ext", "timestamp"],
)
def test_msgpack_extension_types_are_refused(ext: Any) -> None:
    """Any msgpack ext type, the built-in timestamp included, is a FrameError with close code 4400."""
    err = _refused(_pack({"a": ext}))
    assert err.close_code == 4400


def test_non_string_map_keys_are_refused() -> None:
    """An integer map key breaks strict_map_key and is refused with close code 4400."""
    err = _refused(_pack({"type": "ack", 1: "x"}))
    assert err.close_code == 4400
    assert "map key" in err.message


def test_text_frame_is_refused() -> None:
    """A str (a WebSocket text frame) is refused with close code 4400, asking for binary."""
    err = _refused('{"type": "hello"}')
    assert err.close_code == 4400
    assert "text frames" in err.message


@pytest.mark.parametrize(
    "data",
    [b"\xc1", b"\xc1garbage\xff", b"", b"\x80\x80"],
    ids=["reserved-byte", "garbage", "empty", "two-maps"],
)
def test_garbage_bytes_are_refused(data: bytes) -> None:
    """Bytes that are not exactly one msgpack object are a FrameError with close code 4400."""
    assert _refused(data).close_code == 4400


def test_truncated_msgpack_is_refused() -> None:
    """A valid frame cut short is a FrameError with close code 4400."""
    data = encode(SAMPLES["hello"])
    for cut in (1, len(data) // 2, len(data) - 1):
        err = _refused(data[:cut], DEFAULT_LIMITS)
        assert err.close_code == 4400


@pytest.mark.parametrize("obj", [[1, 2], 7, "hello", None], ids=["array", "int", "str", "nil"])
def test_frame_that_is_not_a_map_is_a_frame_error(obj: Any) -> None:
    """A well-formed msgpack frame holding something other than a map is a FrameError (4400)."""
    with pytest.raises(FrameError) as info:
        decode(_pack(obj))
    assert info.value.close_code == 4400
    assert info.value.code == "bad_frame"


def test_decode_applies_the_given_limits() -> None:
    """decode() passes its limits to the frame check, so a hostile message is refused early."""
    frame = encode(Tickle(id="x", computers=["a", "b", "c", "d", "e"]))
    assert decode(frame) == Tickle(id="x", computers=["a", "b", "c", "d", "e"])
    with pytest.raises(FrameError):
        decode(frame, SMALL)
