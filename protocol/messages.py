"""Every message on the wire, as frozen dataclasses.

A message travels as one msgpack map: ``{"type": <TYPE>, "id": <str>, ...fields}``.
``id`` is unique per sender and connection; a reply names the request in ``reply_to``.
Field types are checked on decode from the annotations below (see ``from_wire``), so
a missing or mistyped field is a :class:`~protocol.errors.MessageError`, never a
``KeyError`` deep in a handler.

Nested records (``Target``, ``Report``) are dataclasses too and are checked the same way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

from protocol.errors import MessageError

# -- nested records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One instance of a dispatched step: the computer it is for and its tokens."""

    instance_id: int
    computer: str
    computer_id: int
    tokens: dict[str, str] = field(default_factory=dict)
    local: bool = False
    """True when the relay itself runs the work for this target (a device in a client job)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """Progress or result of one instance. ``state`` is a :class:`protocol.states.InstanceState` value.

    ``received`` and ``running`` are progress; the terminal states carry the result.
    Times are UNIX seconds (float, UTC) measured where the work ran. ``step`` names a step
    of a client job (its id in the job); empty for the instance itself.
    """

    instance_id: int
    state: str
    step: str = ""
    computer: str = ""
    return_code: int | None = None
    output: str = ""
    reason: str = ""
    started_at: float | None = None
    ended_at: float | None = None


# -- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every message. ``TYPE`` is the wire name."""

    TYPE: ClassVar[str] = ""
    id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """First message of every connection, from the connecting side.

    ``role`` is ``agent``, ``taskserver`` or ``admin``; ``identity`` the computer name, the
    TS name or the admin's name. ``credentials``: for an admin ``{"token"}``; for an agent or
    TS ``{"public_key"}`` (raw Ed25519, 32 bytes) and, to enrol at once, ``{"enrol_token"}``;
    an agent connecting to its TS adds ``{"ticket", "ticket_signature", "nonce"}``.
    ``info`` carries role facts: for agents ``os``, ``agent_version``, ``addresses``;
    for a TS its ``url``.
    """

    TYPE: ClassVar[str] = "hello"
    version: int
    role: str
    identity: str
    credentials: dict[str, Any]
    capabilities: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge(Message):
    """Accepting side → connecting side, after ``hello``: prove your key by signing ``nonce``.

    ``server`` is the id the proof must name (see ``protocol.identity.proof_payload``). A TS
    also proves *its* key to an agent: ``signature`` is its signature over the agent's own
    nonce (``hello.credentials.nonce``).
    """

    TYPE: ClassVar[str] = "challenge"
    reply_to: str
    nonce: bytes
    server: str
    signature: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Proof(Message):
    """Connecting side → accepting side: the signature over the challenge's proof payload."""

    TYPE: ClassVar[str] = "proof"
    reply_to: str
    signature: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Message):
    """Accepts a ``hello``. ``config`` is role configuration (an agent's TS, a TS's settings)."""

    TYPE: ClassVar[str] = "welcome"
    reply_to: str
    version: int
    server: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Message):
    """Refuses a request (or the ``hello``). ``code`` is machine-readable."""

    TYPE: ClassVar[str] = "error"
    reply_to: str = ""
    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    """Confirms that a request (a ``dispatch``, a ``cancel``) is durably taken."""

    TYPE: ClassVar[str] = "ack"
    reply_to: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatch(Message):
    """NS → TS (and NS → built-in task service): one step for a batch of computers.

    ``task`` is the resolved task definition (``name``, ``type``, ``kind``, ``params``,
    ``timeout_s``). ``expires_in_s`` is the time left until the run's deadline when sent:
    relays turn it into their own clock, so clock skew between machines does not matter.
    """

    TYPE: ClassVar[str] = "dispatch"
    run_id: int
    task: dict[str, Any]
    expires_in_s: float
    targets: list[Target]


@dataclass(frozen=True, slots=True, kw_only=True)
class Execute(Message):
    """TS → agent: run one instance. ``timeout_s`` is what is left of the run's time limit."""

    TYPE: ClassVar[str] = "execute"
    run_id: int
    instance_id: int
    task: dict[str, Any]
    tokens: dict[str, str]
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Message):
    """Stop these instances: drop them if held, kill their process group if running."""

    TYPE: ClassVar[str] = "cancel"
    instance_ids: list[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tickle(Message):
    """Ask agents to check in now. From NS to TS it names the computers; to an agent it is empty."""

    TYPE: ClassVar[str] = "tickle"
    computers: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reports(Message):
    """Progress and results, batched: agent → TS and TS → NS. Answered by ``reports_ack``."""

    TYPE: ClassVar[str] = "reports"
    items: list[Report]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportsAck(Message):
    """The receiver stored these reports durably; the sender may forget them."""

    TYPE: ClassVar[str] = "reports_ack"
    reply_to: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Presence(Message):
    """TS → NS: computers whose agents connected to or left this TS."""

    TYPE: ClassVar[str] = "presence"
    online: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    full: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(Message):
    """Admin → NS: an operation (``op``) with arguments. Answered by ``response`` or ``error``."""

    TYPE: ClassVar[str] = "request"
    op: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(Message):
    """NS → admin: the answer to a ``request``."""

    TYPE: ClassVar[str] = "response"
    reply_to: str
    data: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Event(Message):
    """NS → admin, after ``watch``: a change in a run (instance progress, run end)."""

    TYPE: ClassVar[str] = "event"
    run_id: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRequest(Message):
    """Agent → its relay: run this task-server step of a client job for me.

    The relay checks that ``instance_id`` is work it holds for this agent's computer, runs
    the step with ``tokens``, and answers ``step_result``. Asking again for the same
    ``(instance_id, step)`` never runs it twice.
    """

    TYPE: ClassVar[str] = "step_request"
    instance_id: int
    step: str
    task: dict[str, Any]
    tokens: dict[str, str]
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult(Message):
    """Relay → agent: the result of a ``step_request``."""

    TYPE: ClassVar[str] = "step_result"
    reply_to: str
    result: Report


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Challenge,
        Proof,
        Welcome,
        Error,
        Ack,
        Dispatch,
        Execute,
        Cancel,
        Tickle,
        Reports,
        ReportsAck,
        Presence,
        Request,
        Response,
        Event,
        StepRequest,
        StepResult,
    )
}
"""Wire name → class. A type not in this table is refused with ``MessageError``."""


# -- conversion to and from plain maps --------------------------------------------------

T = TypeVar("T")

_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        hints = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        _HINTS[cls] = hints
    return hints


def _check(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against a field annotation; return it (records become dataclasses)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(value, inner[0], path)
    if origin is list:
        if not isinstance(value, list):
            raise MessageError(f"{path}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_check(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MessageError(f"{path}: expected a map, got {type(value).__name__}")
        _, vhint = typing.get_args(hint)
        for k, v in value.items():
            if not isinstance(k, str):
                raise MessageError(f"{path}: map keys must be strings, got {type(k).__name__}")
            if vhint is not Any:
                _check(v, vhint, f"{path}.{k}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise MessageError(f"{path}: expected a map, got {type(value).__name__}")
        return _build(typing.cast(type[Any], hint), value, path)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MessageError(f"{path}: expected a number, got {type(value).__name__}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(f"{path}: expected an integer, got {type(value).__name__}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise MessageError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")
    return value


def _build(cls: type[T], data: dict[Any, Any], path: str) -> T:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        where = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], _hints(cls)[f.name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MessageError(f"{where}: required field is missing")
    return cls(**kwargs)


def from_wire(data: Any) -> Message:
    """Turn a decoded msgpack object into a message, or raise :class:`MessageError`.

    Unknown extra fields are ignored, so a newer peer may add optional fields.
    """
    if not isinstance(data, dict):
        raise MessageError(f"a frame must hold a map, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise MessageError("type: required string field is missing")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise MessageError(f"type: unknown message type {kind!r}", code="unknown_type")
    return _build(cls, data, "")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_wire(message: Message) -> dict[str, Any]:
    """The plain map that goes on the wire for ``message``."""
    out: dict[str, Any] = {"type": message.TYPE}
    out.update(_plain(message))
    return out
