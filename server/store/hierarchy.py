"""The hierarchy's tables: what a parent NS sends down to its children, and what a child took.

Parent side. Tasks, jobs, policies and filters whose document has ``replicate = true``, and
groups with the ``replicate`` column set, are *replicated*. Every write that saves, changes,
deletes or un-flags one appends a row to ``hier_journal`` (its ``id`` is the change's ``seq``;
``kind``, ``name``, ``doc`` or NULL for "gone here", ``at``) in the same transaction as the
change itself (:meth:`HierarchyMixin._journal`, called by the save and delete paths of
``catalog`` and ``computers`` before they write). Once the outermost transaction commits
(``Database.after_commit``), every callable in ``journal_listeners`` is called with the
journal's new tail: the link's pushers wake on it. ``hier_children`` keeps each child: its id,
what it acknowledged, its last summary and clashes. The journal is trimmed by the retention
pass (:meth:`HierarchyMixin.trim_journal`), always from its oldest row, so every change after
:meth:`HierarchyMixin.journal_floor` is still there.

Child side. :meth:`HierarchyMixin.apply_from_parent` applies one batch of the parent's changes
in one transaction through the same save and delete paths (so an item that came with
``replicate = true`` is journalled here in turn, for this NS's own children), marking each item
with ``origin`` = the parent's name (such items are read-only here: ``server.adminops``
refuses to change them). ``hier_cursor`` keeps the last change applied per parent, so a batch
sent again changes nothing; ``hier_clashes`` the parent's items left alone because this NS has
an item of its own by that name. A group's membership never replicates: each site has its own
computers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protocol.errors import ValidationError
from protocol.filters import validate_filter
from protocol.jobs import validate_job
from protocol.policies import validate_policy
from protocol.tasks import validate_task
from runtime import logs
from server.store.base import StoreBase
from server.store.dbapi import Database

KINDS = ("group", "task", "job", "filter", "policy")
"""What replicates, in the order a full set is listed and applied (a group before the groups
nested in it, tasks before the jobs and policies that name them)."""
TABLES = {
    "group": "groups",
    "task": "tasks",
    "job": "jobs",
    "filter": "filters",
    "policy": "policies",
}
FULL_CHUNK = 500
"""Items of a full set applied per transaction: at a few milliseconds an item, the child's own
writes wait about a second at most behind one chunk, not the whole set."""
KEEP_ACKED_S = 3600.0
"""Journal rows every known child acknowledged are kept this long (a child restored from a
backup a little older still catches up change by change)."""
KEEP_MAX_S = 7 * 86_400.0
"""Rows older than this go whatever the acknowledgements: a child that far behind gets a full
reconciliation instead."""

JournalListener = Callable[[int], None]
"""Called with the journal's new tail ``seq`` after a transaction that appended to it
committed (never inside it: the change is visible to every reader by then). Plain and quick:
it wakes something, it does not do the work."""

_log = logs.get("store")


def flagged(doc: dict[str, Any] | None) -> bool:
    """Whether an item's document (a group's: ``{name, parent, replicate}``) replicates."""
    return doc is not None and doc.get("replicate") is True


def _change(seq: int, kind: str, name: str, doc: Any) -> dict[str, Any]:
    if isinstance(doc, str):
        doc = json.loads(doc)
    return {"seq": int(seq), "kind": kind, "name": name, "doc": doc}


class HierarchyMixin(StoreBase):
    """Tables ``hier_journal``, ``hier_children``, ``hier_cursor``, ``hier_clashes``; the
    ``origin`` column of the item tables and ``groups.replicate``."""

    if TYPE_CHECKING:  # the save and delete paths of the other parts, mixed into Store

        async def save_task_version(
            self, definition: dict[str, Any], who: str = ""
        ) -> dict[str, Any]: ...
        async def save_job_version(
            self, definition: dict[str, Any], who: str = ""
        ) -> dict[str, Any]: ...
        async def save_filter(self, definition: dict[str, Any]) -> bool: ...
        async def save_policy(self, definition: dict[str, Any]) -> bool: ...
        async def catalog(self) -> dict[str, tuple[str, dict[str, Any]]]: ...
        async def delete_definition(self, kind: str, name: str) -> bool: ...
        async def delete_item(self, kind: str, name: str) -> None: ...
        async def delete_group(self, group_id: int) -> int: ...

    def __init__(self, db: Database):
        super().__init__(db)
        self.journal_listeners: list[JournalListener] = []
        """Called after commit with the new journal tail (see :data:`JournalListener`)."""
        self._journal_last = 0
        """The newest seq appended (by the transaction in progress, or the last one)."""

    # -- parent side: the journal -------------------------------------------------------

    async def _journal(self, kind: str, name: str, doc: dict[str, Any] | None) -> None:
        """Called by a save (``doc``: the item as it will be) or a delete (None) BEFORE it
        writes, inside its transaction: appends a journal row when the item is replicated
        now or was until this write (un-flagged or deleted: a row with no document), unless
        the replicated document stays the same."""
        if kind not in TABLES:
            return
        was = await self._replicated_doc(kind, name)
        now = doc if flagged(doc) else None
        if now == was:
            return
        seq = await self.db.insert(
            "INSERT INTO hier_journal(kind, name, doc, at) VALUES (?, ?, ?, ?)",
            (kind, name, None if now is None else json.dumps(now), time.time()),
        )
        self._journal_last = max(self._journal_last, seq)
        self.db.after_commit(self._journal_committed)

    def _journal_committed(self) -> None:
        """After the commit of a transaction that appended to the journal: tell the
        listeners (one call per transaction, whatever it appended)."""
        for listener in list(self.journal_listeners):
            try:
                listener(self._journal_last)
            except Exception:  # a listener's bug must not fail the change that committed
                _log.exception("journal_listener_failed")

    async def _replicated_doc(self, kind: str, name: str) -> dict[str, Any] | None:
        """The item's replicated document as it is now (None: absent or not replicated)."""
        if kind == "group":
            row = await self._one(
                "SELECT g.name, p.name AS parent, g.replicate FROM groups g"
                " LEFT JOIN groups p ON p.id=g.parent_id WHERE g.name=?",
                (name,),
            )
            if row is None or not row["replicate"]:
                return None
            return {"name": name, "parent": row["parent"], "replicate": True}
        row = await self._one(f"SELECT definition FROM {TABLES[kind]} WHERE name=?", (name,))
        doc = json.loads(row["definition"]) if row else None
        return doc if flagged(doc) else None

    async def journal_tail(self) -> int:
        """The newest journal ``seq`` (0: none yet)."""
        row = await self._one("SELECT coalesce(max(id), 0) AS n FROM hier_journal")
        return int(row["n"]) if row else 0

    async def journal_floor(self) -> int:
        """Changes up to this ``seq`` are no longer kept: a child whose cursor is below it
        needs a full reconciliation. (Trimming keeps the newest row, so an empty journal
        has never had a change: 0.)"""
        row = await self._one("SELECT min(id) AS n FROM hier_journal")
        return int(row["n"]) - 1 if row and row["n"] is not None else 0

    async def changes_after(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` changes after ``seq``, in order: ``{seq, kind, name, doc}``."""
        rows = await self.db.fetch(
            "SELECT id, kind, name, doc FROM hier_journal WHERE id > ? ORDER BY id LIMIT ?",
            (seq, limit),
        )
        return [_change(*r) for r in rows]

    async def replicated_items(self) -> list[dict[str, Any]]:
        """Every item replicated now, as changes with ``seq`` 0: groups first, each after
        the group it is nested in, then tasks, jobs, filters, policies, each by name."""
        out = await self._replicated_groups()
        for kind in KINDS[1:]:
            for name, text in await self.db.fetch(
                f"SELECT name, definition FROM {TABLES[kind]} ORDER BY name"
            ):
                doc = json.loads(text)
                if flagged(doc):
                    out.append(_change(0, kind, name, doc))
        return out

    async def _replicated_groups(self) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT g.name, p.name AS parent FROM groups g LEFT JOIN groups p"
            " ON p.id=g.parent_id WHERE g.replicate=1 ORDER BY g.name"
        )
        parents = {r["name"]: r["parent"] for r in rows}

        def depth(name: str) -> int:
            seen = {name}
            up = parents.get(name)
            while isinstance(up, str) and up in parents and up not in seen:
                seen.add(up)
                up = parents[up]
            return len(seen)

        rows.sort(key=lambda r: (depth(r["name"]), r["name"]))
        return [_change(0, "group", r["name"], {**r, "replicate": True}) for r in rows]

    async def child_lag_s(self, acked_seq: int, now: float | None = None) -> float:
        """How long the oldest change a child has not acknowledged (it acknowledged up to
        ``acked_seq``) has waited: 0 when it is up to date. One read."""
        row = await self._one(
            "SELECT at FROM hier_journal WHERE id > ? ORDER BY id LIMIT 1", (acked_seq,)
        )
        if row is None:
            return 0.0
        now = time.time() if now is None else now
        return round(max(0.0, now - float(row["at"])), 3)

    async def trim_journal(self, now: float | None = None, batch: int = 500) -> int:
        """Delete up to ``batch`` of the oldest journal rows no longer needed: those every
        known child acknowledged and older than :data:`KEEP_ACKED_S`, and any older than
        :data:`KEEP_MAX_S`. Only ever a run from the oldest row (so :meth:`journal_floor` is
        exact), never the newest row (so a seq is never given twice). Returns how many went;
        the retention pass calls it until 0."""
        now = time.time() if now is None else now
        row = await self._one(
            "SELECT (SELECT max(id) FROM hier_journal) AS tail,"
            " (SELECT min(acked_seq) FROM hier_children) AS acked,"
            " (SELECT max(id) FROM hier_journal WHERE at < ?) AS old,"
            " (SELECT max(id) FROM hier_journal WHERE at < ?) AS too_old",
            (now - KEEP_ACKED_S, now - KEEP_MAX_S),
        )
        if row is None or row["tail"] is None:
            return 0
        tail = int(row["tail"])
        acked = tail if row["acked"] is None else int(row["acked"])
        upto = max(min(acked, int(row["old"] or 0)), int(row["too_old"] or 0))
        upto = min(upto, tail - 1)
        if upto <= 0:
            return 0
        return await self.db.execute(
            "DELETE FROM hier_journal WHERE id IN (SELECT id FROM hier_journal WHERE id <= ?"
            " ORDER BY id LIMIT ?)",
            (upto, batch),
        )

    # -- parent side: children ----------------------------------------------------------

    async def upsert_child(
        self, name: str, ns_id: str, connected: bool, below: list[str] | None = None
    ) -> None:
        """Record a child's link coming up or going down (``below``: the ids of every NS
        under it; None keeps what was known). ``linked_at`` is when it last came up."""
        now = time.time()
        async with self.db.transaction():
            old = await self._one(
                "SELECT linked_at, below FROM hier_children WHERE name=?", (name,)
            )
            linked_at = now if connected else (old["linked_at"] if old else None)
            kept = json.loads(old["below"]) if old else []
            await self.db.execute(
                "INSERT INTO hier_children(name, ns_id, connected, last_seen, linked_at, below)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " ns_id=excluded.ns_id, connected=excluded.connected,"
                " last_seen=excluded.last_seen, linked_at=excluded.linked_at,"
                " below=excluded.below",
                (
                    name,
                    ns_id,
                    int(connected),
                    now,
                    linked_at,
                    json.dumps(kept if below is None else below),
                ),
            )

    async def child_acked(self, name: str, seq: int) -> None:
        """The child applied every change up to ``seq`` (its cursor, as it answered)."""
        await self.db.execute(
            "UPDATE hier_children SET acked_seq=?, last_seen=? WHERE name=?",
            (seq, time.time(), name),
        )

    async def set_child_summary(self, name: str, summary: dict[str, Any]) -> None:
        await self.db.execute(
            "UPDATE hier_children SET summary=?, last_seen=? WHERE name=?",
            (json.dumps(summary), time.time(), name),
        )

    async def set_child_clashes(self, name: str, clashes: list[dict[str, Any]]) -> None:
        await self.db.execute(
            "UPDATE hier_children SET clashes=? WHERE name=?", (json.dumps(clashes), name)
        )

    async def children(self) -> list[dict[str, Any]]:
        """Every child ever linked: ``{name, ns_id, connected, acked_seq, last_seen,
        linked_at, summary, clashes, below}``, by name."""
        rows = await self._all("SELECT * FROM hier_children ORDER BY name")
        return [_child_row(r) for r in rows]

    async def child(self, name: str) -> dict[str, Any] | None:
        row = await self._one("SELECT * FROM hier_children WHERE name=?", (name,))
        return _child_row(row) if row else None

    # -- child side ---------------------------------------------------------------------

    async def apply_from_parent(
        self, parent: str, changes: list[dict[str, Any]], full: bool, upto: int
    ) -> dict[str, Any]:
        """Apply a batch of the parent's changes, in order.

        Incremental (``full`` false), in one transaction: changes at or below this parent's
        cursor are skipped (a batch sent again changes nothing); the cursor becomes the last
        seq. Full: ``changes`` is every item the parent replicates (seq 0), applied
        :data:`FULL_CHUNK` items per transaction so this NS's own writes (its fleet's results)
        are not held for the whole set; then, in one last transaction, every item here from a
        parent that is not in the set is deleted and the cursor becomes ``upto``. A full set
        cut short leaves the cursor where it was, so the parent sends a full set again. An item
        of this NS's own (origin '') by the same name is left alone and recorded as a clash. A
        malformed change refuses the whole batch before anything is applied. Returns ``{cursor,
        applied, deleted, unchanged, clashes, notes, items}``: ``clashes`` every clash with
        this parent now (``{kind, name}``), ``notes`` what was done otherwise than asked (a
        group created at top level, a document this NS cannot validate), ``items`` each item
        applied or deleted (``{kind, name, deleted}``: the NS recomputes filters and tells the
        agents of policies)."""
        out: dict[str, Any] = {"applied": 0, "deleted": 0, "unchanged": 0, "notes": [], "items": []}
        parsed = [_parts(change) for change in changes]
        if full:
            seen = {(kind, name) for _, kind, name, _ in parsed}
            for i in range(0, len(parsed), FULL_CHUNK):
                async with self.db.transaction():
                    for _, kind, name, doc in parsed[i : i + FULL_CHUNK]:
                        await self._apply_change(parent, kind, name, doc, out)
            async with self.db.transaction():
                await self._delete_missing(parent, seen, out)
                return await self._applied(parent, upto, out)
        async with self.db.transaction():
            cursor = last = await self.parent_cursor(parent)
            for seq, kind, name, doc in parsed:
                if seq <= cursor:
                    continue
                await self._apply_change(parent, kind, name, doc, out)
                last = max(last, seq)
            return await self._applied(parent, last, out)

    async def _applied(self, parent: str, cursor: int, out: dict[str, Any]) -> dict[str, Any]:
        """The end of a batch: this parent's cursor stored, and the answer."""
        await self.db.execute(
            "INSERT INTO hier_cursor(parent, seq, at) VALUES (?, ?, ?) ON CONFLICT(parent)"
            " DO UPDATE SET seq=excluded.seq, at=excluded.at",
            (parent, cursor, time.time()),
        )
        rows = await self._all(
            "SELECT kind, name FROM hier_clashes WHERE parent=? ORDER BY kind, name", (parent,)
        )
        return {"cursor": cursor, **out, "clashes": rows}

    async def _apply_change(
        self, parent: str, kind: str, name: str, doc: Any, out: dict[str, Any]
    ) -> None:
        """One change: a delete of the parent's item, or an upsert (or a clash)."""
        if doc is not None and kind != "group" and await self._holds(parent, kind, name, doc):
            out["unchanged"] += 1  # a full set after a relink is mostly this: one read each
            return
        origin = await self._origin(kind, name)
        if doc is None:
            await self._forget_clash(parent, kind, name)
            if not origin:  # absent, or this NS's own: nothing of the parent's to delete
                out["unchanged"] += 1
                return
            await self._delete_from_parent(kind, name, out)
            return
        if not isinstance(doc, dict) or doc.get("name", name) != name:
            out["notes"].append(f"{kind} {name}: not applied: its document is not a {kind}")
            return
        if origin == "" or await self._other_namespace_own(kind, name):
            await self.db.execute(
                "INSERT INTO hier_clashes(parent, kind, name, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(parent, kind, name) DO UPDATE SET at=excluded.at",
                (parent, kind, name, time.time()),
            )
            return
        await self._forget_clash(parent, kind, name)
        if await self._upsert_from_parent(parent, kind, name, dict(doc), out):
            out["applied"] += 1
            out["items"].append({"kind": kind, "name": name, "deleted": False})
        else:
            out["unchanged"] += 1

    async def _holds(self, parent: str, kind: str, name: str, doc: Any) -> bool:
        """Whether this NS already holds exactly ``doc`` as ``parent``'s item."""
        row = await self._one(
            f"SELECT definition FROM {TABLES[kind]} WHERE name=? AND origin=?", (name, parent)
        )
        return row is not None and json.loads(row["definition"]) == doc

    async def _origin(self, kind: str, name: str) -> str | None:
        """Where the item came from ('' : this NS's own); None: no such item."""
        row = await self._one(f"SELECT origin FROM {TABLES[kind]} WHERE name=?", (name,))
        return None if row is None else str(row["origin"])

    async def _other_namespace_own(self, kind: str, name: str) -> bool:
        """Tasks and jobs share one namespace: whether this NS has its own item of the other
        kind by this name. One from a parent is deleted instead (the parent changed the
        item's kind: its delete may come later in a full set)."""
        if kind not in ("task", "job"):
            return False
        other = "job" if kind == "task" else "task"
        origin = await self._origin(other, name)
        if origin:
            await self.delete_definition(other, name)
        return origin == ""

    async def _forget_clash(self, parent: str, kind: str, name: str) -> None:
        await self.db.execute(
            "DELETE FROM hier_clashes WHERE parent=? AND kind=? AND name=?", (parent, kind, name)
        )

    async def _upsert_from_parent(
        self, parent: str, kind: str, name: str, doc: dict[str, Any], out: dict[str, Any]
    ) -> bool:
        """Save the parent's item through its own save path, then mark its origin; whether
        anything changed. A document this NS cannot save is left out with a note."""
        doc["name"] = name
        if kind == "group":
            return await self._upsert_group(parent, name, doc, out)
        missing = {"task": ("type", "kind"), "job": ("type",), "policy": ("enabled",)}
        lacking = [k for k in missing.get(kind, ()) if k not in doc]
        if lacking:
            out["notes"].append(f"{kind} {name}: not applied: its document has no {lacking[0]!r}")
            return False
        try:
            doc = await self._validated(kind, doc)
        except ValidationError as exc:  # e.g. a task type this NS's version does not know
            out["notes"].append(f"{kind} {name}: not applied: {exc}")
            return False
        table = TABLES[kind]
        if kind in ("task", "job"):
            save = self.save_task_version if kind == "task" else self.save_job_version
            changed = bool((await save(doc, f"parent NS {parent}"))["changed"])
        else:
            row = await self._one(f"SELECT definition FROM {table} WHERE name=?", (name,))
            changed = row is None or json.loads(row["definition"]) != doc
            if changed:
                await (self.save_filter if kind == "filter" else self.save_policy)(doc)
        marked = await self.db.execute(
            f"UPDATE {table} SET origin=? WHERE name=? AND origin != ?", (parent, name, parent)
        )
        return changed or marked > 0

    async def _validated(self, kind: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The parent's document checked as this NS checks its own admins' (the parent is
        trusted with what runs here, not with what this NS stores): ValidationError if not."""
        if kind == "task":  # stored with its kind, which a document does not name
            return validate_task({k: v for k, v in doc.items() if k != "kind"}).to_dict()
        if kind == "job":
            return validate_job(doc, (await self.catalog()).get)
        if kind == "policy":
            row = await self._one("SELECT kind FROM tasks WHERE name=?", (doc.get("task"),))
            return validate_policy(doc, row["kind"] if row else None)
        return validate_filter(doc)[0]

    async def _upsert_group(
        self, parent: str, name: str, doc: dict[str, Any], out: dict[str, Any]
    ) -> bool:
        """A group from the parent: under its parent group when that exists here, else at top
        level (noted). Its members are this NS's business."""
        above = doc.get("parent") if isinstance(doc.get("parent"), str) else None
        above_id = None
        if above:
            row = await self._one("SELECT id FROM groups WHERE name=?", (above,))
            above_id = row["id"] if row else None
        replicate = flagged(doc)
        mine = {"name": name, "parent": above if above_id else None, "replicate": replicate}
        old = await self._one(
            "SELECT id, parent_id, origin, replicate FROM groups WHERE name=?", (name,)
        )
        if old is not None and (old["parent_id"], old["origin"], bool(old["replicate"])) == (
            above_id,
            parent,
            replicate,
        ):
            return False
        if above and above_id is None:
            out["notes"].append(
                f"group {name}: its parent group {above} does not exist here: created at top level"
            )
        await self._journal("group", name, mine)
        if old is None:
            await self.db.insert(
                "INSERT INTO groups(name, parent_id, created_at, origin, replicate)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, above_id, time.time(), parent, int(replicate)),
            )
        else:
            await self.db.execute(
                "UPDATE groups SET parent_id=?, origin=?, replicate=? WHERE id=?",
                (above_id, parent, int(replicate), old["id"]),
            )
        return True

    async def _delete_from_parent(self, kind: str, name: str, out: dict[str, Any]) -> None:
        """Delete an item that came from a parent, through its own delete path. A group's
        nested groups (this NS's own, or the parent's not deleted yet) move to top level."""
        if kind == "group":
            row = await self._one("SELECT id FROM groups WHERE name=?", (name,))
            if row is None:
                return
            nested = await self._all("SELECT name FROM groups WHERE parent_id=?", (row["id"],))
            for g in nested:
                await self._journal("group", g["name"], await self._moved_up(g["name"]))
            if nested:
                await self.db.execute(
                    "UPDATE groups SET parent_id=NULL WHERE parent_id=?", (row["id"],)
                )
                out["notes"].append(
                    f"group {name} deleted: {', '.join(g['name'] for g in nested)} moved to top level"
                )
            await self.delete_group(int(row["id"]))
        elif kind in ("task", "job"):
            await self.delete_definition(kind, name)
        else:
            await self.delete_item(kind, name)
        out["deleted"] += 1
        out["items"].append({"kind": kind, "name": name, "deleted": True})

    async def _moved_up(self, name: str) -> dict[str, Any] | None:
        """A group's replicated document once it is moved to top level (None: not replicated)."""
        doc = await self._replicated_doc("group", name)
        return None if doc is None else {**doc, "parent": None}

    async def _delete_missing(
        self, parent: str, seen: set[tuple[str, str]], out: dict[str, Any]
    ) -> None:
        """After a full set: every item from a parent that the set does not hold goes (also
        a former parent's: a NS has one parent), and clashes with names no longer in it."""
        for kind in reversed(KINDS):
            rows = await self._all(f"SELECT name FROM {TABLES[kind]} WHERE origin != ''")
            for r in rows:
                if (kind, r["name"]) not in seen:
                    await self._delete_from_parent(kind, r["name"], out)
        for r in await self._all("SELECT kind, name FROM hier_clashes WHERE parent=?", (parent,)):
            if (r["kind"], r["name"]) not in seen:
                await self._forget_clash(parent, r["kind"], r["name"])

    async def parent_cursor(self, parent: str) -> int:
        """The last change of ``parent`` applied here (0: none)."""
        row = await self._one("SELECT seq FROM hier_cursor WHERE parent=?", (parent,))
        return int(row["seq"]) if row else 0

    async def hier_clashes(self) -> list[dict[str, Any]]:
        """The parent's items not applied because an item of this NS has the name:
        ``{parent, kind, name, at}``."""
        return await self._all(
            "SELECT parent, kind, name, at FROM hier_clashes ORDER BY kind, name"
        )

    async def item_origin(self, kind: str, name: str) -> str:
        """The parent NS an item came from ('' : this NS's own, or no such item)."""
        if kind not in TABLES:
            return ""
        return await self._origin(kind, name) or ""


def _parts(change: Any) -> tuple[int, str, str, Any]:
    """A change's ``seq``, ``kind``, ``name``, ``doc``; ValueError (refusing the whole
    batch, so the cursor does not move past it) when it is not a change."""
    if not isinstance(change, dict):
        raise ValueError(f"a change must be a mapping, not {type(change).__name__}")
    seq, kind, name = change.get("seq", 0), change.get("kind"), change.get("name")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValueError(f"change {change.get('name')!r}: seq must be an integer")
    if kind not in TABLES or not isinstance(name, str) or not name:
        raise ValueError(f"change {seq}: no such kind {kind!r} or no name")
    return seq, str(kind), name, change.get("doc")


def _child_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        **r,
        "connected": bool(r["connected"]),
        "acked_seq": int(r["acked_seq"]),
        "summary": json.loads(r["summary"]) if r["summary"] else None,
        "clashes": json.loads(r["clashes"] or "[]"),
        "below": json.loads(r["below"] or "[]"),
    }
