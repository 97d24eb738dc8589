"""atheris target: the msgpack codec and message checks against coverage-guided input.

    pip install atheris
    python fuzzing/fuzz_codec.py -atheris_runs=200000 fuzzing/corpus

The property: any bytes decode to a message or raise ``ProtocolError``; nothing else escapes.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from protocol import codec
    from protocol.conditions import ConditionError, parse_condition
    from protocol.errors import ProtocolError


def test_one_input(data: bytes) -> None:
    try:
        codec.decode(data)
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
