"""Handshake and session rules shared by every role.

Theory of operation: the connecting side sends ``hello`` first; the accepting side checks
it with :func:`check_hello` and answers ``welcome`` or ``error`` followed by a close. From
then on a :class:`Session` holds the connection's role: each role may send only the
messages listed for it in ``ALLOWED``; anything else is a :class:`SessionError`.

Close codes (also in docs/protocol.md):

====  ==========================================================
1000  normal close
1009  frame larger than the limit (sent by the WebSocket layer)
4400  frame is not one bounded msgpack map (``bad_frame``)
4401  hello refused: credentials (``unauthorized``)
4402  hello refused: protocol version (``version_mismatch``)
4403  message not allowed for this role or state (``not_allowed``)
4405  key not accepted yet: waits for an admin (``pending``)
4408  no hello before the handshake deadline (``handshake_timeout``)
4409  replaced by a newer connection with the same identity (``replaced``)
4422  frame is a map but not a valid message (``bad_message``, ``unknown_type``)
4429  too many messages per second on this connection (``rate_limited``)
4431  too many connections from this address (``too_many_connections``)
4432  too many keys waiting for acceptance (``too_many_pending``)
====  ==========================================================
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from enum import StrEnum

from protocol import PROTOCOL_VERSION
from protocol.errors import HandshakeError, SessionError
from protocol.messages import Hello, Message, Reports

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
"""What a computer, TS or admin may be called: host-name characters only."""

CLOSE_NORMAL = 1000
CLOSE_TOO_LARGE = 1009
CLOSE_BAD_FRAME = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_VERSION = 4402
CLOSE_NOT_ALLOWED = 4403
CLOSE_HANDSHAKE_TIMEOUT = 4408
CLOSE_REPLACED = 4409
CLOSE_PENDING = 4405
CLOSE_BAD_MESSAGE = 4422
CLOSE_RATE_LIMITED = 4429
CLOSE_TOO_MANY_CONNECTIONS = 4431
CLOSE_TOO_MANY_PENDING = 4432


class Role(StrEnum):
    """Who is on the other end of a connection."""

    AGENT = "agent"
    TASKSERVER = "taskserver"
    ADMIN = "admin"
    CHILD = "child"
    """A child NS linked to its parent (issue 24: the hierarchy); both sides ask and answer."""


# What each role may send once the session is open, to the side that accepted it.
ALLOWED: dict[Role, frozenset[str]] = {
    Role.AGENT: frozenset({"reports", "step_request"}),
    Role.TASKSERVER: frozenset({"reports", "presence", "ack"}),
    Role.ADMIN: frozenset({"request"}),
    Role.CHILD: frozenset({"request", "response", "error"}),
}

# What the accepting side may send to each role (checked by the connecting side).
ALLOWED_DOWN: dict[Role, frozenset[str]] = {
    Role.AGENT: frozenset({"execute", "cancel", "tickle", "reports_ack", "step_result", "error"}),
    Role.TASKSERVER: frozenset({"dispatch", "cancel", "tickle", "reports_ack", "error", "revoke"}),
    Role.ADMIN: frozenset({"response", "error", "event"}),
    Role.CHILD: frozenset({"request", "response", "error"}),
}


def check_hello(
    message: Message,
    *,
    roles: frozenset[Role],
    version: int = PROTOCOL_VERSION,
) -> Hello:
    """Validate the first message of a connection; return it as a :class:`Hello`.

    Raises :class:`HandshakeError` with the close code to use. Credentials are checked
    afterwards by the role's authenticator (a key proof, or an admin token).
    """
    if not isinstance(message, Hello):
        raise HandshakeError(
            f"the first message must be 'hello', got {message.TYPE!r}",
            code="hello_expected",
            close_code=CLOSE_NOT_ALLOWED,
        )
    if message.version != version:
        raise HandshakeError(
            f"protocol version mismatch: this server speaks version {version}, "
            f"the peer sent version {message.version}; upgrade the older side",
            code="version_mismatch",
            close_code=CLOSE_VERSION,
        )
    try:
        role = Role(message.role)
    except ValueError:
        raise HandshakeError(
            f"unknown role {message.role!r}; expected one of agent, taskserver, admin, child",
            code="bad_role",
            close_code=CLOSE_NOT_ALLOWED,
        ) from None
    if role not in roles:
        allowed = ", ".join(sorted(roles))
        raise HandshakeError(
            f"role {role} is not served on this listener (it serves: {allowed})",
            code="bad_role",
            close_code=CLOSE_NOT_ALLOWED,
        )
    if not NAME.fullmatch(message.identity):
        raise HandshakeError(
            "identity must be 1-255 characters: letters, digits, '.', '_', '-', starting with a "
            "letter or digit (names reach scripts as %COMPUTERNAME%, so nothing else is allowed)",
            code="bad_identity",
            close_code=CLOSE_NOT_ALLOWED,
        )
    return message


def public_key_of(hello: Hello) -> bytes:
    """The raw Ed25519 key an agent or TS presents, or :class:`HandshakeError`."""
    key = hello.credentials.get("public_key")
    if not isinstance(key, bytes) or len(key) != 32:
        raise HandshakeError(
            "credentials.public_key must be the peer's raw Ed25519 public key (32 bytes)",
            code="bad_credentials",
            close_code=CLOSE_UNAUTHORIZED,
        )
    return key


REPORT_ITEMS_PER_TOKEN = 50
"""A ``reports`` message costs one token per this many items (at least one): a rate limit counts
the work a message brings, not only the message (20 messages of 10,000 items are not 20). At 50,
an agent's default budget (200 a second, bursts of 800) still takes an outbox of some 39,000
results resent at once after a reconnect (chunks of 256 KiB, ~1,300 results each), and 10,000
results a second after that."""


def message_cost(message: Message) -> int:
    """What ``message`` costs against its connection's :class:`RateLimiter`."""
    if not isinstance(message, Reports):
        return 1
    return max(1, -(-len(message.items) // REPORT_ITEMS_PER_TOKEN))


class RateLimiter:
    """A token bucket: ``rate_per_s`` tokens a second on average, bursts up to ``burst``.

    A message costs one token, or more (:func:`message_cost`). One that costs more than is left
    passes only when the bucket holds at least ``min(cost, burst)``, and then leaves it in debt:
    a message larger than the burst still gets through once the peer has been quiet, and nothing
    else does until the debt is paid.

    Pure: the caller passes the time (monotonic seconds), so tests need no clock.
    """

    def __init__(self, rate_per_s: float, burst: float):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.last: float | None = None

    def allow(self, now: float, cost: float = 1) -> bool:
        """Take ``cost`` tokens if the bucket holds them; False means the peer is over its rate."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate_per_s)
        self.last = now
        if self.tokens >= min(cost, self.burst):
            self.tokens -= cost
            return True
        return False


class Session:
    """The accepting side's view of one connection: state plus the role's allowed messages."""

    def __init__(self, role: Role):
        self.role = role

    def check(self, message: Message) -> None:
        """Raise :class:`SessionError` when ``message`` may not arrive from this role."""
        if message.TYPE not in ALLOWED[self.role]:
            raise SessionError(
                f"a {self.role} may not send {message.TYPE!r}",
                code="not_allowed",
                close_code=CLOSE_NOT_ALLOWED,
            )


def backoff_delays(
    *,
    initial_s: float = 0.5,
    maximum_s: float = 30.0,
    factor: float = 2.0,
    rand: Callable[[], float] = random.random,
) -> Callable[[int], float]:
    """Reconnect delays: exponential, capped, with jitter.

    Returns ``delay(attempt)`` where ``attempt`` counts failures from 0. The delay is
    uniform in ``[cap/2, cap]``: the random half spreads a reconnect storm over the
    window, the fixed half keeps a failing server from being hammered.
    """

    def delay(attempt: int) -> float:
        cap = min(maximum_s, initial_s * (factor ** min(attempt, 32)))
        return cap * (0.5 + 0.5 * rand())

    return delay


class IdSource:
    """Message ids for one connection: a short prefix and a counter."""

    def __init__(self, prefix: str = ""):
        self._prefix = prefix
        self._n = 0

    def __call__(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n}"
