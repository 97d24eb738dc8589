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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

from protocol.errors import FrameError, MessageError

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
    mac: bytes = b""
    """The NS's authentication of this target for its agent (``protocol.workauth``): the relay
    copies it into the ``execute``; empty from an NS older than work authentication."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Live:
    """Output a script produced while it runs, sent as it comes (docs/protocol.md, "Live
    output"): at most ``LIVE_TEXT_BYTES`` of it, the newest; ``skipped`` bytes produced before
    it since the last piece were not sent. Never stored: the result carries the whole output."""

    text: str
    skipped: int = 0
    at: float = 0.0
    """When the agent sent it (UNIX seconds, UTC)."""


LIVE_TEXT_BYTES = 4096
"""The most output one live piece carries (UTF-8 bytes); a relay drops a larger one."""


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
    live: Live | None = None
    """Live output of a ``running`` instance or step: a report that carries it moves nothing
    and is never stored (older receivers ignore the field and see a repeated ``running``)."""

    def with_computer(self, computer: str) -> Report:
        """This report as sent by ``computer`` (a relay names the agent on every report it takes
        before the report goes upstream): ``dataclasses.replace`` at a third of its cost."""
        return Report(
            instance_id=self.instance_id,
            state=self.state,
            step=self.step,
            computer=computer,
            return_code=self.return_code,
            output=self.output,
            reason=self.reason,
            started_at=self.started_at,
            ended_at=self.ended_at,
            live=self.live,
        )


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
    acks: list[str] = field(default_factory=list)
    """Ids of this agent's ``reports`` messages the relay has stored since its last ack: an
    acknowledgement riding on the next work instead of a ``reports_ack`` of its own."""
    mac: bytes = b""
    """``Target.mac`` as the NS sent it: an agent that holds a work key runs nothing whose MAC
    is missing or wrong (``protocol.workauth.check_mac``)."""


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
    more: list[str] = field(default_factory=list)
    """Further ``reports`` messages acknowledged at once (a relay's deferred acks)."""


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
#
# Each dataclass gets a checker compiled once from its annotations: a tuple of (field name,
# value checker, required) and closures per hint, so decoding a report costs a few dict lookups
# and isinstance calls, not ``typing`` reflection per value. Paths are built only on error: a
# checker raises ``_Bad`` and each enclosing level adds its part of the path as it goes up.
# The same walk enforces the nesting limit: typed containers use up one level each, and values
# typed ``Any`` (and unknown fields) are walked for depth (``depth_ok``).

T = TypeVar("T")

Checker = Callable[[Any, int], Any]
"""``check(value, budget)``: the checked value; ``budget`` is how many container levels may
still open at ``value`` (a container needs at least 1)."""


class _Bad(Exception):
    """A value does not fit its annotation; ``where`` collects the path, innermost first."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.where: list[str] = [where] if where else []


class _TooDeep(Exception):
    """Containers nest deeper than the frame limit allows."""


def depth_ok(obj: Any, budget: int) -> bool:
    """True when ``obj`` opens at most ``budget`` nested containers (a scalar needs none)."""
    level = [obj]
    while level:
        below: list[Any] = []
        for value in level:
            if isinstance(value, dict):
                below.extend(v for v in value.values() if isinstance(v, (dict, list)))
            elif isinstance(value, list):
                below.extend(v for v in value if isinstance(v, (dict, list)))
            else:
                continue
            if budget < 1:
                return False
        budget -= 1
        level = below
    return True


def _check_any(value: Any, budget: int) -> Any:
    if isinstance(value, (dict, list)) and not depth_ok(value, budget):
        raise _TooDeep
    return value


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_int(value: Any, budget: int) -> Any:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _Bad(f"expected an integer, got {_type_name(value)}")
    return value


def _check_float(value: Any, budget: int) -> Any:
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"expected a number, got {_type_name(value)}")
    return float(value)


def _check_instance(kind: type[Any]) -> Checker:
    def check(value: Any, budget: int) -> Any:
        if not isinstance(value, kind):
            raise _Bad(f"expected {kind.__name__}, got {_type_name(value)}")
        return value

    return check


def _check_optional(inner: Checker) -> Checker:
    def check(value: Any, budget: int) -> Any:
        return None if value is None else inner(value, budget)

    return check


def _check_list(item: Checker, exact: type[Any] | None = None) -> Checker:
    """``list[...]``. With ``exact`` (a scalar item type), a list whose items are all of exactly
    that type passes in one loop, as it is; anything else takes the general path, which makes
    the same decision and names the item at fault."""

    def check(value: Any, budget: int) -> Any:
        if exact is not None and type(value) is list and budget >= 1:
            for v in value:
                if type(v) is not exact:
                    break
            else:
                return value
        if not isinstance(value, list):
            raise _Bad(f"expected a list, got {_type_name(value)}")
        if budget < 1:
            raise _TooDeep
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v, budget - 1))
            except _Bad as bad:
                bad.where.append(f"[{i}]")
                raise
        return out

    return check


def _check_dict(item: Checker | None, exact: type[Any] | None = None) -> Checker:
    """``dict[str, ...]`` (``item`` None: values typed ``Any``, walked for depth only).

    The common map passes in one loop with no call per entry: string keys, and values of
    exactly ``exact`` (a scalar type) or, for ``Any``, scalars and containers within the depth
    left. Anything else takes the general path, which makes the same decision and names the
    entry at fault."""

    def check(value: Any, budget: int) -> Any:
        if type(value) is dict and budget >= 1:
            if exact is not None:
                for k, v in value.items():
                    if type(k) is not str or type(v) is not exact:
                        break
                else:
                    return value
            elif item is None:
                for k, v in value.items():
                    if type(k) is not str or (
                        isinstance(v, (dict, list)) and not depth_ok(v, budget - 1)
                    ):
                        break
                else:
                    return value
        if not isinstance(value, dict):
            raise _Bad(f"expected a map, got {_type_name(value)}")
        if budget < 1:
            raise _TooDeep
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Bad(f"map keys must be strings, got {_type_name(k)}")
            if item is None:
                _check_any(v, budget - 1)
            else:
                try:
                    item(v, budget - 1)
                except _Bad as bad:
                    bad.where.append(f".{k}")
                    raise
        return value

    return check


_COMPILED: dict[type[Any], tuple[Callable[[dict[Any, Any], int], Any], frozenset[str]]] = {}


def _compile_hint(hint: Any) -> Checker:
    if hint is Any:
        return _check_any
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        inner = [a for a in args if a is not type(None)]
        checker = _compile_hint(inner[0])
        return _check_optional(checker) if type(None) in args else checker
    if origin is list:
        (item,) = typing.get_args(hint)
        return _check_list(_compile_hint(item), item if item in _SCALARS else None)
    if origin is dict:
        _, vhint = typing.get_args(hint)
        if vhint is Any:
            return _check_dict(None)
        return _check_dict(_compile_hint(vhint), vhint if vhint in _SCALARS else None)
    if dataclasses.is_dataclass(hint):
        build = _builder(typing.cast(type[Any], hint))

        def check_record(value: Any, budget: int) -> Any:
            if not isinstance(value, dict):
                raise _Bad(f"expected a map, got {_type_name(value)}")
            if budget < 1:
                raise _TooDeep
            return build(value, budget - 1)

        return check_record
    if hint is float:
        return _check_float
    if hint is int:
        return _check_int
    if isinstance(hint, type):
        return _check_instance(hint)
    return _check_any


_SCALARS = (str, int, float, bool, bytes)


def _exact(hint: Any) -> tuple[type[Any] | None, bool]:
    """For a field's hint: the scalar type whose exact instances its checker returns unchanged
    (None for containers, records and ``Any``), and whether it allows None."""
    nullable = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = typing.get_args(hint)
        nullable = type(None) in args
        inner = [a for a in args if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else None
    return (hint if hint in _SCALARS else None), nullable


def _builder(cls: type[T]) -> Callable[[dict[Any, Any], int], T]:
    """The compiled constructor of ``cls`` from a map (``budget`` counts below the map)."""
    compiled = _COMPILED.get(cls)
    if compiled is not None:
        # A string cast: ``Callable[...]`` spelled out would be built anew on every frame.
        return typing.cast("Callable[[dict[Any, Any], int], T]", compiled[0])
    hints = typing.get_type_hints(cls)
    fields = tuple(
        (
            f.name,
            _compile_hint(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            *_exact(hints[f.name]),
        )
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    )
    names = frozenset(name for name, _, _, _, _ in fields)
    # A message's map also holds its ``type`` (checked by ``from_wire``): not an unknown field.
    typed = issubclass(cls, Message)

    def build(data: dict[Any, Any], budget: int) -> T:
        kwargs: dict[str, Any] = {}
        for name, check, required, exact, nullable in fields:
            if name in data:
                value = data[name]
                # A scalar of exactly its type (or None where allowed) passes as it is: the
                # checker would return it unchanged, so the call is skipped.
                if type(value) is exact or (nullable and value is None):
                    kwargs[name] = value
                    continue
                try:
                    kwargs[name] = check(value, budget)
                except _Bad as bad:
                    bad.where.append(f".{name}")
                    raise
            elif required:
                raise _Bad("required field is missing", f".{name}")
        if len(data) > len(kwargs) + (typed and "type" in data):
            for k, v in data.items():  # unknown fields are ignored, but bounded too
                if k not in names and isinstance(v, (dict, list)) and not depth_ok(v, budget):
                    raise _TooDeep
        return cls(**kwargs)

    _COMPILED[cls] = (build, names)
    return build


def _build(cls: type[T], data: dict[Any, Any], path: str, max_depth: int = 1 << 30) -> T:
    try:
        return _builder(cls)(data, max_depth - 1)
    except _Bad as bad:
        where = (path + "".join(reversed(bad.where))).lstrip(".")
        raise MessageError(f"{where}: {bad.message}") from None
    except _TooDeep:
        raise FrameError(f"frame nests deeper than {max_depth} levels") from None


def from_wire(data: Any, max_depth: int = 1 << 30) -> Message:
    """Turn a decoded msgpack object into a message, or raise :class:`MessageError`.

    Unknown extra fields are ignored, so a newer peer may add optional fields. Containers
    nested deeper than ``max_depth`` (the frame counting as 1) raise :class:`FrameError`.
    """
    if not isinstance(data, dict):
        raise MessageError(f"a frame must hold a map, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise MessageError("type: required string field is missing")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise MessageError(f"type: unknown message type {kind!r}", code="unknown_type")
    return _build(cls, data, "", max_depth)


_ENCODERS: dict[type[Any], Callable[[Any], dict[str, Any]]] = {}


def _encoder(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    """The compiled ``record → plain map`` of a dataclass (nested records become maps)."""
    enc = _ENCODERS.get(cls)
    if enc is not None:
        return enc
    hints = typing.get_type_hints(cls)
    plain: list[str] = []
    records: list[tuple[str, Callable[[Any], dict[str, Any]]]] = []
    lists: list[tuple[str, Callable[[Any], dict[str, Any]]]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if dataclasses.is_dataclass(hint):
            records.append((f.name, _encoder(typing.cast(type[Any], hint))))
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(inner[0]):
            lists.append((f.name, _encoder(typing.cast(type[Any], inner[0]))))
        elif inner and dataclasses.is_dataclass(inner[0]):
            records.append((f.name, _encoder(typing.cast(type[Any], inner[0]))))
        else:
            plain.append(f.name)

    def encode(value: Any) -> dict[str, Any]:
        out = {name: getattr(value, name) for name in plain}
        for name, sub in records:
            v = getattr(value, name)
            if v is not None:  # an optional record left out is None again on decode
                out[name] = sub(v)
        for name, sub in lists:
            out[name] = [sub(v) for v in getattr(value, name)]
        return out

    _ENCODERS[cls] = encode
    return encode


def to_wire(message: Message) -> dict[str, Any]:
    """The plain map that goes on the wire for ``message``."""
    out: dict[str, Any] = {"type": message.TYPE}
    out.update(_encoder(type(message))(message))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Revoke(Message):
    """NS → TS: an admin rejected or deleted these agents' keys. The TS closes their links and
    refuses every ticket the NS signed for them that expires at or before the time given for
    each (``agent → expires_at``, UNIX seconds on the NS's clock, as in the ticket): tickets
    signed before the revocation, never a later one. Answered by ``ack``."""

    TYPE: ClassVar[str] = "revoke"
    agents: dict[str, int]


MESSAGE_TYPES[Revoke.TYPE] = Revoke
