"""Handshake checks, per-role session rules, reconnect backoff and message ids."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from protocol import PROTOCOL_VERSION
from protocol.errors import HandshakeError, SessionError
from protocol.messages import (
    MESSAGE_TYPES,
    Ack,
    Cancel,
    Hello,
    Message,
    Presence,
    Report,
    Reports,
    Request,
    Tickle,
)
from protocol.session import (
    ALLOWED,
    CLOSE_NOT_ALLOWED,
    IdSource,
    RateLimiter,
    Role,
    Session,
    backoff_delays,
    check_hello,
    message_cost,
    public_key_of,
)
from tests.protocol.samples import SAMPLES

ALL_ROLES = frozenset(Role)


def _hello(**changes: Any) -> Hello:
    fields: dict[str, Any] = {
        "id": "a1",
        "version": PROTOCOL_VERSION,
        "role": "agent",
        "identity": "pc-0042",
        "credentials": {"token": "t"},
    }
    fields.update(changes)
    return Hello(**fields)


def _refused(message: Message, roles: frozenset[Role] = ALL_ROLES, **kw: Any) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        check_hello(message, roles=roles, **kw)
    return info.value


# -- check_hello ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["agent", "taskserver", "admin"])
def test_good_hello_is_accepted(role: str) -> None:
    """A hello with the right version, a served role, a name and the token is returned as is."""
    hello = _hello(role=role)
    assert check_hello(hello, roles=ALL_ROLES) is hello


def test_wrong_version_names_both_versions() -> None:
    """A version mismatch closes with 4402 and the message names our version and the peer's."""
    err = _refused(_hello(version=PROTOCOL_VERSION + 6))
    assert err.close_code == 4402
    assert err.code == "version_mismatch"
    assert f"version {PROTOCOL_VERSION}" in err.message
    assert f"version {PROTOCOL_VERSION + 6}" in err.message


def test_version_is_compared_with_the_given_version() -> None:
    """check_hello honours its version argument (a server speaking 2 refuses a peer speaking 1)."""
    err = _refused(_hello(version=1), version=2)
    assert err.close_code == 4402
    assert "speaks version 2" in err.message
    assert "sent version 1" in err.message


@pytest.mark.parametrize(
    "credentials",
    [{}, {"public_key": b"short"}, {"public_key": "not bytes"}, {"public_key": b"k" * 33}],
    ids=["absent", "short", "not-bytes", "long"],
)
def test_public_key_of_refuses_anything_but_32_raw_bytes(credentials: dict[str, Any]) -> None:
    """An agent or TS must present a raw 32-byte Ed25519 key: anything else is 4401 bad_credentials."""
    with pytest.raises(HandshakeError) as info:
        public_key_of(_hello(credentials=credentials))
    assert info.value.close_code == 4401
    assert info.value.code == "bad_credentials"


def test_public_key_of_returns_the_key() -> None:
    """A 32-byte key is returned as given."""
    assert public_key_of(_hello(credentials={"public_key": b"k" * 32})) == b"k" * 32


def test_rate_limiter_allows_the_burst_then_the_rate() -> None:
    """The bucket lets ``burst`` messages through at once, then ``rate`` per second."""
    limiter = RateLimiter(rate_per_s=10, burst=3)
    assert [limiter.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(0.05) is False  # half a token back
    assert limiter.allow(0.1) is True  # a whole token back
    assert [limiter.allow(10.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_a_reports_message_costs_its_items() -> None:
    """A `reports` message costs one token per 50 items (at least one), anything else one; a
    message dearer than the burst passes only on a full bucket and leaves it in debt, so 20
    messages of 10,000 items in a row are throttled after the fourth."""

    def reports(n: int) -> Reports:
        return Reports(id="r", items=[Report(instance_id=1, state="running")] * n)

    assert [message_cost(reports(n)) for n in (0, 1, 50, 51, 10_000)] == [1, 1, 1, 2, 200]
    assert message_cost(Tickle(id="t")) == 1
    limiter = RateLimiter(rate_per_s=200, burst=800)
    flood = [limiter.allow(0.001 * i, message_cost(reports(10_000))) for i in range(20)]
    assert flood == [True] * 4 + [False] * 16
    assert limiter.allow(0.1, 2000) is False  # dearer than the burst: only on a full bucket
    assert limiter.allow(6.0, 2000) is True  # quiet long enough: a full bucket, left in debt
    assert limiter.allow(6.1, 1) is False


def test_unknown_role_is_refused() -> None:
    """A role outside agent/taskserver/admin is refused with bad_role and 4403."""
    err = _refused(_hello(role="superuser"))
    assert err.code == "bad_role"
    assert err.close_code == CLOSE_NOT_ALLOWED
    assert "superuser" in err.message


def test_role_not_served_is_refused() -> None:
    """A known role that this listener does not serve is refused, listing what it serves."""
    err = _refused(_hello(role="admin"), roles=frozenset({Role.AGENT, Role.TASKSERVER}))
    assert err.code == "bad_role"
    assert err.close_code == 4403
    assert "agent, taskserver" in err.message


@pytest.mark.parametrize(
    "identity",
    ["", "x" * 256, "pc`reboot`", "pc; rm -rf /", "pc name", "-pc", "pc$(id)"],
    ids=["empty", "too-long", "backquote", "semicolon", "space", "leading-dash", "dollar"],
)
def test_bad_identity_is_refused(identity: str) -> None:
    """An empty identity, one over 255 characters, or one with characters beyond a host name's
    (it reaches scripts as %COMPUTERNAME%) is refused with bad_identity."""
    err = _refused(_hello(identity=identity))
    assert err.code == "bad_identity"
    assert err.close_code == 4403


def test_identity_of_255_characters_is_accepted() -> None:
    """255 characters is the longest accepted identity."""
    hello = _hello(identity="x" * 255)
    assert check_hello(hello, roles=ALL_ROLES) is hello


@pytest.mark.parametrize("name", sorted(set(MESSAGE_TYPES) - {"hello"}))
def test_first_message_must_be_hello(name: str) -> None:
    """Any message other than hello as the first message is refused with hello_expected."""
    err = _refused(SAMPLES[name])
    assert err.code == "hello_expected"
    assert err.close_code == 4403
    assert repr(name) in err.message


def test_version_is_checked_before_credentials() -> None:
    """A peer with an old version and a wrong token learns about the version first."""
    err = _refused(_hello(version=PROTOCOL_VERSION + 1, credentials={"token": "bad"}))
    assert err.close_code == 4402


# -- Session.check ----------------------------------------------------------------------------


def _pairs(allowed: bool) -> Iterator[tuple[Role, str]]:
    for role in Role:
        for name in sorted(MESSAGE_TYPES):
            if (name in ALLOWED[role]) is allowed:
                yield role, name


@pytest.mark.parametrize(("role", "name"), list(_pairs(allowed=True)))
def test_session_allows_the_permitted_messages(role: Role, name: str) -> None:
    """Each message listed in ALLOWED for a role passes Session.check."""
    Session(role).check(SAMPLES[name])


@pytest.mark.parametrize(("role", "name"), list(_pairs(allowed=False)))
def test_session_refuses_other_messages(role: Role, name: str) -> None:
    """Every message not in ALLOWED for the role is a SessionError with close code 4403."""
    with pytest.raises(SessionError) as info:
        Session(role).check(SAMPLES[name])
    assert info.value.close_code == 4403
    assert info.value.code == "not_allowed"
    assert repr(name) in info.value.message


def test_agent_may_not_send_request() -> None:
    """An agent sending an admin request is refused."""
    with pytest.raises(SessionError, match="agent may not send 'request'"):
        Session(Role.AGENT).check(Request(id="1", op="run"))


def test_admin_may_not_send_reports() -> None:
    """An admin sending reports is refused."""
    with pytest.raises(SessionError, match="admin may not send 'reports'"):
        Session(Role.ADMIN).check(Reports(id="1", items=[]))


def test_expected_permissions() -> None:
    """The concrete permissions: agents report; task servers report, ack and announce presence."""
    Session(Role.AGENT).check(Reports(id="1", items=[]))
    ts = Session(Role.TASKSERVER)
    ts.check(Presence(id="2"))
    ts.check(Ack(id="3", reply_to="n1"))
    Session(Role.ADMIN).check(Request(id="4", op="list"))
    for role in Role:
        with pytest.raises(SessionError):
            Session(role).check(Cancel(id="5", instance_ids=[1]))
        with pytest.raises(SessionError):
            Session(role).check(Tickle(id="6"))


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_grows_exponentially_until_the_cap() -> None:
    """With rand() = 1 the delay is the cap: initial * factor**attempt, up to maximum_s."""
    delay = backoff_delays(initial_s=0.5, maximum_s=30.0, factor=2.0, rand=lambda: 1.0)
    assert [delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_backoff_is_capped_for_huge_attempt_counts() -> None:
    """A very large attempt count neither overflows nor exceeds maximum_s."""
    delay = backoff_delays(initial_s=0.5, maximum_s=30.0, rand=lambda: 1.0)
    assert delay(10_000) == 30.0


def test_backoff_lower_bound_is_half_the_cap() -> None:
    """With rand() = 0 the delay is half the cap."""
    delay = backoff_delays(initial_s=1.0, maximum_s=10.0, factor=3.0, rand=lambda: 0.0)
    assert [delay(n) for n in range(4)] == [0.5, 1.5, 4.5, 5.0]


def test_backoff_stays_within_half_cap_and_cap() -> None:
    """For a spread of random draws every delay is within [cap/2, cap]."""
    draws = iter([i / 100 for i in range(100)] * 10)
    delay = backoff_delays(initial_s=0.5, maximum_s=30.0, rand=lambda: next(draws))
    for attempt in range(10):
        cap = min(30.0, 0.5 * 2**attempt)
        for _ in range(100):
            value = delay(attempt)
            assert cap / 2 <= value <= cap


def test_backoff_uses_the_injected_random_source() -> None:
    """The jitter comes from rand(): a draw of 0.5 gives three quarters of the cap."""
    delay = backoff_delays(initial_s=2.0, maximum_s=100.0, rand=lambda: 0.5)
    assert delay(0) == 1.5
    assert delay(2) == 6.0


# -- ids --------------------------------------------------------------------------------------


def test_id_source_yields_unique_prefixed_ids() -> None:
    """IdSource never repeats an id and keeps its prefix."""
    ids = IdSource("a-")
    seen = [ids() for _ in range(1000)]
    assert len(set(seen)) == 1000
    assert all(i.startswith("a-") for i in seen)
    assert seen[:3] == ["a-1", "a-2", "a-3"]


def test_id_sources_are_independent() -> None:
    """Two IdSources count separately."""
    a, b = IdSource("x"), IdSource("y")
    assert [a(), a(), b()] == ["x1", "x2", "y1"]
