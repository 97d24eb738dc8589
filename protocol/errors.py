"""One exception tree for every error a taskfleet user or peer can meet.

TaskfleetError
├── ProtocolError          a peer broke the wire rules; carries a close code
│   ├── FrameError         the bytes are not one bounded msgpack map
│   ├── MessageError       the map is not a valid message (type, fields)
│   ├── HandshakeError     hello refused (version, role, credentials)
│   └── SessionError       a message not allowed in this state or role
├── ValidationError        a document (task, job) is invalid; lists every problem
└── RemoteError            the other side answered a request with an error
"""

from __future__ import annotations

from dataclasses import dataclass


class TaskfleetError(Exception):
    """Root of every taskfleet error."""


class ProtocolError(TaskfleetError):
    """A peer broke the protocol. ``code`` is machine-readable, ``close_code`` goes on the wire."""

    code: str = "protocol_error"
    close_code: int = 4400

    def __init__(self, message: str, *, code: str | None = None, close_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if close_code is not None:
            self.close_code = close_code


class FrameError(ProtocolError):
    """The frame could not be decoded into one msgpack map within the limits."""

    code = "bad_frame"
    close_code = 4400


class MessageError(ProtocolError):
    """The frame decoded, but it is not a valid message: unknown type, missing or mistyped field."""

    code = "bad_message"
    close_code = 4422


class HandshakeError(ProtocolError):
    """The ``hello`` was refused."""

    code = "handshake_refused"
    close_code = 4401


class SessionError(ProtocolError):
    """A message that this role may not send, or not in this state."""

    code = "not_allowed"
    close_code = 4403


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in a document: where (a field path like ``params.timeout_s``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ValidationError(TaskfleetError):
    """A document failed validation. ``problems`` lists every problem found, by field path."""

    def __init__(self, what: str, problems: list[Problem]):
        self.what = what
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{what} is invalid ({len(problems)} problem(s)):\n{lines}")


class RemoteError(TaskfleetError):
    """The peer answered with an ``error`` message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message
