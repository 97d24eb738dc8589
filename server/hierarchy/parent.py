"""The parent's side of the hierarchy: its children's links, and replication down over them.

A child NS connects to its parent's main listener as role ``child`` (``server.connections``
routes it to :func:`serve_child`), proves its key and, the first time, enrols with a token made
by ``tokens create --for child`` (``server.auth``). A loop is refused before the key proof
(:meth:`Children.check_child_hello`): the parent and every NS above it must be neither the
child nor under it.

Each linked child gets a :class:`ChildLink` with one pusher: on link, a full reconciliation
(the whole replicated set, ``hier.changes`` with ``full``) when this process has not sent it
one yet or the child's cursor is older than the journal keeps; then, each time a replicated
item changes (``Store.journal_listeners``), every change after the child's acknowledged seq,
in seq order, in batches of up to 1,000, one ``hier.changes`` in flight. What the child
acknowledges is stored (``child_acked``), with the clashes it reports (``set_child_clashes``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack
from websockets.exceptions import ConnectionClosed

from protocol import PROTOCOL_VERSION
from protocol.errors import HandshakeError, ProtocolError, RemoteError
from protocol.identity import fingerprint
from protocol.messages import Hello, Request, Welcome
from protocol.session import (
    CLOSE_BAD_MESSAGE,
    CLOSE_NOT_ALLOWED,
    CLOSE_REPLACED,
    CLOSE_UNAUTHORIZED,
    Role,
    Session,
)
from runtime.link import Link
from server.adminops.base import ApiError
from server.hierarchy.ops import LINK_LIMITS, PARENT_OPS, answer, ask
from server.interface import NS

BATCH_CHANGES = 1_000
"""Changes per ``hier.changes`` at most."""
BATCH_BYTES = 8 << 20
"""Encoded changes per ``hier.changes`` at most (a child takes frames up to 64 MiB)."""
PUSH_TIMEOUT_S = 120.0
PUSH_TIMEOUT_PER_CHANGE_S = 0.02
"""How long one ``hier.changes`` may take to be applied and answered: the first, plus the second
per change in it (a child applies a change in about 2 ms, measured; ten times that is allowed, so
a large full reconciliation on a busy child is not cut and sent again for ever)."""
RECONCILE_TIMEOUT_S = 600.0
"""How long a child's own reconciliation (``hier.reconcile``, of everything below it) may take."""
RETRY_PUSH_S = 5.0
"""After a push that failed (the child answered an error), try again this much later."""


class ChildLink:
    """One linked child: its link, what it acknowledged, and its pusher."""

    def __init__(
        self,
        ns: NS,
        link: Link,
        name: str,
        ns_id: str,
        cursor: int,
        clashes: list[Any],
        reconciled: set[str] | None = None,
    ):
        self.ns = ns
        self.reconciled = reconciled if reconciled is not None else set()
        """The children this process has sent a full set to, and that applied it."""
        self.link = link
        self.name = name
        self.ns_id = ns_id
        self.acked = cursor
        self.clashes: dict[tuple[str, str], dict[str, Any]] = {
            (str(c.get("kind")), str(c.get("name"))): c for c in clashes if isinstance(c, dict)
        }
        self.wake = asyncio.Event()
        self.sending = asyncio.Lock()
        """Held while a ``hier.changes`` is in flight: one at a time per child."""

    async def ask(self, op: str, args: dict[str, Any], timeout_s: float = 30.0) -> Any:
        return await ask(self.link, op, args, timeout_s)

    async def push_loop(self, full: bool) -> None:
        """The pusher: a full reconciliation first when ``full``, then the journal as it grows."""
        while True:
            try:
                if full:
                    await self.full()
                    full = False
                await self.catch_up()
            except RemoteError as exc:  # the child could not apply: say so, try again later
                self.ns.log.error(
                    "hierarchy_push_refused", child=self.name, code=exc.code, reason=exc.message
                )
                await asyncio.sleep(RETRY_PUSH_S)
                continue
            except (ConnectionError, ConnectionClosed, TimeoutError, ProtocolError):
                raise  # the link is gone or stuck: ``_push`` ends it
            except Exception:  # a failure here (a full disk, a bug): log, try again later
                self.ns.log.exception("hierarchy_push_failed", child=self.name)
                await asyncio.sleep(RETRY_PUSH_S)
                continue
            await self.wake.wait()
            self.wake.clear()

    async def full(self) -> tuple[int, dict[str, Any]]:
        """Send the whole replicated set (the child deletes what it holds from this parent and
        is not in it); return how many items were sent and what the child applied."""
        async with self.sending:
            db = self.ns.db
            async with db.db.transaction():  # the tail first: a change after it is sent again
                upto = await db.journal_tail()
                items = await db.replicated_items()
            result = await self.ask(
                "hier.changes", {"changes": items, "full": True, "upto": upto}, _timeout(items)
            )
            await self._applied(result, upto)
            self.reconciled.add(self.name)  # applied: a later link may send only changes
            self.ns.log.info(
                "hierarchy_full_sent",
                child=self.name,
                items=len(items),
                upto=upto,
                result=_brief(result),
            )
            return len(items), result

    async def catch_up(self) -> int:
        """Send every change after the acknowledged seq, in batches; return how many were sent."""
        sent = 0
        while True:
            async with self.sending:
                changes = await self.ns.db.changes_after(self.acked, BATCH_CHANGES)
                if not changes:
                    return sent
                batch = _fit(changes)
                upto = int(batch[-1]["seq"])
                result = await self.ask(
                    "hier.changes",
                    {"changes": batch, "full": False, "upto": upto},
                    _timeout(batch),
                )
                await self._applied(result, upto)
                sent += len(batch)

    async def _applied(self, result: Any, upto: int) -> None:
        """The child applied a batch: store its cursor and the clashes it reports now."""
        if not isinstance(result, dict):
            raise RemoteError(
                "bad_answer", f"child {self.name} answered hier.changes with {result!r}"
            )
        cursor = result.get("cursor")
        self.acked = int(cursor) if isinstance(cursor, int) else upto
        await self.ns.db.child_acked(self.name, self.acked)
        # The child answers with every clash it has with this parent now.
        now = {
            (str(c.get("kind")), str(c.get("name"))): {"kind": c.get("kind"), "name": c.get("name")}
            for c in result.get("clashes") or []
            if isinstance(c, dict)
        }
        if now != self.clashes:
            new = sorted(set(now) - set(self.clashes))
            self.clashes = now
            await self.ns.db.set_child_clashes(self.name, list(now.values()))
            if new:
                names = ", ".join(f"{k} {n}" for k, n in new)
                self.ns.log.warning("hierarchy_clash", child=self.name, items=names)

    async def reconcile(self) -> dict[str, Any]:
        """A full reconciliation now, then the child's own below it: this child's REPORT."""
        sent, result = await self.full()
        below: list[Any] = []
        try:
            data = await self.ask("hier.reconcile", {}, RECONCILE_TIMEOUT_S)
            below = list(data.get("children") or []) if isinstance(data, dict) else []
        except (RemoteError, ConnectionError, TimeoutError) as exc:
            self.ns.log.warning("hierarchy_reconcile_below_failed", child=self.name, error=str(exc))
        return {
            "child": self.name,
            "connected": True,
            "sent": sent,
            "changed": int(result.get("applied", 0)) + int(result.get("deleted", 0)),
            "clashes": list(self.clashes.values()),
            "lag_s": await self.ns.db.child_lag_s(self.acked),
            "below": below,
        }


def _timeout(changes: list[dict[str, Any]]) -> float:
    return PUSH_TIMEOUT_S + PUSH_TIMEOUT_PER_CHANGE_S * len(changes)


def _fit(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first changes that fit in one ``hier.changes`` (at least one)."""
    size = 0
    for n, change in enumerate(changes):
        size += len(msgpack.packb(change, use_bin_type=True))
        if size > BATCH_BYTES and n > 0:
            return changes[:n]
    return changes


def _brief(result: Any) -> Any:
    """What a child answered to ``hier.changes``, for the log (clashes counted, not listed)."""
    if not isinstance(result, dict):
        return result
    return {k: (len(v) if isinstance(v, list) else v) for k, v in result.items()}


class Children:
    """The parent's side of ``server.hierarchy.Hierarchy``: the children linked now."""

    ns: NS
    above: list[str]
    """The ids of the NS above this one, nearest first (from its own parent's welcome)."""

    def __init__(self) -> None:
        self.links: dict[str, ChildLink] = {}
        self.pushers: dict[str, asyncio.Task[None]] = {}
        self.reconciled: set[str] = set()
        """Children this process has sent a full reconciliation: later links push only changes."""

    def connected_children(self) -> list[str]:
        return sorted(self.links)

    def check_child_hello(self, hello: Hello) -> None:
        """Refuse a child's ``hello`` whose info is malformed, or that would close a loop."""
        info = hello.info
        ns_id, below = info.get("ns_id"), info.get("below", [])
        if (
            not isinstance(ns_id, str)
            or not isinstance(below, list)
            or not all(isinstance(b, str) for b in below)
            or not isinstance(info.get("cursor", 0), int)
        ):
            raise HandshakeError(
                "a child NS's hello must carry info.ns_id (its server id), info.below (the ids"
                " of the NS under it) and info.cursor (an integer)",
                code="bad_hello",
                close_code=CLOSE_BAD_MESSAGE,
            )
        mine = [self.ns.server_id, *self.above]
        looped = [i for i in mine if i == ns_id or i in below]
        if looped:
            raise HandshakeError(
                f"hierarchy loop refused: {hello.identity} ({ns_id}) cannot be a child of"
                f" {self.ns.name} ({self.ns.server_id}): {', '.join(looped)} is already under"
                f" {hello.identity} (or is it). Remove --parent from one of them",
                code="hierarchy_loop",
                close_code=CLOSE_NOT_ALLOWED,
            )

    def cut_child(self, name: str, why: str) -> None:
        """An admin rejected or deleted the child's key: close its link now."""
        child = self.links.get(name)
        if child is not None:
            self.ns.spawn(child.link.close(CLOSE_UNAUTHORIZED, why))

    def journal_changed(self, tail: int) -> None:
        """``Store.journal_listeners``: a replicated item changed; every pusher wakes."""
        for child in self.links.values():
            if child.acked < tail:
                child.wake.set()

    async def ask_child(
        self, name: str, op: str, args: dict[str, Any], timeout_s: float = 30
    ) -> Any:
        child = self.links.get(name)
        if child is None:
            raise ApiError(
                "not_connected", f"child NS {name!r} is not linked to {self.ns.name} now"
            )
        try:
            return await child.ask(op, args, timeout_s)
        except RemoteError as exc:
            raise ApiError(exc.code, f"child NS {name}: {exc.message}") from None
        except (ConnectionError, ConnectionClosed):
            raise ApiError("not_connected", f"child NS {name!r} went away meanwhile") from None
        except TimeoutError:
            raise ApiError(
                "child_timeout", f"child NS {name!r} did not answer {op} within {timeout_s:g} s"
            ) from None

    async def reconcile(self) -> list[dict[str, Any]]:
        """A full reconciliation of every linked child now, recursively: one REPORT per known
        child (one not linked now is listed with what it last acknowledged)."""
        links = dict(self.links)
        done = await asyncio.gather(
            *(child.reconcile() for child in links.values()), return_exceptions=True
        )
        reports: dict[str, dict[str, Any]] = {}
        for (name, _child), report in zip(links.items(), done, strict=True):
            if isinstance(report, BaseException):
                self.ns.log.warning("hierarchy_reconcile_failed", child=name, error=repr(report))
                continue
            reports[name] = report
        for row in await self.ns.db.children():
            if row["name"] not in reports:
                reports[row["name"]] = {
                    "child": row["name"],
                    "connected": False,
                    "sent": 0,
                    "changed": 0,
                    "clashes": list(row.get("clashes") or []),
                    "lag_s": await self.ns.db.child_lag_s(int(row.get("acked_seq") or 0)),
                    "below": [],
                }
        return [reports[n] for n in sorted(reports)]

    async def below_ids(self) -> list[str]:
        """The ids of every NS under this one, as far as it knows (linked now or not)."""
        ids: list[str] = []
        for row in await self.ns.db.children():
            for i in [row.get("ns_id"), *(row.get("below") or [])]:
                if isinstance(i, str) and i and i not in ids:
                    ids.append(i)
        return ids

    def stop_children(self) -> None:
        for task in self.pushers.values():
            task.cancel()


async def serve_child(ns: NS, link: Link, hello: Hello, facts: dict[str, Any]) -> None:
    """A child NS: welcome it (with the ids above this NS), push replicated items to it, and
    answer what it asks (``PARENT_OPS``) until the link closes."""
    hier = ns.hierarchy
    assert isinstance(hier, Children)
    name, info = hello.identity, hello.info
    ns_id, below = str(info["ns_id"]), [str(b) for b in info.get("below", [])]
    if ns_id != f"{name}:{fingerprint(facts['public_key'])}":
        raise HandshakeError(
            f"a child NS's info.ns_id must be its name and key fingerprint, not {ns_id!r}",
            code="bad_hello",
            close_code=CLOSE_BAD_MESSAGE,
        )
    old = hier.links.get(name)
    if old is not None:
        await old.link.close(CLOSE_REPLACED, "replaced by a newer connection from the same child")
    cursor = int(info.get("cursor", 0))
    if info.get("cursor_of", ns.name) != ns.name:  # a cursor of another parent's journal
        cursor = 0
    await ns.db.upsert_child(name, ns_id, True, below)
    await link.send(
        Welcome(
            id=link.next_id(),
            reply_to=hello.id,
            version=PROTOCOL_VERSION,
            server=ns.name,
            config={"ns_id": ns.server_id, "above": list(hier.above)},
        )
    )
    link.handshake_done()
    link.limits = LINK_LIMITS  # summaries and reports nest a level per tier below
    link.ws.protocol.max_message_size = LINK_LIMITS.max_frame_bytes
    row = await ns.db.child(name) or {}
    tail, floor = await ns.db.journal_tail(), await ns.db.journal_floor()
    full = name not in hier.reconciled or cursor <= 0 or cursor < floor or cursor > tail
    child = ChildLink(
        ns, link, name, ns_id, cursor, list(row.get("clashes") or []), hier.reconciled
    )
    hier.links[name] = child
    if not full:
        await ns.db.child_acked(name, cursor)
    pusher = ns.spawn(_push(ns, child, full))
    hier.pushers[name] = pusher
    ns.log.info("child_linked", child=name, ns_id=ns_id, cursor=cursor, full=full)
    session = Session(Role.CHILD)
    try:
        while True:
            message = await link.recv()
            session.check(message)
            if link.resolve(message):
                continue
            if isinstance(message, Request):
                ns.spawn(answer(ns, link, name, message, PARENT_OPS))
    finally:
        pusher.cancel()
        link.fail_waiters(ConnectionError(f"child NS {name} disconnected"))
        if hier.links.get(name) is child:
            del hier.links[name]
            hier.pushers.pop(name, None)
            with contextlib.suppress(Exception):  # the store may be closing with the NS
                await ns.db.upsert_child(name, ns_id, False)
            ns.log.info("child_unlinked", child=name)


async def _push(ns: NS, child: ChildLink, full: bool) -> None:
    """The pusher's task: a lost link ends it quietly (the next link starts another)."""
    try:
        await child.push_loop(full)
    except (ConnectionError, ConnectionClosed, TimeoutError, ProtocolError) as exc:
        ns.log.warning("hierarchy_push_stopped", child=child.name, error=str(exc) or repr(exc))
        with contextlib.suppress(Exception):
            await child.link.close(CLOSE_NOT_ALLOWED if isinstance(exc, ProtocolError) else 1000)
