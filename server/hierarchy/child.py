"""The child's side of the hierarchy: its one link up to its parent NS, and what it answers.

A child connects as a TS does (``taskserver.service``'s NS link): TLS pinned by
``--parent-fingerprint`` or checked against ``--parent-ca``, its own ``server.key`` proved, an
enrolment token (``tokens create --for child`` on the parent) the first time. Its ``hello``
carries its id, the ids of every NS under it (for the parent's loop check), its agents' URL and
its cursor (the last parent change it applied). The parent's ``welcome`` names the NS above it,
kept (also in ``DATA/hierarchy.json``, for a restart while the parent is away) for this NS's
own children's loop checks.

While linked, the child answers ``CHILD_OPS`` (``hier.changes`` applies replicated items: a
batch of changes in one transaction, a full set 500 items per transaction; ``hier.reconcile``
reconciles its own children) and runs the coroutines in ``on_parent_link`` (hup's summaries).
A lost link is tried again with backoff; a refusal no retry changes (a loop, a used-up token, a
rejected key, a wrong pin) is logged as an error and tried again only after a minute: the admin
must fix the configuration, and the NS keeps serving its own fleet meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.frames import CloseCode

from protocol.errors import ProtocolError, RemoteError
from protocol.messages import Request, Welcome
from protocol.session import ALLOWED_DOWN, Role, backoff_delays
from runtime.link import Link, connect, refused_for_good
from runtime.servers import ServerList
from runtime.tls import ClientTrust
from server.adminops.base import ApiError
from server.hierarchy.ops import CHILD_OPS, LINK_LIMITS, answer, ask, child_op
from server.interface import NS
from server.policies import targets as policy_targets
from server.tasktypes.filters import recompute_filters

REFUSED_RETRY_S = 60.0
"""After a refusal no retry changes (a loop, a used-up token...), the next try is this much later."""
STATE_FILE = "hierarchy.json"


class ParentLink:
    """The child's side of ``server.hierarchy.Hierarchy``: the link to the parent."""

    ns: NS

    def __init__(self, parent_url: str | None, trust: ClientTrust | None, enrol_token: str):
        self.parent_url = parent_url
        self.parents = ServerList(parent_url) if parent_url else None
        """The parent's addresses: two for a parent that is an active/standby pair."""
        self.parent_trust = trust or ClientTrust()
        self.enrol_token = enrol_token
        self.parent_connected = False
        self.parent_name: str | None = None
        self.parent_id: str | None = None
        self.above: list[str] = []
        """The ids above this NS, nearest first: its parent's, then the parent's ``above``."""
        self.on_parent_link: list[Callable[[], Awaitable[None]]] = []
        self.parent_refusal = ""
        """Why the parent refused this NS for good, last time (empty while it does not)."""
        self._parent_link: Link | None = None
        self._up_tasks: list[asyncio.Task[Any]] = []

    # -- state kept across restarts -----------------------------------------------------

    def load_parent_state(self) -> None:
        """The parent's name and the ids above, as the last link left them."""
        try:
            with open(os.path.join(self.ns.data_dir, STATE_FILE)) as fh:
                state = json.load(fh)
        except (OSError, ValueError):
            return
        if isinstance(state, dict):
            name, above = state.get("parent"), state.get("above")
            self.parent_name = name if isinstance(name, str) else None
            self.parent_id = (
                state.get("parent_id") if isinstance(state.get("parent_id"), str) else None
            )
            if isinstance(above, list):
                self.above = [str(a) for a in above]

    def _save_parent_state(self) -> None:
        path = os.path.join(self.ns.data_dir, STATE_FILE)
        state = {"parent": self.parent_name, "parent_id": self.parent_id, "above": self.above}
        try:
            with open(path + ".tmp", "w") as fh:
                json.dump(state, fh)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            self.ns.log.error("hierarchy_state_not_saved", error=str(exc))

    # -- asking the parent --------------------------------------------------------------

    async def ask_parent(self, op: str, args: dict[str, Any], timeout_s: float = 30) -> Any:
        link = self._parent_link
        if link is None or not self.parent_connected:
            raise ConnectionError(f"{self.ns.name} is not linked to its parent now")
        return await ask(link, op, args, timeout_s)

    # -- the link -----------------------------------------------------------------------

    async def hello_info(self) -> dict[str, Any]:
        cursor = 0
        if self.parent_name:
            cursor = int(await self.ns.db.parent_cursor(self.parent_name))
        # below_ids is the parent side's (``parent.Children``), the other half of Hierarchy.
        below: list[str] = await self.below_ids()  # type: ignore[attr-defined]
        return {
            "ns_id": self.ns.server_id,
            "below": below,
            "url": self.ns.url,
            "cursor": cursor,
            # Whose cursor it is: a parent that is not that one sends everything.
            "cursor_of": self.parent_name or "",
        }

    async def parent_loop(self) -> None:
        """Link to the parent for as long as the NS runs (see the module docstring)."""
        assert self.parents is not None
        log = self.ns.log
        delay = backoff_delays(initial_s=0.2, maximum_s=10.0)
        attempt = 0
        while True:
            link: Link | None = None
            wait: float | None = None
            try:
                opened = await self.parents.connect(  # the active one of a pair
                    connect,
                    role=Role.CHILD,
                    identity=self.ns.name,
                    credentials={"enrol_token": self.enrol_token} if self.enrol_token else {},
                    key=self.ns.key,
                    trust=self.parent_trust,
                    info=await self.hello_info(),
                    limits=LINK_LIMITS,
                )
                link, welcome = opened
                attempt = 0
                self._linked(link, welcome)
                await self._read_parent(link)
            except asyncio.CancelledError:
                raise
            except (RemoteError, OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
                code = getattr(exc, "code", "")
                reason = getattr(exc, "message", "") or str(exc) or type(exc).__name__
                if code == "hierarchy_loop" or refused_for_good(exc):
                    wait = REFUSED_RETRY_S
                    self.parent_refusal = reason
                    log.error(
                        "parent_refused",
                        parent=self.parent_url,
                        code=code or type(exc).__name__,
                        reason=reason,
                        retry_in_s=wait,
                    )
                elif isinstance(exc, RemoteError):  # pending (waits for `keys accept`), limits...
                    log.warning("parent_refused", parent=self.parent_url, code=code, reason=reason)
                else:
                    log.warning("parent_link_lost", parent=self.parent_url, error=reason)
            except Exception:
                # A failure here (a full disk, a bug) must not end the NS: log, back off, retry.
                log.exception("parent_link_failed", parent=self.parent_url)
            finally:
                await self._unlinked(link)
            await asyncio.sleep(wait if wait is not None else delay(attempt))
            attempt += 1

    def _linked(self, link: Link, welcome: Welcome) -> None:
        config = welcome.config
        parent_id = config.get("ns_id")
        above = config.get("above")
        self.parent_name = welcome.server
        self.parent_id = parent_id if isinstance(parent_id, str) else None
        self.above = [self.parent_id] if self.parent_id else []
        if isinstance(above, list):
            self.above += [str(a) for a in above]
        self._save_parent_state()
        self._parent_link = link
        self.parent_connected = True
        self.parent_refusal = ""
        self.ns.log.info("parent_linked", parent=self.parent_name, url=self.parent_url)
        self._up_tasks = [self.ns.spawn(_call(start)) for start in self.on_parent_link]

    async def _unlinked(self, link: Link | None) -> None:
        was = self.parent_connected
        self.parent_connected = False
        self._parent_link = None
        for up in self._up_tasks:
            up.cancel()
        self._up_tasks = []
        if link is None:
            return
        link.fail_waiters(ConnectionError("link to the parent NS closed"))
        task = asyncio.current_task()
        going = task is not None and task.cancelling() > 0
        await link.close(CloseCode.GOING_AWAY if going else CloseCode.NORMAL_CLOSURE)
        if was:
            self.ns.log.warning("parent_unlinked", parent=self.parent_name)

    async def _read_parent(self, link: Link) -> None:
        allowed = ALLOWED_DOWN[Role.CHILD]
        while True:
            message = await link.recv()
            if link.resolve(message):
                continue
            if message.TYPE not in allowed:
                self.ns.log.warning("parent_sent_unexpected", type=message.TYPE)
                continue
            if isinstance(message, Request):
                # One ``hier.changes`` is in flight at a time (the parent's pusher), so answering
                # each request in its own task keeps them in order and a long reconcile never
                # holds the next change.
                self.ns.spawn(answer(self.ns, link, self.parent_name or "", message, CHILD_OPS))


async def _call(start: Callable[[], Awaitable[None]]) -> None:
    await start()


@child_op("hier.changes")
async def hier_changes(ns: NS, parent: str, args: dict[str, Any]) -> Any:
    """Apply replicated items from the parent (``Store.apply_from_parent``)."""
    changes, full, upto = args.get("changes"), args.get("full", False), args.get("upto")
    if not isinstance(changes, list) or not isinstance(full, bool) or not isinstance(upto, int):
        raise ApiError(
            "bad_request", "hier.changes takes changes (a list), full (a bool) and upto (an int)"
        )
    if not parent:
        raise ApiError("bad_request", "hier.changes came before the parent's welcome")
    named = {
        str(c.get("name")) for c in changes if isinstance(c, dict) and c.get("kind") == "policy"
    }
    before = [p for p in await ns.db.policies() if p["name"] in named] if named and not full else []
    if full:
        before = list(await ns.db.policies())
    try:
        result = dict(await ns.db.apply_from_parent(parent, changes, full, upto))
    except ValueError as exc:
        raise ApiError("bad_request", f"hier.changes: {exc}") from None
    items = result.pop("items", None) or []
    if result.get("notes"):  # items left out (a document this NS cannot validate) and the like
        ns.log.warning("hierarchy_notes", parent=parent, notes=result["notes"])
    if items:
        await _audit_applied(ns, parent, items, full)
        await _after_apply(ns, items, before)
    result["items"] = len(items)
    return result


async def _audit_applied(ns: NS, parent: str, items: list[dict[str, Any]], full: bool) -> None:
    """What the parent changed here, in the audit trail as ``parent:NAME`` (one row per batch,
    naming its first items); a full disk logs it instead."""
    changed = [f"{i.get('kind')} {i.get('name')}" for i in items if not i.get("deleted")]
    deleted = [f"{i.get('kind')} {i.get('name')}" for i in items if i.get("deleted")]
    parts = [f"{'full reconciliation: ' if full else ''}{len(changed)} saved"]
    parts += [f"{len(deleted)} deleted"]
    shown = changed[:5] + [f"-{d}" for d in deleted[:5]]
    more = len(items) - len(shown)
    detail = f"{', '.join(parts)}: {', '.join(shown)}" + (f" and {more} more" if more else "")
    try:
        await ns.db.audit(f"parent:{parent}", "hier.changes", detail[:500], "ok")
    except Exception as exc:
        ns.log.error("audit_write_failed", who=f"parent:{parent}", detail=detail, error=str(exc))


async def _after_apply(ns: NS, items: list[dict[str, Any]], before: list[dict[str, Any]]) -> None:
    """What saving an item through the admin ops does besides storing it: a filter's members
    are computed, and the agents a changed policy reaches (before or after) are told, so they
    take their new policies now. Done outside the apply's transaction; a failure is logged (the
    item is stored; the next update-filter-membership or registration catches up)."""
    filters = sorted(
        {i["name"] for i in items if i.get("kind") == "filter" and not i.get("deleted")}
    )
    policies = {i["name"] for i in items if i.get("kind") == "policy"}
    try:
        for name in filters:
            await recompute_filters(ns, name)
        if policies:
            after = [p for p in await ns.db.policies() if p["name"] in policies]
            reach = [p for p in (*before, *after) if p["name"] in policies and p.get("enabled")]
            chosen: dict[int, dict[str, Any]] = {}
            for policy in reach:
                for c in await policy_targets(ns, policy):
                    if c.get("has_agent"):
                        chosen[int(c["id"])] = c
            if chosen:
                await ns.tickle(list(chosen.values()))
    except Exception:
        ns.log.exception("hierarchy_after_apply_failed", filters=filters, policies=sorted(policies))


@child_op("hier.reconcile")
async def hier_reconcile(ns: NS, parent: str, args: dict[str, Any]) -> Any:
    """Reconcile this NS's own children now (as its replicate-hierarchy does)."""
    return {"children": await ns.hierarchy.reconcile()}
