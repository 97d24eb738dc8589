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
(schedule, time) *before* its run starts, so no time fires twice, also across a restart. Its
clock is injected (:class:`Clock`): tests drive it without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from protocol.errors import Problem, ValidationError
from server.adminops.base import ApiError
from server.adminops.runs import start_from_args
from server.interface import NS

MISSED_GRACE_S = 60.0
"""A time the scheduler reaches more than this late counts as missed (the NS was down or
stalled): ``missed = "skip"`` lets it go, ``"run-once"`` runs the latest such time once."""
IDLE_WAKE_S = 60.0
"""The wall clock is looked at again at least this often (it may have been set meanwhile)."""
SEARCH_LIMIT = 100_000
"""Candidate times tried when a window rules most out; past this a schedule has no next time."""
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


def validate_schedule(doc: Any) -> dict[str, Any]:
    """Check a schedule document; return it normalized (defaults filled in). Every problem is
    reported at its field path (``window.start``, ``targets.groups``); whether ``run`` and the
    targets exist is checked by the caller, against the saved catalog."""
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
    if problems:
        label = f"schedule {name!r}" if isinstance(name, str) else "schedule document"
        raise ValidationError(label, problems)
    return {k: v for k, v in out.items() if v is not None}


def _targets(targets: Any, problems: list[Problem]) -> dict[str, Any]:
    if not isinstance(targets, dict):
        problems.append(Problem("targets", "must be a table: computers, groups, filters, all"))
        return {}
    for key, value in targets.items():
        if key == "all":
            if not isinstance(value, bool):
                problems.append(Problem("targets.all", "must be true or false"))
        elif key in ("computers", "groups", "filters"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(Problem(f"targets.{key}", "must be a list of names"))
        else:
            problems.append(
                Problem(f"targets.{key}", "unknown (known: all, computers, filters, groups)")
            )
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
            if parse_every(doc["every"]) < MIN_EVERY_S:
                problems.append(Problem("every", "must be at least 1m"))
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
    if not problems and "at" in doc and window is not None and zone is not None:
        at = _instant(doc["at"])
        if at is not None and not in_window(at, _window(window), zone):
            problems.append(Problem("at", "lies outside the window: it would never fire"))
    return out


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


@dataclass(frozen=True)
class When:
    """When a (valid) schedule fires: its times, in UNIX seconds. ``anchor`` is the schedule's
    start (saved or enabled), from which ``every`` counts."""

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

    def _raw_after(self, t: float, anchor: float) -> Any:
        """Candidate times after ``t``, ascending (the window not applied)."""
        if self.cron is not None:
            for dt in CronSim(self.cron, datetime.fromtimestamp(t, self.zone)):
                yield dt.timestamp()
        elif self.every_s is not None:
            k = max(1, math.floor((t - anchor) / self.every_s) + 1)
            while True:
                yield anchor + k * self.every_s
                k += 1
        elif self.at is not None and self.at > t:
            yield self.at

    def _raw_before(self, t: float, anchor: float) -> Any:
        """Candidate times at or before ``t``, descending (the window not applied)."""
        if self.cron is not None:
            # cronsim's reverse steps strictly before its start: start one second later.
            start = datetime.fromtimestamp(math.floor(t) + 1, self.zone)
            for dt in CronSim(self.cron, start, reverse=True):
                yield dt.timestamp()
        elif self.every_s is not None:
            k = math.floor((t - anchor) / self.every_s)
            while k >= 1:
                yield anchor + k * self.every_s
                k -= 1
        elif self.at is not None and self.at <= t:
            yield self.at

    def next_after(self, t: float, anchor: float) -> float | None:
        """The first firing time after ``t`` (None: there is none)."""
        for n, due in enumerate(self._raw_after(t, anchor)):
            if n >= SEARCH_LIMIT:
                return None
            if due > t and in_window(due, self.window, self.zone):
                return float(due)
        return None

    def latest_in(self, after: float, t: float, anchor: float) -> float | None:
        """The latest firing time in ``(after, t]`` (None: there is none)."""
        for n, due in enumerate(self._raw_before(t, anchor)):
            if n >= SEARCH_LIMIT or due <= after:
                return None
            if due <= t and in_window(due, self.window, self.zone):
                return float(due)
        return None

    def upcoming(self, t: float, anchor: float, count: int) -> list[float]:
        """The next ``count`` firing times after ``t``."""
        times: list[float] = []
        while len(times) < count and (due := self.next_after(t, anchor)) is not None:
            times.append(due)
            t = due
        return times


def base_of(row: dict[str, Any]) -> float:
    """The time a schedule's next firing counts from: its last recorded firing, or when it was
    saved or enabled, whichever is later."""
    return max(float(row["last_due"] or 0.0), float(row["since"]))


def iso(t: float | None) -> str | None:
    """UNIX seconds as ISO 8601 UTC (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
        base = max(base_of(row), self._skipped.get(name, 0.0))
        anchor = float(row["since"])
        first = when.next_after(base, anchor)
        if first is None or first > now:
            return first
        latest = when.latest_in(base, now, anchor)
        if latest is None:  # only if the window's search limit was reached
            return when.next_after(now, anchor)
        if now - latest <= MISSED_GRACE_S or definition.get("missed") == "run-once":
            if latest > first:
                self.ns.log.warning(
                    "schedule_missed", schedule=name, since=iso(first), running_once=iso(latest)
                )
            await self.fire(name, definition, latest)
        else:
            self._skipped[name] = latest
            self.ns.log.warning("schedule_missed", schedule=name, skipped_through=iso(latest))
        return when.next_after(latest, anchor)

    async def fire(self, name: str, definition: dict[str, Any], due: float) -> int | None:
        """Start the run of ``name`` for its time ``due``, once: the firing is recorded first
        (a time already recorded is not fired again). Returns the run's id (None: none)."""
        if not await self.ns.db.claim_firing(name, due):
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
