"""The sans-I/O heart of taskfleet.

Everything two roles must agree on lives here: message classes, the msgpack codec
and its limits, the handshake and session rules, task documents and their
validation. Nothing in this package performs I/O: no asyncio, no sockets, no
database, no subprocesses. ``tests/protocol/test_sans_io.py`` enforces that.
"""

PROTOCOL_VERSION = 1
"""Version spoken on the wire. A peer with another version is refused."""

__all__ = ["PROTOCOL_VERSION"]
