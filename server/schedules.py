"""Schedules on the NS: a saved task or job started on its targets at set times.

A schedule document (TOML or JSON; ``docs/schedules.md``)::

    name = "nightly-update"
    run = "update-packages"            # a saved task or job
    cron = "0 3 * * *"                 # or: at = "2027-01-01T03:00:00+01:00", or: every = "15m"
    timezone = "Europe/Berlin"         # for cron and the window; default UTC
    window = { start = "22:00", end = "05:00" }   # optional: fire only inside it
    missed = "run-once"                # or "skip" (the default)
    enabled = true
    [targets]
    groups = ["web"]                   # and/or computers, filters; or all = true

Cron expressions are read by the ``cronsim`` library (which also steps through daylight-saving
changes the way Debian's cron does), never by a parser of ours.

:class:`Scheduler` is the NS's task that fires them: it works out each enabled schedule's next
time, sleeps until the earliest (woken at once when a schedule changes), and starts an ordinary
run through the same path as ``run.start`` (``server.adminops.runs.start_from_args``), with the
schedule's name on the run, audited as ``schedule:NAME``. Each firing is recorded under the key
(schedule, time) *before* its run starts, so no time fires twice, also across a restart, and
only while the schedule is still what the pass read (a change made meanwhile wins). Its clock
is injected (:class:`Clock`): tests drive it without sleeping.

Every search runs on the NS's event loop, so each is bounded: by a span of time
(:data:`HORIZON_S`), never a count of candidates, and a window is applied by jumping to its
next opening rather than by trying every time outside it (:class:`When`). A schedule no time
of which falls in its window is refused at save. The searches made are kept (:func:`next_time`),
so ``schedules`` and ``schedule show`` reuse what the scheduler found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from protocol.errors import Problem, ValidationError
from protocol.policies import target_problems
from server.adminops.base import ApiError
from server.adminops.runs import start_from_args
from server.interface import NS

MISSED_GRACE_S = 60.0
"""A time the scheduler reaches more than this late counts as missed (the NS was down or
stalled): ``missed = "skip"`` lets it go, ``"run-once"`` runs the latest such time once."""
IDLE_WAKE_S = 60.0
"""The wall clock is looked at again at least this often (it may have been set meanwhile)."""
HORIZON_S = 366 * 86400.0
"""How far a search for a schedule's time looks (ahead for the next, back for the latest
missed): a span of time, not a count of candidates, so a dense cron (every minute of one
hour) costs no more than a sparse one. A window no time falls in within it is refused at
save; a search that reaches it gives up (None)."""
MAX_EVERY_S = 366 * 86400
"""The longest ``every``: rarer times are what ``cron`` and ``at`` are for (and a huge one
put firing times past the year 9999)."""
MISSED = ("skip", "run-once")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_FIELDS = (
    "name",
    "description",
    "run",
    "targets",
    "cron",
    "timezone",
    "at",
    "every",
    "window",
    "missed",
    "enabled",
)
MIN_EVERY_S = 60


# -- the document -------------------------------------------------------------------------


def parse_every(text: str) -> int:
    """``"15m"``, ``"1h30m"``, ``"2d"``, ``"90s"`` → seconds; ValueError if not a duration."""
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m or not any(m.groups()):
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 1h30m or 2d")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def validate_schedule(doc: Any, *, now: float) -> dict[str, Any]:
    """Check a schedule document saved at ``now`` (the schedules' clock); return it normalized
    (defaults filled in). Every problem is reported at its field path (``window.start``,
    ``targets.groups``); whether ``run`` and the targets exist is checked by the caller, against
    the saved catalog. A schedule that could never fire (an ``at`` in the past or outside its
    window, a window none of its times fall in within :data:`HORIZON_S`) is refused here: saved,
    it would fire never, silently, and its searches would cost the NS for nothing."""
    if not isinstance(doc, dict):
        raise ValidationError("schedule document", [Problem("(document)", "must be a table")])
    problems: list[Problem] = []
    for key in doc:
        if key not in _FIELDS:
            problems.append(Problem(str(key), f"unknown field (known: {', '.join(_FIELDS)})"))
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(
            Problem("name", "required: 1-128 characters: letters, digits, space, '.', '_', '-'")
        )
    if not isinstance(doc.get("run"), str) or not doc.get("run"):
        problems.append(Problem("run", "required: the name of a saved task or job"))
    if not isinstance(doc.get("description", ""), str):
        problems.append(Problem("description", "must be a string"))
    if not isinstance(doc.get("enabled", True), bool):
        problems.append(Problem("enabled", "must be true or false"))
    if doc.get("missed", "skip") not in MISSED:
        problems.append(Problem("missed", 'must be "skip" or "run-once"'))
    out = {
        "name": name,
        "description": doc.get("description", ""),
        "run": doc.get("run"),
        "targets": _targets(doc.get("targets", {}), problems),
        "missed": doc.get("missed", "skip"),
        "enabled": doc.get("enabled", True),
    }
    out.update(_when(doc, problems))
    if not problems:
        _can_fire(out, now, problems)
    if problems:
        label = f"schedule {name!r}" if isinstance(name, str) else "schedule document"
        raise ValidationError(label, problems)
    return {k: v for k, v in out.items() if v is not None}


def _targets(targets: Any, problems: list[Problem]) -> dict[str, Any]:
    if not isinstance(targets, dict):
        problems.append(Problem("targets", "must be a table: computers, groups, filters, all"))
        return {}
    problems.extend(target_problems(targets))
    if targets.get("all") and any(targets.get(k) for k in ("computers", "groups", "filters")):
        problems.append(
            Problem("targets.all", "give either computers, groups and filters, or all, not both")
        )
    return dict(targets)


def _when(doc: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """The time fields: exactly one of cron, at, every; the time zone; the window."""
    given = [k for k in ("cron", "at", "every") if k in doc]
    if len(given) != 1:
        problems.append(
            Problem(
                "(document)",
                "give exactly one of cron (with timezone), at (ISO 8601 with offset) or every"
                f" (a duration); given: {', '.join(given) or 'none'}",
            )
        )
    tz_name = doc.get("timezone", "UTC")
    zone = _zone(tz_name, problems)
    out: dict[str, Any] = {"timezone": tz_name}
    if "cron" in doc:
        out["cron"] = doc["cron"]
        if not isinstance(doc["cron"], str) or len(doc["cron"].split()) != 5:
            problems.append(Problem("cron", 'must be 5 fields: "minute hour day month weekday"'))
        else:
            try:
                CronSim(doc["cron"], datetime.now(zone or UTC))
            except CronSimError as exc:
                problems.append(Problem("cron", f"not a cron expression: {exc}"))
    if "at" in doc:
        out["at"] = doc["at"]
        at = _instant(doc["at"])
        if at is None:
            problems.append(
                Problem(
                    "at", 'must be an ISO 8601 time with its offset: "2027-01-01T03:00:00+01:00"'
                )
            )
    if "every" in doc:
        out["every"] = doc["every"]
        try:
            every_s = parse_every(doc["every"])
            if every_s < MIN_EVERY_S:
                problems.append(Problem("every", "must be at least 1m"))
            elif every_s > MAX_EVERY_S:
                problems.append(Problem("every", "at most 366d; use cron or at for rarer times"))
        except ValueError as exc:
            problems.append(Problem("every", str(exc)))
    window = doc.get("window")
    if window is not None:
        out["window"] = window
        if not isinstance(window, dict) or set(window) != {"start", "end"}:
            problems.append(Problem("window", 'must be { start = "HH:MM", end = "HH:MM" }'))
        else:
            for key in ("start", "end"):
                if not isinstance(window[key], str) or not _HHMM.match(window[key]):
                    problems.append(Problem(f"window.{key}", 'must be a time "HH:MM"'))
            if window["start"] == window["end"]:
                problems.append(Problem("window.end", "must differ from window.start"))
    return out


def _can_fire(definition: dict[str, Any], now: float, problems: list[Problem]) -> None:
    """Refuse a valid-looking schedule that would never fire, counting from ``now`` (its
    ``every`` counts from its save, which is now)."""
    when = When.of(definition)
    if when.at is not None:
        if when.at <= now:
            problems.append(Problem("at", f"{definition['at']} is in the past; give a future time"))
        elif not when.fits(when.at):
            problems.append(Problem("at", "lies outside the window: it would never fire"))
    elif when.window is not None and when.next_after(now, now) is None:
        problems.append(Problem("window", NO_TIME_IN_WINDOW))


NO_TIME_IN_WINDOW = "no time of this schedule falls in its window in the next 366 days"


def _zone(name: Any, problems: list[Problem]) -> ZoneInfo | None:
    if not isinstance(name, str) or not name:
        problems.append(Problem("timezone", 'must be an IANA time zone name like "Europe/Berlin"'))
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(
            Problem("timezone", f"unknown time zone {name!r} (an IANA name like Europe/Berlin)")
        )
        return None


def _instant(text: Any) -> float | None:
    """An ISO 8601 time with an offset, as UNIX seconds (None: not one)."""
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


def _window(window: dict[str, str]) -> tuple[int, int]:
    sh, sm = map(int, window["start"].split(":"))
    eh, em = map(int, window["end"].split(":"))
    return sh * 60 + sm, eh * 60 + em


def in_window(t: float, window: tuple[int, int] | None, zone: ZoneInfo) -> bool:
    """Whether ``t`` falls inside ``window`` (minutes of the day, start inclusive, end
    exclusive; an end before the start spans midnight) in ``zone``."""
    if window is None:
        return True
    local = datetime.fromtimestamp(t, zone)
    minute = local.hour * 60 + local.minute
    start, end = window
    return start <= minute < end if start < end else minute >= start or minute < end


# -- times --------------------------------------------------------------------------------


class SearchTally:
    """Candidate times examined by every search of this process: what schedules cost the NS.
    A candidate is one step of a cron expression or of an interval and one look at its local
    time; tests bound the count instead of timing the event loop."""

    def __init__(self) -> None:
        self.steps = 0


TALLY = SearchTally()


def _offset(t: float, zone: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(t, zone).utcoffset()


def _wall(day: date, minute: int, zone: ZoneInfo) -> tuple[float, float]:
    """The instants a wall-clock time of ``day`` may name (two in a repeated hour, or around
    a skipped one), earliest first."""
    naive = datetime.combine(day, dtime(minute // 60, minute % 60))
    a, b = (naive.replace(tzinfo=zone, fold=f).timestamp() for f in (0, 1))
    return (a, b) if a <= b else (b, a)


def _change(a: float, b: float, zone: ZoneInfo) -> float:
    """The first whole second in ``(a, b]`` whose UTC offset differs from ``a``'s (the caller
    knows ``b``'s does): a bisection, about 17 looks for a day."""
    lo, hi, before = math.floor(a), math.ceil(b), _offset(a, zone)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _offset(mid, zone) == before else (lo, mid)
    return float(hi)


class _Walk:
    """The raw candidate times of a cron or ``every`` schedule in one direction (the window not
    applied), which can jump: ``forward`` gives times after a point, ascending, and jumps to
    the first at or after a target; backward gives times at or before a point, descending, and
    jumps to the last before a target. ``every`` jumps by arithmetic; cron starts ``cronsim``
    again at the target (its own stepping is by calendar fields, not minutes)."""

    def __init__(self, when: When, anchor: float, forward: bool):
        self.when, self.anchor, self.forward = when, anchor, forward
        self._cron: CronSim | None = None
        self._k = 0

    def start(self, t: float) -> float | None:
        """The first candidate after ``t`` (forward) or at or before it (backward)."""
        every = self.when.every_s
        if every is not None:
            k = math.floor((t - self.anchor) / every)
            return self._at(k + 1 if self.forward else k)
        if self.forward:
            return self._cron_from(datetime.fromtimestamp(t, self.when.zone))
        # cronsim's reverse steps strictly before its start: start one second later.
        return self._cron_from(datetime.fromtimestamp(math.floor(t) + 1, self.when.zone))

    def jump(self, target: float) -> float | None:
        """The first candidate at or after ``target`` (forward), the last before it (back)."""
        every = self.when.every_s
        if every is not None:
            k = math.ceil((target - self.anchor) / every)
            return self._at(max(k, self._k + 1) if self.forward else min(k - 1, self._k - 1))
        # Cron times are whole seconds: starting at ceil(target) - 1 (forward) or ceil(target)
        # (backward) gives times >= target, or < target.
        edge = math.ceil(target) - (1 if self.forward else 0)
        return self._cron_from(datetime.fromtimestamp(edge, self.when.zone))

    def step(self) -> float | None:
        """The next candidate in this walk's direction."""
        if self.when.every_s is not None:
            return self._at(self._k + (1 if self.forward else -1))
        if self._cron is None:
            return None
        dt = next(self._cron, None)  # None: cronsim found nothing in 50 years
        return None if dt is None else dt.timestamp()

    def _at(self, k: int) -> float | None:
        assert self.when.every_s is not None
        self._k = max(k, 1) if self.forward else k
        return self.anchor + self._k * self.when.every_s if self._k >= 1 else None

    def _cron_from(self, start: datetime) -> float | None:
        assert self.when.cron is not None
        self._cron = CronSim(self.when.cron, start, reverse=not self.forward)
        return self.step()


@dataclass(frozen=True)
class When:
    """When a (valid) schedule fires: its times, in UNIX seconds. ``anchor`` is the schedule's
    start (saved or enabled), from which ``every`` counts.

    A window is applied by jumping, never by trying every candidate: a time outside it sends
    the search to the window's next opening (or, backward, its previous closing), so a search
    costs about one candidate per day it spans, and it spans at most :data:`HORIZON_S`."""

    zone: ZoneInfo
    cron: str | None = None
    at: float | None = None
    every_s: int | None = None
    window: tuple[int, int] | None = None

    @classmethod
    def of(cls, definition: dict[str, Any]) -> When:
        every = definition.get("every")
        window = definition.get("window")
        return cls(
            zone=ZoneInfo(definition.get("timezone", "UTC")),
            cron=definition.get("cron"),
            at=_instant(definition.get("at")),
            every_s=parse_every(every) if every else None,
            window=_window(window) if window else None,
        )

    def fits(self, t: float) -> bool:
        """Whether ``t`` is inside the window (always, without one)."""
        return in_window(t, self.window, self.zone)

    def next_after(self, t: float, anchor: float) -> float | None:
        """The first firing time after ``t`` (None: there is none, or none inside the window
        within :data:`HORIZON_S`)."""
        if self.at is not None or (self.cron is None and self.every_s is None):
            return self.at if self.at is not None and self.at > t and self.fits(self.at) else None
        walk, limit, low = _Walk(self, anchor, True), t + HORIZON_S, t
        due = walk.start(t)
        while due is not None:
            TALLY.steps += 1
            if due > low and self.fits(due):
                return float(due)
            if due > limit:
                return None
            target = self._opening_after(due) if due > low else due
            if target > due:
                # Around a clock change cronsim may give a time before its start: not wanted.
                low = max(low, target - 1e-6)
                due = walk.jump(target)
            else:
                due = walk.step()
        return None

    def latest_in(self, after: float, t: float, anchor: float) -> float | None:
        """The latest firing time in ``(after, t]``, looking back at most :data:`HORIZON_S`
        (None: there is none)."""
        if self.at is not None or (self.cron is None and self.every_s is None):
            inside = self.at is not None and after < self.at <= t and self.fits(self.at)
            return self.at if inside else None
        walk, floor = _Walk(self, anchor, False), max(after, t - HORIZON_S)
        due = walk.start(t)
        while due is not None and due > floor:
            TALLY.steps += 1
            if due <= t and self.fits(due):
                return float(due)
            target = self._closing_before(due)
            due = walk.jump(target) if target < due else walk.step()
        return None

    def upcoming(self, t: float, anchor: float, count: int) -> list[float]:
        """The next ``count`` firing times after ``t``."""
        times: list[float] = []
        while len(times) < count and (due := self.next_after(t, anchor)) is not None:
            times.append(due)
            t = due
        return times

    def _opening_after(self, t: float) -> float:
        """No time after ``t`` (outside the window) is inside it before this: the window's next
        opening, earliest reading of its wall time; if the clocks go back first, the moment
        they do (the wall time may then come back into the window the same day)."""
        assert self.window is not None
        start, end = self.window
        local = datetime.fromtimestamp(t, self.zone)
        day = local.date()
        if start < end and local.hour * 60 + local.minute >= end:
            day += timedelta(days=1)
        opening = _wall(day, start, self.zone)[0]
        if opening > t and _back(t, opening, self.zone):
            opening = min(opening, _change(t, opening, self.zone))
        return opening

    def _closing_before(self, t: float) -> float:
        """No time before ``t`` (outside the window) is inside it after this: the window's
        previous closing, latest reading of its wall time; if the clocks went back since, the
        moment they did."""
        assert self.window is not None
        start, end = self.window
        local = datetime.fromtimestamp(t, self.zone)
        day = local.date()
        if start < end and local.hour * 60 + local.minute < start:
            day -= timedelta(days=1)
        closing = _wall(day, end, self.zone)[1]
        if closing < t and _back(closing, t, self.zone):
            closing = max(closing, _change(closing, t, self.zone))
        return closing


def _back(a: float, b: float, zone: ZoneInfo) -> bool:
    """Whether the clocks are set back between ``a`` and ``b`` (its UTC offset shrinks)."""
    before, after = _offset(a, zone), _offset(b, zone)
    return before is not None and after is not None and after < before


class _Memo:
    """The last searches per schedule (its definition and anchor): a found next time ``n``
    from ``t`` answers any look from ``[t, n)`` (no time lies between), a search that found
    none answers for :data:`NONE_KEPT_S`. The scheduler's pass and ``schedules``/``schedule
    show`` look up the same entries, so a listing recomputes nothing the scheduler knows, and
    each schedule is searched again only when it fires, changes or its time passes."""

    SIZE = 4096
    KEPT = 2
    """Searches kept per schedule: the scheduler's (from its last firing) and a listing's
    (from now) differ while a time is due."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[When, list[tuple[float, float | None]]]] = (
            OrderedDict()
        )

    def next_after(self, definition: dict[str, Any], t: float, anchor: float) -> float | None:
        key = f"{anchor!r} {json.dumps(definition, sort_keys=True)}"
        entry = self._entries.get(key)
        if entry is None:
            entry = (When.of(definition), [])
            self._entries[key] = entry
            if len(self._entries) > self.SIZE:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        when, searches = entry
        for start, found in searches:
            if start <= t and (t < found if found is not None else t <= start + NONE_KEPT_S):
                return found
        found = when.next_after(t, anchor)
        searches.insert(0, (t, found))
        del searches[self.KEPT :]
        return found


NONE_KEPT_S = 3600.0
"""How long a search that found no time (within :data:`HORIZON_S`) answers for."""
_MEMO = _Memo()


def next_time(definition: dict[str, Any], t: float, anchor: float) -> float | None:
    """A schedule's first firing time after ``t``, through the shared memo of searches."""
    return _MEMO.next_after(definition, t, anchor)


def upcoming(row: dict[str, Any], now: float, count: int) -> list[float]:
    """The next ``count`` firing times after ``now`` of the schedule ``row`` (as the store
    gives it), for ``schedules`` and ``schedule show``. The first is looked up from where the
    scheduler's pass looks (:func:`search_base`), so it is the search the scheduler made; only
    a time due and not yet fired needs a search from ``now``."""
    definition, anchor = row["definition"], float(row["since"])
    first = next_time(definition, search_base(row, now), anchor)
    if first is not None and first <= now:
        first = next_time(definition, now, anchor)
    if first is None or count < 1:
        return []
    return [first, *When.of(definition).upcoming(first, anchor, count - 1)]


def search_base(row: dict[str, Any], now: float, skipped: float = 0.0) -> float:
    """Where the search for a schedule's next time starts: its last firing, its save or
    enable, or a time it let go (``skipped``), whichever is latest; but times more than
    :data:`HORIZON_S` before ``now`` (an NS down for over a year) are not weighed."""
    return max(base_of(row), skipped, now - HORIZON_S)


def base_of(row: dict[str, Any]) -> float:
    """The time a schedule's next firing counts from: its last recorded firing, or when it was
    saved or enabled, whichever is later."""
    return max(float(row["last_due"] or 0.0), float(row["since"]))


def iso(t: float | None) -> str | None:
    """UNIX seconds as ISO 8601 UTC. Total: None, and a time no date can show (not finite,
    past the year 9999: a row saved before the limits), give None, so one bad row never
    breaks a listing."""
    if t is None:
        return None
    try:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return None


# -- the scheduler ------------------------------------------------------------------------


class Clock(Protocol):
    """The scheduler's clock: the real one in the NS, one a test drives in tests."""

    def now(self) -> float: ...
    async def sleep_until(self, when: float) -> None: ...


class WallClock:
    """The real clock. Sleeps at most ``IDLE_WAKE_S`` at once, so a clock set forward or back
    is noticed within a minute."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(min(max(0.0, when - time.time()), IDLE_WAKE_S))


class Scheduler:
    """Fires the enabled schedules of ``ns`` on ``clock`` (see the module docstring)."""

    def __init__(self, ns: NS, clock: Clock):
        self.ns = ns
        self.clock = clock
        self._wake = asyncio.Event()
        self._skipped: dict[str, float] = {}
        """Per schedule, the latest missed time let go (``skip``), so it is not weighed again."""
        self.passes = 0
        """Completed passes over the schedules (tests wait on it instead of sleeping)."""
        self.idle = False
        """True while it sleeps between passes."""

    def wake(self) -> None:
        """A schedule changed: look again now."""
        self._wake.set()

    async def run(self) -> None:
        """Pass over the schedules, then sleep until the earliest next time or a change; for
        ever (cancelled when the NS stops)."""
        while True:
            self._wake.clear()
            earliest: float | None = None
            try:
                rows = await self.ns.db.schedules()
            except Exception:
                self.ns.log.exception("scheduler_pass_failed")
                rows = []
            for row in rows:
                # Let the loop run between schedules: a pass never holds it for more than one
                # schedule's search (a few ms; ~20 for a row an older NS saved that has no
                # time in its window, once, until it is kept).
                await asyncio.sleep(0)
                try:
                    due = await self._pass(row) if row["enabled"] else None
                except Exception:
                    # One schedule that breaks must not stop the others.
                    self.ns.log.exception("schedule_pass_failed", schedule=row["name"])
                    continue
                if due is not None and (earliest is None or due < earliest):
                    earliest = due
            self.passes += 1
            await self._sleep(earliest if earliest is not None else self.clock.now() + IDLE_WAKE_S)

    async def _sleep(self, until: float) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep_until(until))
        waker = asyncio.ensure_future(self._wake.wait())
        self.idle = True
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.idle = False
            for t in (sleeper, waker):
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t

    async def _pass(self, row: dict[str, Any]) -> float | None:
        """Fire ``row`` if a time of it is due; return its next time after that."""
        name, definition = row["name"], row["definition"]
        try:
            when = When.of(definition)
        except (ValueError, KeyError, ZoneInfoNotFoundError):
            self.ns.log.error("schedule_unreadable", schedule=name)
            return None
        now = self.clock.now()
        base = search_base(row, now, self._skipped.get(name, 0.0))
        anchor = float(row["since"])
        first = next_time(definition, base, anchor)
        if first is None or first > now:
            return first
        latest = when.latest_in(base, now, anchor)
        if latest is None:  # cannot be (first is one), unless the clock moved meanwhile
            latest = first
        if now - latest <= MISSED_GRACE_S or definition.get("missed") == "run-once":
            if latest > first:
                self.ns.log.warning(
                    "schedule_missed", schedule=name, since=iso(first), running_once=iso(latest)
                )
            await self.fire(row, latest)
        else:
            self._skipped[name] = latest
            self.ns.log.warning("schedule_missed", schedule=name, skipped_through=iso(latest))
        return next_time(definition, latest, anchor)

    async def fire(self, row: dict[str, Any], due: float) -> int | None:
        """Start the run of the schedule ``row`` (as the pass read it) for its time ``due``,
        once: the firing is recorded first, and only while the schedule is still saved,
        enabled and unchanged since ``row`` was read (a time already recorded, or a schedule
        disabled, deleted or replaced meanwhile, is not fired). Returns the run's id (None:
        none)."""
        name, definition = row["name"], row["definition"]
        if not await self.ns.db.claim_firing(row, due):
            return None
        targets = definition.get("targets", {})
        args = {
            "task": definition["run"],
            "computers": targets.get("computers", []),
            "groups": targets.get("groups", []),
            "filters": targets.get("filters", []),
            "all": bool(targets.get("all", False)),
        }
        who, detail = f"schedule:{name}", f"task={definition['run']!r}, due={iso(due)}"
        try:
            started = await start_from_args(self.ns, args, schedule=name)
        except Exception as exc:
            code = exc.code if isinstance(exc, ApiError) else "internal_error"
            if not isinstance(exc, ApiError):
                self.ns.log.exception("schedule_fire_failed", schedule=name, due=iso(due))
            with contextlib.suppress(Exception):
                await self.ns.db.firing_done(name, due, None, f"{code}: {exc}")
                await self.ns.db.audit(who, "run.start", detail, f"error: {code}")
                await self.ns.raise_message(
                    "warning",
                    f"schedule {name!r} could not start {definition['run']!r} for {iso(due)}:"
                    f" {exc}",
                    who,
                )
            return None
        run_id = int(started["run_id"])
        await self.ns.db.firing_done(name, due, run_id, "ok")
        await self.ns.db.audit(who, "run.start", f"{detail}, run_id={run_id}", "ok")
        self.ns.log.info("schedule_fired", schedule=name, due=iso(due), run_id=run_id)
        return run_id
