"""Schedules on the NS: firing times (cron with a time zone across DST, at, every, a window),
missed times after downtime, no double firing across a real restart, and a fired run that is an
ordinary run on a real agent with the schedule's name. The scheduler's clock is injected: tests
move it and wait for the scheduler's pass, never for real time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from admin.client import AdminClient
from agent.agent import Agent
from protocol.errors import RemoteError, ValidationError
from server.core import NotificationServer
from server.schedules import When, validate_schedule
from tests.helpers import INSECURE, until, wait_run


def ts(text: str) -> float:
    """An ISO 8601 time (with offset) as UNIX seconds."""
    return datetime.fromisoformat(text).timestamp()


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M")


class DrivenClock:
    """A clock the test sets; ``sleep_until`` returns once the test has moved it far enough."""

    def __init__(self, now: float):
        self.t = now
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self.t

    async def sleep_until(self, when: float) -> None:
        while self.t < when:
            moved = self._moved
            await moved.wait()

    def set(self, t: float) -> None:
        self.t = t
        self._moved.set()
        self._moved = asyncio.Event()


SAVED = ts("2026-12-01T00:00:00+00:00")
"""When the documents of the time tests are saved (before every time they name)."""


def schedule(**fields: Any) -> dict[str, Any]:
    return validate_schedule({"name": "s", "run": "t", **fields}, now=SAVED)


# -- times ----------------------------------------------------------------------------------


def test_cron_in_berlin_keeps_local_time_across_both_dst_changes():
    """``0 3 * * *`` in Europe/Berlin fires at 03:00 local: 02:00 UTC in winter, 01:00 UTC in
    summer, and exactly once on each change day."""
    when = When.of(schedule(cron="0 3 * * *", timezone="Europe/Berlin"))
    start = ts("2027-03-26T12:00:00+00:00")
    assert [utc(t) for t in when.upcoming(start, start, 3)] == [
        "2027-03-27T02:00",
        "2027-03-28T01:00",
        "2027-03-29T01:00",
    ]
    autumn = ts("2027-10-29T12:00:00+00:00")
    assert [utc(t) for t in when.upcoming(autumn, autumn, 3)] == [
        "2027-10-30T01:00",
        "2027-10-31T02:00",
        "2027-11-01T02:00",
    ]


def test_cron_at_a_time_dst_skips_or_repeats_fires_once_that_day():
    """02:30 does not exist in Berlin on 2027-03-28 (fires at 03:00 CEST instead) and happens
    twice on 2027-10-31 (fires once, at the first)."""
    when = When.of(schedule(cron="30 2 * * *", timezone="Europe/Berlin"))
    spring = ts("2027-03-27T12:00:00+00:00")
    assert [utc(t) for t in when.upcoming(spring, spring, 2)] == [
        "2027-03-28T01:00",
        "2027-03-29T00:30",
    ]
    autumn = ts("2027-10-30T12:00:00+00:00")
    assert [utc(t) for t in when.upcoming(autumn, autumn, 2)] == [
        "2027-10-31T00:30",
        "2027-11-01T01:30",
    ]


def test_every_counts_from_its_start_and_at_fires_once():
    start = ts("2027-01-01T00:00:00+00:00")
    every = When.of(schedule(every="1h30m"))
    assert [utc(t) for t in every.upcoming(start, start, 2)] == [
        "2027-01-01T01:30",
        "2027-01-01T03:00",
    ]
    assert every.latest_in(start, start + 4 * 3600, start) == start + 3 * 3600
    at = When.of(schedule(at="2027-01-01T03:00:00+01:00"))
    assert at.next_after(start, start) == ts("2027-01-01T02:00:00+00:00")
    assert at.next_after(ts("2027-01-01T02:00:00+00:00"), start) is None


def test_a_window_keeps_only_times_inside_it_across_midnight():
    """A window 22:00-05:00 Berlin time: an every-2h schedule fires only at times inside it."""
    start = ts("2027-01-01T12:00:00+01:00")
    when = When.of(
        schedule(every="2h", timezone="Europe/Berlin", window={"start": "22:00", "end": "05:00"})
    )
    local = [
        datetime.fromtimestamp(t, when.zone).strftime("%H:%M")
        for t in when.upcoming(start, start, 5)
    ]
    assert local == ["22:00", "00:00", "02:00", "04:00", "22:00"]


def test_bad_documents_name_each_field():
    with pytest.raises(ValidationError) as err:
        validate_schedule(
            {
                "name": "x",
                "run": "t",
                "cron": "61 3 * * *",
                "timezone": "Europe/Nowhere",
                "window": {"start": "22:00", "end": "5"},
                "missed": "twice",
                "targets": {"groups": "web"},
            },
            now=SAVED,
        )
    paths = {p.path for p in err.value.problems}
    assert paths == {"cron", "timezone", "window.end", "missed", "targets.groups"}
    with pytest.raises(ValidationError) as err:
        validate_schedule(
            {"name": "x", "run": "t", "every": "15m", "at": "2027-01-01T03:00"}, now=SAVED
        )
    assert {p.path for p in err.value.problems} == {"(document)", "at"}


# -- the scheduler in a running NS ----------------------------------------------------------


async def start_ns(data: Path, clock: DrivenClock) -> NotificationServer:
    ns = NotificationServer(data_dir=str(data), insecure=True, clock=clock)
    await ns.start()
    return ns


async def settle(ns: NotificationServer, clock: DrivenClock, t: float) -> None:
    """Move the clock to ``t`` and wait for the scheduler's pass at that time."""
    assert ns.scheduler is not None
    sched = ns.scheduler
    await until(lambda: _true(sched.idle), "the scheduler asleep")
    done = sched.passes
    clock.set(t)
    ns.schedules_changed()
    await until(lambda: _true(sched.passes > done), "a scheduler pass")


async def _true(value: bool) -> bool:
    return value


SERVER_TASK = {"name": "t", "type": "write-server-log", "params": {"message": "tick %RUNID%"}}


async def test_a_due_schedule_fires_once_per_time(tmp_path):
    start = ts("2027-01-01T00:00:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    try:
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", document=SERVER_TASK)
            await c.call("schedule.add", document={"name": "s", "run": "t", "every": "10m"})
            await settle(ns, clock, start + 599)
            assert await ns.db.firings("s") == []
            await settle(ns, clock, start + 600)
            await settle(ns, clock, start + 610)  # a second look at the same time
            (firing,) = await ns.db.firings("s")
            assert firing["due_at"] == start + 600 and firing["outcome"] == "ok"
            run = await wait_run(c, firing["run_id"])
            assert run["status"] == "succeeded" and run["schedule"] == "s"
            (listed,) = await c.call("schedules.list")
            assert listed["last_run_id"] == firing["run_id"]
            assert listed["next_at"] == "2027-01-01T00:20:00Z"
            audit = await c.call("audit.list")
            assert any(a["who"] == "schedule:s" and a["action"] == "run.start" for a in audit)
    finally:
        await ns.stop()


@pytest.mark.parametrize("missed, expected", [("skip", []), ("run-once", ["01:50"])])
async def test_times_missed_while_down(tmp_path, missed, expected):
    """The NS is down for an hour over six times of an every-10m schedule: ``skip`` runs none
    of them, ``run-once`` runs one, for the latest; the next time fires as usual either way."""
    start = ts("2027-01-01T00:00:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("task.add", document=SERVER_TASK)
        await c.call(
            "schedule.add", document={"name": "s", "run": "t", "every": "10m", "missed": missed}
        )
        await settle(ns, clock, start + 3000)  # 00:50
    await ns.stop()
    clock.set(start + 3000 + 3600 + 300)  # down until 01:55
    ns = await start_ns(tmp_path / "ns", clock)
    try:
        await settle(ns, clock, clock.now())
        fired = [utc(f["due_at"])[-5:] for f in await ns.db.firings("s")]
        assert fired == ["00:50", *expected]
        await settle(ns, clock, start + 2 * 3600)  # 02:00
        fired = [utc(f["due_at"])[-5:] for f in await ns.db.firings("s")]
        assert fired == ["00:50", *expected, "02:00"]
    finally:
        await ns.stop()


async def test_no_time_fires_twice_across_a_restart(tmp_path):
    """A time fired before a restart is recorded: the restarted NS, at the same clock time,
    and the scheduler asked to fire it again directly, start no second run."""
    start = ts("2027-01-01T00:00:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("task.add", document=SERVER_TASK)
        await c.call(
            "schedule.add",
            document={"name": "s", "run": "t", "every": "10m", "missed": "run-once"},
        )
        await settle(ns, clock, start + 600)
        (before,) = await ns.db.firings("s")
        await wait_run(c, before["run_id"])
    await ns.stop()
    ns = await start_ns(tmp_path / "ns", clock)
    try:
        await settle(ns, clock, start + 601)
        assert ns.scheduler is not None
        row = await ns.db.schedule("s")
        assert row is not None
        assert await ns.scheduler.fire(row, start + 600) is None
        assert await ns.db.firings("s") == [before]
        runs = await ns.db.runs()
        assert [r["id"] for r in runs if r["schedule"] == "s"] == [before["run_id"]]
    finally:
        await ns.stop()


async def test_a_disabled_schedule_does_not_fire_and_enabling_counts_from_then(tmp_path):
    start = ts("2027-01-01T00:00:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    try:
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", document=SERVER_TASK)
            doc = {"name": "s", "run": "t", "every": "10m", "missed": "run-once"}
            await c.call("schedule.add", document=doc)
            await c.call("schedule.disable", name="s")
            await settle(ns, clock, start + 1800)
            assert await ns.db.firings("s") == []
            await c.call("schedule.enable", name="s")
            await settle(ns, clock, start + 1800 + 599)
            assert await ns.db.firings("s") == []  # the times while disabled were not missed
            await settle(ns, clock, start + 2400)
            assert [f["due_at"] for f in await ns.db.firings("s")] == [start + 2400]
            shown = await c.call("schedule.show", name="s")
            assert shown["next"][:2] == ["2027-01-01T00:50:00Z", "2027-01-01T01:00:00Z"]
            await c.call("schedule.delete", name="s")
            with pytest.raises(RemoteError) as err:
                await c.call("schedule.show", name="s")
            assert err.value.code == "unknown_schedule"
    finally:
        await ns.stop()


async def test_a_firing_that_cannot_start_is_recorded_and_told(tmp_path):
    """The task was deleted after the schedule was saved: the firing is recorded with why, a
    message is raised, and the audit trail says so; no run."""
    start = ts("2027-01-01T00:00:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    try:
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", document=SERVER_TASK)
            await c.call("schedule.add", document={"name": "s", "run": "t", "every": "10m"})
            await c.call("task.delete", name="t")
            await settle(ns, clock, start + 600)
            (firing,) = await ns.db.firings("s")
            assert firing["run_id"] is None and firing["outcome"].startswith("unknown_task")
            messages = await c.call("messages.list")
            assert "schedule 's' could not start 't'" in messages[0]["text"]
    finally:
        await ns.stop()


async def test_a_fired_run_runs_the_task_on_a_real_agent(tmp_path):
    """A cron schedule on a group: its run is an ordinary run, listed with the schedule's name,
    and the agent runs the script."""
    start = ts("2027-01-01T02:30:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    agent = None
    running = None
    try:
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            token = (await c.call("tokens.create", ttl_s=600, uses=1))["token"]
            agent = Agent(
                server_url=ns.url,
                name="pc-1",
                trust=INSECURE,
                enrol_token=token,
                data_dir=str(tmp_path / "pc-1"),
                backoff_initial_s=0.1,
                backoff_max_s=0.5,
            )
            running = asyncio.create_task(agent.run())

            async def online() -> bool:
                return any(r["online"] for r in await c.call("computers.list"))

            await until(online, "pc-1 online")
            await c.call("groups.add", name="web")
            await c.call("groups.add_member", group="web", computers=["pc-1"])
            task = {
                "name": "hello",
                "type": "run-script",
                "params": {"interpreter": "sh", "script": "echo hello from %COMPUTERNAME%"},
            }
            await c.call("task.add", document=task)
            await c.call(
                "schedule.add",
                text='name = "nightly"\nrun = "hello"\ncron = "0 4 * * *"\n'
                'timezone = "Europe/Berlin"\n[targets]\ngroups = ["web"]\n',
                filename="nightly.toml",
            )
            await settle(ns, clock, ts("2027-01-01T03:00:00+00:00"))
            (firing,) = await ns.db.firings("nightly")
            run = await wait_run(c, firing["run_id"])
            assert run["status"] == "succeeded", run
            assert run["instances"][0]["output"].strip() == "hello from pc-1"
            (listed,) = await c.call("runs.list")
            assert listed["schedule"] == "nightly" and listed["task_name"] == "hello"
    finally:
        if running is not None:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        await ns.stop()


# -- review of issue 20: schedules that never fire, their cost, stale rows -----------------

NEVER = {"cron": "0 3 * * *", "window": {"start": "22:00", "end": "23:00"}}
"""A cron whose only time (03:00) is never inside its window: before the review's fix it was
saved, and each look at it walked 100,000 cron steps (3.7 s of the NS's event loop)."""


def problems_of(doc: dict[str, Any], now: float = SAVED) -> dict[str, str]:
    with pytest.raises(ValidationError) as err:
        validate_schedule({"name": "x", "run": "t", **doc}, now=now)
    return {p.path: p.message for p in err.value.problems}


def test_a_schedule_that_could_never_fire_is_refused_at_save():
    """A window none of the schedule's times fall in within a year, an ``every`` whose grid
    (counted from the save) misses its window, an ``at`` in the past: each is refused at its
    field, instead of being saved to fire never."""
    window_problem = "no time of this schedule falls in its window in the next 366 days"
    assert problems_of(NEVER) == {"window": window_problem}
    noon = ts("2026-12-01T12:00:00+00:00")
    daily = {"every": "1d", "window": {"start": "22:00", "end": "23:00"}}
    assert problems_of(daily, now=noon) == {"window": window_problem}
    evening = ts("2026-12-01T22:30:00+00:00")
    validate_schedule({"name": "x", "run": "t", **daily}, now=evening)  # fires at 22:30
    past = "2020-01-01T00:00:00+00:00"
    assert problems_of({"at": past}) == {
        "at": "2020-01-01T00:00:00+00:00 is in the past; give a future time"
    }
    # Rare but possible times are kept: 29 February 03:00, inside its window.
    leap = schedule(cron="0 3 29 2 *", window={"start": "02:00", "end": "04:00"})
    assert utc(When.of(leap).next_after(SAVED, SAVED) or 0) == "2028-02-29T03:00"


def test_every_is_capped_and_a_time_no_date_can_show_lists_as_none():
    """``every`` is at most 366d (``99999999999d`` put the next time past the year 9999 and
    broke ``schedules`` for everyone); ``iso`` is total, for rows saved before the cap."""
    from server.schedules import iso

    assert problems_of({"every": "367d"}) == {
        "every": "at most 366d; use cron or at for rarer times"
    }
    schedule(every="366d")
    assert [iso(t) for t in (8.64e15, float("nan"), float("inf"), None)] == [None] * 4
    assert iso(ts("2027-01-01T00:00:00+00:00")) == "2027-01-01T00:00:00Z"


def test_a_search_costs_candidates_per_day_of_its_span_not_per_candidate():
    """The searches are bounded by a span of time (366 days) and jump over what is outside the
    window: a schedule with no time in its window (saved by an older NS) costs about one
    candidate per day searched, a dense cron (every minute of 03:00) no more, and an every-1m
    schedule with a one-minute window finds its time in a few."""
    from server.schedules import HORIZON_S, TALLY

    start = ts("2027-03-20T12:00:00+00:00")  # the searches cross both DST changes of 2027
    for doc in (
        NEVER,
        {"cron": "* 3 * * *", "window": NEVER["window"]},
        {"cron": "* 3 * * *", "timezone": "Europe/Berlin", "window": NEVER["window"]},
        {"every": "1d", "window": NEVER["window"]},
        {"every": "1d", "timezone": "Europe/Berlin", "window": NEVER["window"]},
    ):
        when = When.of({"timezone": "UTC", **doc})
        before = TALLY.steps
        assert when.next_after(start, start - 7 * 3600) is None, doc
        assert when.latest_in(start - 2 * HORIZON_S, start, start - 2 * HORIZON_S) is None, doc
        assert TALLY.steps - before <= 2 * 2 * 370, doc  # two searches of a year each
    tight = When.of(
        {"timezone": "Europe/Berlin", "every": "1m", "window": {"start": "22:00", "end": "22:01"}}
    )
    before = TALLY.steps
    found = tight.next_after(start, start + 0.5)
    assert found == ts("2027-03-20T22:00:00+01:00") + 0.5 and TALLY.steps - before <= 4


def test_a_window_search_keeps_the_hour_the_clocks_repeat():
    """Jumping to the window's next opening must not skip the hour that happens twice: on
    2027-10-31 Berlin's clocks go from 03:00 CEST back to 02:00 CET, so 02:30-02:45 comes
    again an hour after it ended (every 10m: 00:30 UTC first, then 01:30 UTC)."""
    when = When.of(
        schedule(every="10m", timezone="Europe/Berlin", window={"start": "02:30", "end": "02:45"})
    )
    anchor = ts("2027-10-30T00:00:00+00:00")
    assert [utc(t) for t in when.upcoming(ts("2027-10-31T00:00:00+00:00"), anchor, 4)] == [
        "2027-10-31T00:30",
        "2027-10-31T00:40",
        "2027-10-31T01:30",
        "2027-10-31T01:40",
    ]
    # and backward, from 02:10 CET: the latest time in the window is 02:40 CEST
    latest = when.latest_in(anchor, ts("2027-10-31T01:10:00+00:00"), anchor)
    assert utc(latest or 0) == "2027-10-31T00:40"


async def test_a_pass_and_listings_over_50_schedules_examine_few_candidates(tmp_path):
    """50 schedules of every kind in a running NS, among them rows an older NS saved (a window
    no time falls in, a huge every): the scheduler's passes and ``schedules``/``schedule
    show`` stay cheap (candidates examined, counted; a pass used to walk 100,000 per such
    schedule), and the list shows every row. The scheduler's searches are kept, so listings
    recompute nothing."""
    from server.schedules import TALLY

    start = ts("2027-01-01T00:00:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    try:
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", document=SERVER_TASK)
            kinds = [
                {"cron": "*/5 * * * *"},
                {"cron": "0 3 * * *", "timezone": "Europe/Berlin"},
                {"cron": "* 3 * * *", "window": {"start": "03:10", "end": "03:20"}},
                {"every": "15m", "window": {"start": "22:00", "end": "05:00"}},
                {"every": "2h"},
                {"at": "2027-06-01T03:00:00+00:00"},
                {"every": "1m", "window": {"start": "12:00", "end": "12:01"}},
            ]
            for i in range(47):
                doc = {"name": f"s{i:02}", "run": "t", **kinds[i % len(kinds)]}
                await c.call("schedule.add", document=doc)
            for name, doc in (("old-never", NEVER), ("old-huge", {"every": "99999999999d"})):
                await ns.db.save_schedule({"name": name, "run": "t", "enabled": True, **doc}, start)
            daily = {"every": "1d", "window": NEVER["window"]}  # 00:00 each day: never in it
            await ns.db.save_schedule(
                {"name": "old-never-2", "run": "t", "enabled": True, **daily}, start
            )
            before = TALLY.steps
            await settle(ns, clock, start + 3600)
            first_pass = TALLY.steps - before
            # 3 rows that have no time: about a year's worth of days each, once; the rest a few.
            assert first_pass <= 3 * 370 + 47 * 10, first_pass
            before = TALLY.steps
            await settle(ns, clock, start + 3600 + 30)
            rows = await c.call("schedules.list")
            await c.call("schedules.list")
            shown = await c.call("schedule.show", name="old-never")
            later = TALLY.steps - before
            assert later < 50, later  # fewer than one candidate per schedule: all were known
            assert len(rows) == 50 and shown["next"] == []
            huge = next(r for r in rows if r["name"] == "old-huge")
            assert huge["next_at"] is None  # no date can show it; the list still answers
            assert next(r for r in rows if r["name"] == "s04")["next_at"] == "2027-01-01T02:00:00Z"
    finally:
        await ns.stop()


async def test_a_schedule_changed_during_a_pass_does_not_fire_from_the_stale_row(tmp_path):
    """The pass reads every row, then fires them one by one (each run start awaits): a
    schedule disabled or deleted meanwhile must not fire from the row read before, and a
    deleted one gets no firing record (nothing would ever remove it)."""
    start = ts("2027-01-01T00:00:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    try:
        assert ns.scheduler is not None
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", document=SERVER_TASK)
            for name in ("gone", "off"):
                await c.call("schedule.add", document={"name": name, "run": "t", "every": "10m"})
            stale = {row["name"]: row for row in await ns.db.schedules()}
            await c.call("schedule.disable", name="off")
            await c.call("schedule.delete", name="gone")
            await settle(ns, clock, start + 600)
            for name in ("off", "gone"):
                assert await ns.scheduler._pass(stale[name]) is not None  # what a pass does
                assert await ns.db.firings(name) == []
            assert [r for r in await ns.db.runs() if r["schedule"]] == []
    finally:
        await ns.stop()


async def test_enabling_refuses_an_every_whose_times_would_miss_its_window(tmp_path):
    """``every`` counts from the enable: saved at 22:30 with a window 22:00-23:00, ``every =
    "1d"`` fires at 22:30; enabled again at noon its times would be 12:00, never in the window:
    refused, as the same document saved at noon is."""
    start = ts("2027-01-01T22:30:00+00:00")
    clock = DrivenClock(start)
    ns = await start_ns(tmp_path / "ns", clock)
    try:
        async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
            await c.call("task.add", document=SERVER_TASK)
            doc = {"name": "daily", "run": "t", "every": "1d", "window": NEVER["window"]}
            await c.call("schedule.add", document=doc)
            await c.call("schedule.disable", name="daily")
            await settle(ns, clock, ts("2027-01-02T12:00:00+00:00"))
            with pytest.raises(RemoteError) as err:
                await c.call("schedule.enable", name="daily")
            assert err.value.code == "bad_request"
            assert "no time of this schedule falls in its window" in err.value.message
            assert not (await c.call("schedule.show", name="daily"))["enabled"]
            await settle(ns, clock, ts("2027-01-02T22:15:00+00:00"))
            assert (await c.call("schedule.enable", name="daily"))["enabled"]
    finally:
        await ns.stop()
