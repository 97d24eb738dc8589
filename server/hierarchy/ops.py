"""The operations two linked NS ask of each other, and how a request is answered.

One link joins a child NS to its parent; over it both sides send ``request`` messages (an ``op``
and its ``args``) and answer with ``response`` or ``error``. What each side answers is a table:
``CHILD_OPS`` (the parent asks, the child answers: ``hier.changes``, ``hier.reconcile``...) and
``PARENT_OPS`` (the child asks, the parent answers: ``hier.summary``...). A module registers an
op with :func:`child_op` or :func:`parent_op`; ``server.hierarchy`` imports every such module,
so the tables are complete before the first link comes up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from protocol.codec import Limits
from protocol.errors import RemoteError
from protocol.messages import Error, Request, Response
from runtime.link import Link
from server.adminops.base import ApiError
from server.interface import NS

Op = Callable[[NS, str, dict[str, Any]], Awaitable[Any]]
"""``(ns, peer name, args) -> data``: one operation, answered to the peer NS named."""

LINK_LIMITS = Limits(
    max_frame_bytes=64 << 20,
    max_str_len=16 << 20,
    max_bin_len=1 << 16,
    max_array_len=1_000_000,
    max_map_len=4_096,
    max_depth=32,
)
"""What either side of a parent-child link takes, once the child is authenticated: a full
reconciliation is the whole replicated set in one ``hier.changes`` (applied 500 items per
transaction), far larger than a dispatch, and reports and summaries nest a level or two per tier
below."""

CHILD_OPS: dict[str, Op] = {}
"""Ops a child answers (asked by its parent)."""
PARENT_OPS: dict[str, Op] = {}
"""Ops a parent answers (asked by one of its children)."""


def child_op(name: str) -> Callable[[Op], Op]:
    """Register an op the child answers."""

    def register(fn: Op) -> Op:
        CHILD_OPS[name] = fn
        return fn

    return register


def parent_op(name: str) -> Callable[[Op], Op]:
    """Register an op the parent answers."""

    def register(fn: Op) -> Op:
        PARENT_OPS[name] = fn
        return fn

    return register


async def answer(ns: NS, link: Link, peer: str, message: Request, table: dict[str, Op]) -> None:
    """Run ``message``'s op from ``table`` and send its answer on ``link``.

    An unknown op is ``unknown_op``; an :class:`ApiError` (or a peer's refusal passed on, a
    :class:`RemoteError`) keeps its code and message; anything else is logged with its traceback
    and answered ``internal_error``, so one broken op never costs the link."""
    fn = table.get(message.op)
    reply: Response | Error
    if fn is None:
        reply = Error(
            id=link.next_id(),
            reply_to=message.id,
            code="unknown_op",
            message=f"this NS ({ns.name}) does not answer {message.op!r}; known: "
            + ", ".join(sorted(table)),
        )
    else:
        try:
            data = await fn(ns, peer, message.args)
            reply = Response(id=link.next_id(), reply_to=message.id, data=data)
        except (ApiError, RemoteError) as exc:
            text = exc.message if isinstance(exc, RemoteError) else str(exc)
            reply = Error(id=link.next_id(), reply_to=message.id, code=exc.code, message=text)
        except Exception as exc:
            ns.log.exception("hierarchy_op_failed", op=message.op, peer=peer)
            reply = Error(
                id=link.next_id(),
                reply_to=message.id,
                code="internal_error",
                message=f"{ns.name} failed on {message.op!r}: {type(exc).__name__}; its log has"
                " the details",
            )
    with contextlib.suppress(Exception):  # the link may be gone: the asker's request fails
        await link.send(reply)


async def ask(link: Link, op: str, args: dict[str, Any], timeout_s: float) -> Any:
    """Send one request on ``link`` and return its answer's data (RemoteError on ``error``;
    ConnectionError when the link is closed or closes meanwhile, TimeoutError)."""
    try:
        reply = await link.request(
            Request(id=link.next_id(), op=op, args=args), timeout_s=timeout_s
        )
    except ConnectionClosed as exc:
        raise ConnectionError(f"the link to {link.peer} closed: {exc}") from None
    assert isinstance(reply, Response)
    return reply.data
