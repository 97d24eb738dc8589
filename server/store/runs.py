"""Runs, their steps and instances: creating them, dispatching them, rolling reports up into
them (``apply_reports``), ending them, and purging old ones; with the row types these pass.

Writes on the hot path (``apply_reports``, ``mark_dispatched``) are one transaction per batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from protocol.messages import Report
from protocol.states import TERMINAL, InstanceState, may_move
from server.store.base import StoreBase

HELD_BACK_EVERY_S = 600.0
"""An agent's word that it holds work back (its disk is full) is raised at most this often."""
HELD_BACK_REMEMBERED = 10_000
_TERMINAL_SQL = "(" + ",".join(f"'{s}'" for s in sorted(TERMINAL)) + ")"
_COUNTS = (
    "count(i.id) AS total,"
    " count(i.id) FILTER (WHERE i.status='succeeded') AS succeeded,"
    f" count(i.id) FILTER (WHERE i.status IN {_TERMINAL_SQL} AND i.status!='succeeded')"
    " AS failed,"
    f" count(i.id) FILTER (WHERE i.status NOT IN {_TERMINAL_SQL}) AS pending"
)
"""A run's top-level instances by outcome (``count ... FILTER``: both databases, integers)."""

# -- instance ids on the wire ---------------------------------------------------------------
#
# An instance's id on the wire is its row id together with the boot epoch of the NS start that
# created it: ``(epoch << EPOCH_SHIFT) | row id``, at most 63 bits (a signed 64-bit integer, as
# SQLite and msgpack hold it on relays and agents, who treat it as an opaque number). Restoring
# a backup of the database makes SQLite hand out again the row ids the lost timeline gave out
# after the backup, which agents and relays remember for ``runtime.db.SEEN_KEEP_S``; the
# instances made after the restore come from a new start, so their wire ids are new. Work
# re-sent after an ordinary restart keeps the epoch it was created with (agents still drop the
# repeat). Rows made before epochs existed have epoch 0: their wire id is their row id.

EPOCH_SHIFT = 40
ROW_ID_MASK = (1 << EPOCH_SHIFT) - 1
EPOCH_LIMIT = 1 << 23
"""Epochs are 1 .. EPOCH_LIMIT - 1 (0: rows made before epochs existed)."""
_WIRE_SQL = f"(epoch << {EPOCH_SHIFT}) | id"
_NO_LIMIT = 1 << 62
_NEW_INSTANCE_TYPES = (
    "bigint", "text", "bigint", "text", "text", "text", "text", "float8", "float8", "bigint"
)  # fmt: skip
_PROGRESS_SQL = (
    "UPDATE instances SET status=?, started_at=coalesce(?, started_at), updated_at=? WHERE id=?"
)
_PROGRESS_PG = (
    "UPDATE instances AS i SET status=v.status, started_at=coalesce(v.started_at, i.started_at),"
    " updated_at=v.updated_at FROM {rows} AS v(status, started_at, updated_at, id)"
    " WHERE i.id=v.id"
)
_PROGRESS_TYPES = ("text", "float8", "float8", "bigint")
_FINAL_SQL = (
    "UPDATE instances SET status=?, return_code=?, output=?, reason=?,"
    " started_at=coalesce(?, started_at), ended_at=?, updated_at=? WHERE id=?"
)
_FINAL_PG = (
    "UPDATE instances AS i SET status=v.status, return_code=v.return_code, output=v.output,"
    " reason=v.reason, started_at=coalesce(v.started_at, i.started_at), ended_at=v.ended_at,"
    " updated_at=v.updated_at FROM {rows}"
    " AS v(status, return_code, output, reason, started_at, ended_at, updated_at, id)"
    " WHERE i.id=v.id"
)
_FINAL_TYPES = ("text", "bigint", "text", "text", "float8", "float8", "float8", "bigint")
"""The roll-up's two UPDATEs: per row on SQLite, one ``unnest`` statement on PostgreSQL."""


def boot_epoch(now: float | None = None, previous: int = 0) -> int:
    """A new boot epoch: the start time in seconds, modulo 2**23 - 1, plus 1 (so never 0), and
    never ``previous``. Time-ordered rather than random, so wire ids keep growing as relays'
    ``forget_seen`` expects (it wraps every 97 days, beyond the 14 days ids are remembered), and
    a start after a restore (later than every start of the lost timeline) cannot repeat one
    of theirs unless the clock went back by that exact second."""
    epoch = int(time.time() if now is None else now) % (EPOCH_LIMIT - 1) + 1
    if epoch == previous:
        epoch = epoch % (EPOCH_LIMIT - 1) + 1
    return epoch


AHEAD_S = 86_400.0
"""A time an agent reports (``started_at``, ``ended_at``, a live piece's ``at``) is kept at most
this far ahead of the NS's clock, and never before 1970: a wrong clock or a rogue agent's 1e20
would otherwise be stored and break every admin who shows it (docs/protocol.md, "Reports")."""


def sane_time(ts: float | None, now: float) -> float | None:
    """``ts`` clamped to [0, ``now`` + ``AHEAD_S``] (None stays None). A time that is not a
    finite number raises ``ValueError``: the report that carries it is refused."""
    if ts is None:
        return None
    if not math.isfinite(ts):
        raise ValueError(f"not a finite time: {ts!r}")
    return min(max(ts, 0.0), now + AHEAD_S)


def _sane_times(r: Report, now: float) -> Report:
    """``r`` with its times made sane (``sane_time``); cheap when they already are."""
    started, ended = sane_time(r.started_at, now), sane_time(r.ended_at, now)
    if started == r.started_at and ended == r.ended_at:
        return r
    return dataclasses.replace(r, started_at=started, ended_at=ended)


def wire_id(epoch: int, row_id: int) -> int:
    """An instance's id as relays and agents know it."""
    return (epoch << EPOCH_SHIFT) | row_id


def _from_wire(reports: list[Report]) -> tuple[list[Report], list[int]]:
    """Reports from a relay with their row ids, and the epoch each one's wire id claims (in
    order; ``apply_reports`` checks it against the instance's own). Reports of rows made before
    epochs existed (epoch 0) pass as they are."""
    epochs = [r.instance_id >> EPOCH_SHIFT for r in reports]
    if not any(epochs):
        return reports, epochs
    return [
        r
        if not e
        else Report(
            instance_id=r.instance_id & ROW_ID_MASK,
            state=r.state,
            step=r.step,
            computer=r.computer,
            return_code=r.return_code,
            output=r.output,
            reason=r.reason,
            started_at=r.started_at,
            ended_at=r.ended_at,
        )
        for r, e in zip(reports, epochs, strict=True)
    ], epochs


@dataclass(frozen=True, slots=True)
class NewInstance:
    """One instance to create with a run."""

    computer_id: int | None
    computer: str
    route: str | None
    status: str = InstanceState.PENDING
    reason: str = ""


class Pending(NamedTuple):
    """An instance waiting to be dispatched (``Store.undispatched``)."""

    id: int
    run_id: int
    step: str
    computer: str
    computer_id: int | None
    has_agent: int
    mac: str
    wire: int
    """Its id on the wire (``wire_id``)."""


class Parent(NamedTuple):
    """A top-level instance as a batch of reports finds it (``Store.apply_reports``)."""

    status: str
    run_id: int
    step: str
    computer: str
    computer_id: int | None
    route: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class Change:
    """An instance that moved to a new state through ``apply_reports``."""

    instance_id: int
    run_id: int
    computer: str
    state: str
    return_code: int | None
    reason: str
    step: str = ""
    parent_id: int | None = None
    route: str | None = None


def _job_step_names(task: dict[str, Any]) -> frozenset[str]:
    """The steps an agent may report for an instance of ``task``: a client job's ``run``
    instructions (nested jobs of the same kind are inlined as ``outer/inner``); none otherwise."""
    if task.get("type") != "client-job":
        return frozenset()
    program = task.get("job", {}).get("program", [])
    return frozenset(str(ins["step"]) for ins in program if ins.get("op") == "run")


class RunsMixin(StoreBase):
    """Tables ``runs``, ``steps``, ``instances``."""

    _epoch = 0

    @property
    def epoch(self) -> int:
        """This start's boot epoch (made at first use, kept in memory; see ``wire_id``)."""
        if not self._epoch:
            self._epoch = boot_epoch()
        return self._epoch

    # -- runs ---------------------------------------------------------------------------

    async def create_run(
        self,
        definition: dict[str, Any],
        instances: list[NewInstance],
        deadline: float,
        *,
        targets: list[int] | None = None,
        first_step: bool = True,
        schedule: str | None = None,
    ) -> int:
        """Create a run, its first step (``''``) and its instances in one transaction.

        Server jobs pass ``first_step=False``: their steps are created one by one (:meth:`start_step`).
        ``schedule``: the schedule that fired it (None: an administrator started it).
        """
        now = time.time()
        # The version of the saved task or job this run runs, read in the same statement.
        version_of = "jobs" if "job" in definition else "tasks"
        sql = (
            "INSERT INTO runs(task_name, kind, definition, status, created_at, deadline, targets,"
            " schedule, version) VALUES (?, ?, ?, 'running', ?, ?, ?, ?,"
            f" (SELECT version FROM {version_of} WHERE name=?))"
        )
        args = (
            definition["name"],
            # A client job dispatches like a client task but is listed as what it is.
            "client-job" if definition.get("type") == "client-job" else definition["kind"],
            json.dumps(definition),
            now,
            deadline,
            json.dumps(targets or []),
            schedule,
            definition["name"],
        )
        async with self.db.transaction():
            run_id = await self.db.insert(sql, args)
            if first_step:
                await self._insert_step(run_id, "", definition, deadline, instances, now)
        return run_id

    async def _insert_step(
        self,
        run_id: int,
        step: str,
        task: dict[str, Any],
        deadline: float,
        instances: list[NewInstance],
        now: float,
    ) -> None:
        epoch = self.epoch
        await self.db.execute(
            "INSERT INTO steps(run_id, step, task, deadline, started_at) VALUES (?, ?, ?, ?, ?)",
            (run_id, step, json.dumps(task), deadline, now),
        )
        columns = (
            "INSERT INTO instances(run_id, step, computer_id, computer, route, status, reason,"
            " ended_at, updated_at, epoch)"
        )
        await self.db.bulk(
            columns + " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            columns + " SELECT * FROM {rows}",
            _NEW_INSTANCE_TYPES,
            [
                (
                    run_id,
                    step,
                    i.computer_id,
                    i.computer,
                    i.route,
                    i.status,
                    i.reason,
                    now if i.status in TERMINAL else None,
                    now,
                    epoch,
                )
                for i in instances
            ],
        )

    async def start_step(
        self,
        run_id: int,
        step: str,
        task: dict[str, Any],
        deadline: float,
        instances: list[NewInstance],
        machine: dict[str, Any],
    ) -> None:
        """A server job enters a step: its instances and the job's new state, in one transaction.

        After a crash either both exist or neither: the step is never dispatched twice.
        """
        now = time.time()
        async with self.db.transaction():
            await self._insert_step(run_id, step, task, deadline, instances, now)
            await self.db.execute(
                "UPDATE runs SET machine=? WHERE id=?", (json.dumps(machine), run_id)
            )

    async def save_machine(self, run_id: int, machine: dict[str, Any]) -> None:
        await self.db.execute("UPDATE runs SET machine=? WHERE id=?", (json.dumps(machine), run_id))

    async def run(self, run_id: int) -> dict[str, Any] | None:
        row = await self._one("SELECT * FROM runs WHERE id=?", (run_id,))
        if row is not None:
            row["definition"] = json.loads(row["definition"])
            row["targets"] = json.loads(row["targets"])
            row["machine"] = json.loads(row["machine"]) if row["machine"] else None
        return row

    async def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT r.id, r.task_name, r.kind, r.status, r.created_at, r.ended_at, r.schedule,"
            f" r.version, {_COUNTS}"
            " FROM runs r LEFT JOIN instances i ON i.run_id=r.id AND i.parent_id IS NULL"
            " GROUP BY r.id ORDER BY r.id DESC LIMIT ?",
            (limit,),
        )

    async def running_runs(self, limit: int) -> list[dict[str, Any]]:
        """Runs not ended, newest first, with their instance counts as in :meth:`runs`."""
        return await self._all(
            "SELECT r.id, r.task_name, r.kind, r.status, r.created_at, r.deadline, r.schedule,"
            f" {_COUNTS}"
            " FROM runs r LEFT JOIN instances i ON i.run_id=r.id AND i.parent_id IS NULL"
            " WHERE r.status='running' GROUP BY r.id ORDER BY r.id DESC LIMIT ?",
            (limit,),
        )

    async def recent_failures(self, limit: int, runs: int = 200) -> list[dict[str, Any]]:
        """The last ``limit`` top-level instances that ended ``failed`` or ``timed_out``, among
        the newest ``runs`` runs (so the read stays on the run index, not a scan of every
        instance ever kept), latest end first."""
        return await self._all(
            "SELECT i.id AS instance_id, i.run_id, r.task_name, i.step, i.computer, i.status,"
            " i.return_code, i.reason, i.ended_at FROM instances i JOIN runs r ON r.id=i.run_id"
            " WHERE i.run_id IN (SELECT id FROM runs ORDER BY id DESC LIMIT ?)"
            " AND i.parent_id IS NULL AND i.status IN ('failed', 'timed_out')"
            " ORDER BY i.ended_at DESC, i.id DESC LIMIT ?",
            (runs, limit),
        )

    async def computer_runs(self, computer_id: int, limit: int) -> list[dict[str, Any]]:
        """Every run with a top-level instance on a computer, newest first, with that
        instance's state there (for a server job with several steps on it: its latest step's
        instance). Found through the ``instances_computer`` index."""
        return await self._all(
            "SELECT r.id AS run_id, r.task_name, r.kind, r.status AS run_status, r.created_at,"
            " i.id AS instance_id, i.step, i.status, i.return_code, i.reason, i.started_at,"
            " i.ended_at FROM instances i JOIN runs r ON r.id=i.run_id"
            " WHERE i.id IN (SELECT max(id) FROM instances"
            "  WHERE computer_id=? AND parent_id IS NULL GROUP BY run_id)"
            " ORDER BY r.id DESC LIMIT ?",
            (computer_id, limit),
        )

    async def instances(
        self, run_id: int, computer: str | None = None, output: bool = True
    ) -> list[dict[str, Any]]:
        """A run's instance rows; ``computer``: only that computer's; ``output`` false: without
        the output column, which is most of a row's bytes (the filters are SQL: a console that
        opens one cell of a 10,000-computer run reads one computer's rows, not all)."""
        columns = "id, step, parent_id, computer, computer_id, route, status, return_code,"
        columns += " output, reason," if output else " reason,"
        args: tuple[Any, ...]
        where, args = "run_id=?", (run_id,)
        if computer is not None:
            where, args = "run_id=? AND computer=?", (run_id, computer)
        return await self._all(
            f"SELECT {columns} started_at, ended_at FROM instances WHERE {where}"
            " ORDER BY computer, id",
            args,
        )

    async def steps(self, run_id: int) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT step, deadline, started_at FROM steps WHERE run_id=?"
            f" ORDER BY started_at, {self.db.rowid}",
            (run_id,),
        )

    async def active_runs(self) -> list[dict[str, Any]]:
        """Runs not ended (with their definition, targets and job state)."""
        rows = await self._all(
            "SELECT id, kind, deadline, definition, targets, machine FROM runs WHERE status='running'"
        )
        for r in rows:
            r["definition"] = json.loads(r["definition"])
            r["targets"] = json.loads(r["targets"])
            r["machine"] = json.loads(r["machine"]) if r["machine"] else None
        return rows

    async def open_steps(self) -> list[dict[str, Any]]:
        """Steps of running runs, and per route how many top-level instances are not terminal.

        A step whose instances all ended has one row with ``route`` NULL and ``remaining`` 0.
        """
        return await self._all(
            "SELECT s.run_id, s.step, s.deadline, i.route, count(i.id) AS remaining"
            " FROM steps s JOIN runs r ON r.id=s.run_id"
            " LEFT JOIN instances i ON i.run_id=s.run_id AND i.step=s.step AND i.parent_id IS NULL"
            f"  AND i.status NOT IN {_TERMINAL_SQL}"
            " WHERE r.status='running' GROUP BY s.run_id, s.step, i.route"
        )

    async def undispatched(self, route: str, after_id: int = 0, limit: int = -1) -> list[Pending]:
        """Pending instances routed to ``route`` and not yet taken by it: oldest first, from
        ``after_id`` on, at most ``limit`` (-1: all), so a dispatch of ten thousand can send its
        first chunk before reading the rest (the partial index ``instances_undispatched`` holds
        them in id order). Plain rows, not maps: a step reads ten thousand of them."""
        rows = await self.db.fetch(
            "SELECT i.id, i.run_id, i.step, i.computer, i.computer_id,"
            " coalesce(c.has_agent, 0), coalesce(c.mac, ''),"
            f" (i.epoch << {EPOCH_SHIFT}) | i.id"
            " FROM instances i JOIN runs r ON r.id=i.run_id"
            " LEFT JOIN computers c ON c.id=i.computer_id"
            " WHERE i.route=? AND i.dispatched=0 AND i.id>? AND r.status='running'"
            f" AND i.status NOT IN {_TERMINAL_SQL}"
            " AND i.parent_id IS NULL ORDER BY i.id LIMIT ?",
            (route, after_id, limit if limit >= 0 else _NO_LIMIT),
        )
        return list(map(Pending._make, rows))

    async def step_task(self, run_id: int, step: str) -> tuple[dict[str, Any], float] | None:
        """A step's task and deadline (read once per dispatch, not once per instance)."""
        row = await self._one(
            "SELECT task, deadline FROM steps WHERE run_id=? AND step=?", (run_id, step)
        )
        return (json.loads(row["task"]), float(row["deadline"])) if row is not None else None

    async def reroute(self, computer_id: int, old: str, new: str) -> list[dict[str, Any]]:
        """Move a computer's unfinished instances from one route to another, to be dispatched
        anew; return them (``wire``: the id the old relay knows them by)."""
        async with self.db.transaction():
            rows = await self._all(
                f"SELECT id, run_id, step, {_WIRE_SQL} AS wire FROM instances WHERE computer_id=?"
                f" AND route=? AND parent_id IS NULL AND status NOT IN {_TERMINAL_SQL}",
                (computer_id, old),
            )
            await self.db.executemany(
                "UPDATE instances SET route=?, dispatched=0 WHERE id=?",
                [(new, r["id"]) for r in rows],
            )
        return rows

    async def mark_dispatched(self, instance_ids: list[int]) -> None:
        # One statement for a dispatch's thousand ids (a list parameter), not a thousand: a
        # third less on SQLite, and one round trip on PostgreSQL.
        await self.db.execute(
            f"UPDATE instances SET dispatched=1 WHERE {self.db.in_list('id')}",
            (self.db.list_arg(instance_ids),),
        )

    async def apply_reports(self, reports: list[Report], route: str | None = None) -> list[Change]:
        """Apply a batch of reports in one transaction; return the instances that moved.

        A report that would move a terminal instance, or move progress backwards, is
        ignored: a repeated or late result changes nothing. A report with a ``step`` is a
        step of a client job: it creates or moves that step's row under the instance, only if
        the instance runs a client job whose program has that step, and (to create the row)
        the instance has not ended; any other step report is refused and counted. Report
        times are made sane first (``sane_time``): not finite, refused; far off, clamped.
        """
        if not reports:
            return []
        async with self.db.transaction():
            return await self._apply_reports(reports, route)

    async def _apply_reports(self, reports: list[Report], route: str | None) -> list[Change]:
        claimed: list[int] | None = None
        if route is not None:  # from a relay: wire ids (``wire_id``), made row ids here
            reports, claimed = _from_wire(reports)
        parents = await self._by_ids(list({r.instance_id for r in reports}))
        mine: list[tuple[Report, Parent, str]] = []  # (report, its instance, the step's row name)
        with_steps = False
        clock = time.time()
        for n, r in enumerate(reports):
            parent = parents.get(r.instance_id)
            try:
                r = _sane_times(r, clock)
            except ValueError:
                self.refused += 1  # NaN or inf: no time to keep, so not the report either
                continue
            if parent is None or (r.computer and r.computer != parent.computer):
                self.refused += 1
                continue
            if claimed is not None and claimed[n] != parent.epoch:
                # An id another start of this NS gave out: the lost timeline of a restored
                # backup (its row id now names another instance). Never take its result.
                self.refused += 1
                continue
            if route is not None and parent.route != route:
                self.refused += 1  # a TS may report only for computers routed to it
                continue
            if r.state == InstanceState.PENDING:
                # Where every instance starts, so it moves nothing; with a reason, it is the
                # agent saying why it holds the work back (its disk is full): see ``held_back``.
                if r.reason:
                    self._hold_back(parent.computer, r.reason)
                continue
            step = (f"{parent.step}/{r.step}" if parent.step else r.step) if r.step else ""
            with_steps = with_steps or bool(step)
            mine.append((r, parent, step))
        if with_steps:
            mine = await self._known_steps(mine)
        now = time.time()
        # A client job's steps: their rows, created (all in one statement) where missing.
        keys = list({(r.instance_id, step): None for r, _, step in mine if step})
        children = await self._children(keys)
        missing: dict[tuple[int, str], Parent] = {}
        late: set[tuple[int, str]] = set()
        for r, parent, step in mine:
            if step and (r.instance_id, step) not in children:
                if parent.status in TERMINAL:
                    late.add((r.instance_id, step))  # no new step under an ended job
                else:
                    missing[(r.instance_id, step)] = parent
        if late:
            self.refused += sum(1 for r, _, step in mine if (r.instance_id, step) in late)
            mine = [m for m in mine if (m[0].instance_id, m[2]) not in late]
        if missing:
            await self.db.executemany(
                "INSERT INTO instances(run_id, step, parent_id, computer_id, computer, route,"
                " status, updated_at, dispatched) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, 1)",
                [
                    (p.run_id, step, iid, p.computer_id, p.computer, p.route, now)
                    for (iid, step), p in missing.items()
                ],
            )
            children.update(await self._children(list(missing)))
        moved: dict[int, str] = {}  # a top-level instance's status once a report moved it
        changes: list[Change] = []
        progress: list[tuple[Any, ...]] = []
        final: list[tuple[Any, ...]] = []
        kept: list[tuple[Any, ...]] = []  # output of instances stopped before their result came
        for r, parent, step in mine:
            if step:
                child = children[(r.instance_id, step)]
                target_id, current, shown = int(child["id"]), str(child["status"]), step
            else:
                target_id, current, shown = (
                    r.instance_id,
                    moved.get(r.instance_id, parent.status),
                    parent.step,
                )
            if not may_move(current, r.state):
                if current == InstanceState.STOPPED and r.state in TERMINAL:
                    kept.append((r.return_code, r.output, r.started_at, target_id))
                continue
            if step:
                children[(r.instance_id, step)]["status"] = r.state
            else:
                moved[r.instance_id] = r.state
            if r.state in TERMINAL:
                final.append(
                    (
                        r.state,
                        r.return_code,
                        r.output,
                        r.reason,
                        r.started_at,
                        r.ended_at or now,
                        now,
                        target_id,
                    )
                )
            else:
                progress.append((r.state, r.started_at, now, target_id))
            changes.append(
                Change(
                    target_id,
                    parent.run_id,
                    parent.computer,
                    r.state,
                    r.return_code,
                    r.reason,
                    shown,
                    r.instance_id if step else None,
                    parent.route,
                )
            )
        if progress:
            if len({p[-1] for p in progress}) < len(progress):  # one instance moved twice
                await self.db.executemany(_PROGRESS_SQL, progress)
            else:
                await self.db.bulk(_PROGRESS_SQL, _PROGRESS_PG, _PROGRESS_TYPES, progress)
        if final:  # a terminal state is final: each instance at most once
            await self.db.bulk(_FINAL_SQL, _FINAL_PG, _FINAL_TYPES, final)
        if kept:
            # A stop ends an instance at once; the script's own result follows with what it
            # had printed. The state stays ``stopped``: only an empty output is filled in.
            await self.db.executemany(
                "UPDATE instances SET return_code=?, output=?, started_at=coalesce(started_at, ?)"
                " WHERE id=? AND output='' AND return_code IS NULL",
                kept,
            )
        return changes

    def _hold_back(self, computer: str, reason: str) -> None:
        """Note that ``computer``'s agent holds work back, for the roll-up to raise: at most once
        per computer per ``HELD_BACK_EVERY_S``, in bounded memory, as one printable line."""
        now = time.time()
        if now - self.held_back_at.get(computer, 0.0) < HELD_BACK_EVERY_S:
            return
        if len(self.held_back_at) >= HELD_BACK_REMEMBERED:
            self.held_back_at = {
                c: at for c, at in self.held_back_at.items() if now - at < HELD_BACK_EVERY_S
            }
            if len(self.held_back_at) >= HELD_BACK_REMEMBERED:
                return  # thousands of agents said so within the window: enough was raised
        self.held_back_at[computer] = now
        self.held_back[computer] = "".join(c if c.isprintable() else " " for c in reason[:500])

    async def _known_steps(
        self, mine: list[tuple[Report, Parent, str]]
    ) -> list[tuple[Report, Parent, str]]:
        """Keep the step reports that name a step of the client job their instance runs; refuse
        (and count) the rest: a step of a plain task, or a name the job's program does not have.

        Each instance's job is its step's task (the run's definition for a client-job run, the
        server job's step for a client job inside one), read once per batch, not per report.
        """
        wanted = list({(p.run_id, p.step): None for _, p, step in mine if step})
        names: dict[tuple[int, str], frozenset[str]] = {}
        for i in range(0, len(wanted), 400):
            chunk = wanted[i : i + 400]
            where = " OR ".join("(run_id=? AND step=?)" for _ in chunk)
            for run_id, step, task in await self.db.fetch(
                f"SELECT run_id, step, task FROM steps WHERE {where}",
                [v for pair in chunk for v in pair],
            ):
                names[(run_id, step)] = _job_step_names(json.loads(task))
        kept: list[tuple[Report, Parent, str]] = []
        for item in mine:
            r, parent, step = item
            if step and r.step not in names.get((parent.run_id, parent.step), frozenset()):
                self.refused += 1
                continue
            kept.append(item)
        return kept

    async def _children(self, keys: list[tuple[int, str]]) -> dict[tuple[int, str], dict[str, Any]]:
        """The rows of client-job steps by (parent id, step name)."""
        out: dict[tuple[int, str], dict[str, Any]] = {}
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            where = " OR ".join("(parent_id=? AND step=?)" for _ in chunk)
            args = [v for pair in chunk for v in pair]
            for row in await self._all(
                f"SELECT id, parent_id, step, status FROM instances WHERE {where}", args
            ):
                out[(row["parent_id"], row["step"])] = row
        return out

    async def _by_ids(self, ids: list[int]) -> dict[int, Parent]:
        """Top-level instances by id: plain rows, not maps (a roll-up reads ten thousand)."""
        out: dict[int, Parent] = {}
        for row in await self.db.fetch(
            "SELECT id, status, run_id, step, computer, computer_id, route, epoch FROM instances"
            f" WHERE {self.db.in_list('id')} AND parent_id IS NULL",
            (self.db.list_arg(ids),),
        ):
            out[row[0]] = Parent._make(row[1:])
        return out

    async def end_instances(
        self, run_id: int, state: str, reason: str, step: str | None = None
    ) -> list[dict[str, Any]]:
        """Force non-terminal instances of a run (or of one step) to ``state``; return them (id,
        route, step, ``wire``: the id relays know them by)."""
        sql = (
            f"SELECT id, route, step, parent_id, computer, {_WIRE_SQL} AS wire FROM instances"
            f" WHERE run_id=? AND status NOT IN {_TERMINAL_SQL}"
        )
        args: tuple[Any, ...] = (run_id,)
        if step is not None:
            sql += " AND (step=? OR step LIKE ?)"
            args += (step, f"{step}/%")
        async with self.db.transaction():
            rows = await self._all(sql, args)
            now = time.time()
            await self.db.executemany(
                "UPDATE instances SET status=?, reason=?, ended_at=?, updated_at=? WHERE id=?",
                [(state, reason, now, now, r["id"]) for r in rows],
            )
        return rows

    async def finish_run(self, run_id: int, status: str) -> None:
        await self.db.execute(
            "UPDATE runs SET status=?, ended_at=? WHERE id=? AND status='running'",
            (status, time.time(), run_id),
        )

    async def instance_states(self, run_id: int, step: str | None = None) -> list[dict[str, Any]]:
        """Top-level instances of a run (or of one step): status, return code, output."""
        sql = "SELECT id, status, return_code, output FROM instances WHERE run_id=? AND parent_id IS NULL"
        args: tuple[Any, ...] = (run_id,)
        if step is not None:
            sql += " AND step=?"
            args += (step,)
        return await self._all(sql, args)

    async def instance_counts(self, run_id: int, step: str | None = None) -> dict[str, int]:
        """How many top-level instances of a run (or of one of its steps) are in each state:
        a barrier's roll-up, or a big run's totals, without reading 10,000 rows back."""
        where, args = ("", (run_id,)) if step is None else (" AND step=?", (run_id, step))
        rows = await self.db.fetch(
            "SELECT status, count(*) FROM instances WHERE run_id=? AND parent_id IS NULL"
            f"{where} GROUP BY status",
            args,
        )
        return {str(status): int(n) for status, n in rows}

    # -- retention ----------------------------------------------------------------------

    def renew_epoch(self) -> None:
        """Take a new epoch: the newest instances were deleted, so SQLite gives their row ids
        out again, and ids made from now on must not repeat a wire id agents remember."""
        self._epoch = boot_epoch(previous=self.epoch)

    async def purge(self, older_than: float, runs: bool) -> dict[str, int]:
        """Delete report snapshots (and ended runs, if asked) older than ``older_than``."""
        db = self.db
        async with db.transaction():
            out = {
                "snapshots": await db.execute(
                    "DELETE FROM report_snapshots WHERE at < ?", (older_than,)
                )
            }
            if runs:
                old = (
                    "SELECT id FROM runs WHERE status != 'running'"
                    " AND coalesce(ended_at, created_at) < ?"
                )
                out["instances"] = await db.execute(
                    f"DELETE FROM instances WHERE run_id IN ({old})", (older_than,)
                )
                await db.execute(f"DELETE FROM steps WHERE run_id IN ({old})", (older_than,))
                out["runs"] = await db.execute(
                    f"DELETE FROM runs WHERE id IN ({old})", (older_than,)
                )
        if out.get("instances"):
            # Deleting the newest rows makes SQLite give their ids out again: instances made from
            # now on take a new epoch, so no wire id repeats one that agents still remember.
            self._epoch = boot_epoch(previous=self.epoch)
        return out
