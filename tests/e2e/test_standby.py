"""Two NS on one PostgreSQL database, one active and one standby (``server.store.lease``), as real
processes: two ``taskfleet server --database postgresql://...`` sharing the NS's key and TLS
files, two TS and real agents, all given both addresses (``--server URL1,URL2``).

- kill -9 of the active NS in the middle of a server job, a client job and a plain task: the
  standby serves within 15 s, and every run ends with each script run once and each result
  stored once;
- SIGSTOP of the active past its lease: the standby fences it and takes over; SIGCONT: the old
  one stands down (never acts again) and waits as the standby.

Without PostgreSQL these are skipped with the reason (failed under TASKFLEET_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import asyncpg
from websockets.exceptions import WebSocketException

from admin.client import AdminClient
from protocol.errors import RemoteError
from tests.e2e.test_jobs import add, by_step, job_doc
from tests.helpers import Fleet, Proc, task_doc, until, wait_run

NAMES = ["sb-1", "sb-2", "sb-3"]
TAKEOVER_S = 15.0
"""The standby must serve within this after the active one was killed (issue 23)."""
STANDBY = '"event": "standby"'
"""The log entry of an NS that waits as the standby."""


async def pair(fleet: Fleet, database: str, *, taskservers: bool = True) -> tuple[Proc, Proc]:
    """The active NS (the fleet's own) and a standby sharing its key and TLS files, two TS
    (unless not ``taskservers``: the agents are then served by the NS's built-in task service)
    and the agents, every client given both addresses."""
    fleet.database = database
    active = await fleet.server()
    standby_data = fleet.root / "ns-b"
    standby_data.mkdir()
    shutil.copy(fleet.root / "ns" / "server.key", standby_data / "server.key")
    shutil.copytree(fleet.root / "ns" / "tls", standby_data / "tls")
    standby = Proc(
        "ns-b",
        ["server", "--data", str(standby_data), "--listen", "127.0.0.1:0", "--database", database],
        fleet.root / "ns-b.log",
    )
    fleet.procs.append(standby)
    await standby.start()
    assert standby.fingerprint == active.fingerprint
    assert STANDBY in standby.log_path.read_text(), standby.log()
    addresses = f"{active.url},{standby.url}"
    active.url = addresses  # Fleet gives TS, agents and admins the NS's url: now both
    if taskservers:
        await fleet.taskserver("ts-1")
        await fleet.taskserver("ts-2")
    for name in NAMES:
        await fleet.agent(name)
    await fleet.wait_online(NAMES)
    active.url = addresses.split(",")[0]
    fleet.ns = active
    return active, standby


def both(active: Proc, standby: Proc) -> str:
    return f"{active.url.split(',')[0]},{standby.url}"


async def serves(fleet: Fleet, url: str) -> bool:
    """Whether the NS at ``url`` accepts an admin (only the active one does)."""
    try:
        async with AdminClient(url, fleet.admin_token, fleet.trust(), busy_retry_s=0) as c:
            await c.call("computers.list")
    except (OSError, TimeoutError, RemoteError, WebSocketException):
        return False
    return True


async def lease_holder(database: str) -> str:
    conn = await asyncpg.connect(database)
    try:
        return str(await conn.fetchval("SELECT holder FROM taskfleet_lease WHERE id = 1"))
    finally:
        await conn.close()


def pid_of(proc: Proc) -> int:
    assert proc.proc is not None
    return proc.proc.pid


async def waiting_step(fleet: Fleet, tmp_path: Path, marks: Path, go: Path) -> None:
    """Tasks: ``wait`` marks its computer and waits for ``go``; ``after`` marks it again, on
    the agent; ``on-ts`` does the same on its TS (a server job needs one step not on agents)."""
    wait = f"echo x >> {marks}/%COMPUTERNAME%\nwhile [ ! -e {go} ]; do sleep 0.1; done"
    await add(fleet, tmp_path, "task", "wait", task_doc("wait", wait))
    after = f"echo y >> {marks}/%COMPUTERNAME%"
    await add(fleet, tmp_path, "task", "after", task_doc("after", after))
    on_ts = task_doc("on-ts", after, type="run-script-on-taskserver")
    await add(fleet, tmp_path, "task", "on-ts", on_ts)


async def all_marked(marks: Path, names: list[str], text: str = "x\n") -> bool:
    return all((marks / n).exists() and (marks / n).read_text() == text for n in names)


def once_each(run: dict[str, Any], step: str) -> None:
    """One instance per computer in ``step``, each succeeded: every result stored once."""
    rows = by_step(run)[step]
    assert sorted(i["computer"] for i in rows) == NAMES, rows
    assert all(i["status"] == "succeeded" for i in rows), rows


async def test_kill_9_of_the_active_mid_server_job_the_standby_resumes_it(
    postgres_url, fleet: Fleet, tmp_path
):
    marks, go = tmp_path / "marks", tmp_path / "go"
    marks.mkdir()
    active, standby = await pair(fleet, postgres_url)
    await waiting_step(fleet, tmp_path, marks, go)
    steps = '[[steps]]\ntask = "wait"\n[[steps]]\ntask = "on-ts"\n'
    await add(fleet, tmp_path, "job", "across", job_doc("across", "server-job", steps))
    async with AdminClient(both(active, standby), fleet.admin_token, fleet.trust()) as c:
        run_id = (await c.call("run.start", task="across", all=True))["run_id"]
    await until(lambda: all_marked(marks, NAMES), "the first step running everywhere")

    active.kill(signal.SIGKILL)
    await active.wait()
    await until(lambda: serves(fleet, standby.url), "the standby serving", TAKEOVER_S)
    assert f"pid {pid_of(standby)}" in await lease_holder(postgres_url)
    active.url = both(active, standby)  # an admin verb, a `taskfleet` process, given both
    listed = await fleet.cli_json("computers")
    assert {r["name"] for r in listed} >= set(NAMES)

    go.touch()
    async with AdminClient(both(active, standby), fleet.admin_token, fleet.trust()) as c:
        final = await wait_run(c, run_id, 90)
    assert final["status"] == "succeeded", final
    once_each(final, "wait")
    once_each(final, "on-ts")
    for name in NAMES:
        assert (marks / name).read_text() == "x\ny\n", f"{name} ran a step twice or skipped one"


async def test_kill_9_of_the_active_mid_client_job_and_task_both_end(
    postgres_url, fleet: Fleet, tmp_path
):
    marks, go, plain = tmp_path / "marks", tmp_path / "go", tmp_path / "plain"
    marks.mkdir()
    plain.mkdir()
    active, standby = await pair(fleet, postgres_url)
    await waiting_step(fleet, tmp_path, marks, go)
    steps = '[[steps]]\ntask = "wait"\n[[steps]]\ntask = "after"\n'
    await add(fleet, tmp_path, "job", "each", job_doc("each", "client-job", steps))
    script = f"echo t >> {plain}/%COMPUTERNAME%\nwhile [ ! -e {go} ]; do sleep 0.1; done"
    await add(fleet, tmp_path, "task", "plain", task_doc("plain", script))
    async with AdminClient(both(active, standby), fleet.admin_token, fleet.trust()) as c:
        job_id = (await c.call("run.start", task="each", all=True))["run_id"]
        task_id = (await c.call("run.start", task="plain", all=True))["run_id"]
    await until(lambda: all_marked(marks, NAMES), "the client job's first step running")
    await until(lambda: all_marked(plain, NAMES, "t\n"), "the task running everywhere")

    active.kill(signal.SIGKILL)
    await active.wait()
    await until(lambda: serves(fleet, standby.url), "the standby serving", TAKEOVER_S)

    go.touch()
    async with AdminClient(both(active, standby), fleet.admin_token, fleet.trust()) as c:
        job = await wait_run(c, job_id, 90)
        task = await wait_run(c, task_id, 90)
    assert job["status"] == "succeeded", job
    assert task["status"] == "succeeded", task
    assert sorted(i["computer"] for i in task["instances"]) == NAMES
    for name in NAMES:
        assert (marks / name).read_text() == "x\ny\n", f"{name} ran a job step twice or none"
        assert (plain / name).read_text() == "t\n", f"{name} ran the task twice"


async def test_a_paused_active_is_fenced_and_stands_down_when_it_resumes(
    postgres_url, fleet: Fleet, tmp_path
):
    marks, go = tmp_path / "marks", tmp_path / "go"
    marks.mkdir()
    active, standby = await pair(fleet, postgres_url)
    await waiting_step(fleet, tmp_path, marks, go)
    steps = '[[steps]]\ntask = "wait"\n[[steps]]\ntask = "on-ts"\n'
    await add(fleet, tmp_path, "job", "paused", job_doc("paused", "server-job", steps))
    async with AdminClient(both(active, standby), fleet.admin_token, fleet.trust()) as c:
        run_id = (await c.call("run.start", task="paused", all=True))["run_id"]
    await until(lambda: all_marked(marks, NAMES), "the first step running everywhere")

    active.kill(signal.SIGSTOP)
    try:
        # The lease (10 s) runs out, the standby ends the paused one's session and takes over.
        await until(lambda: serves(fleet, standby.url), "the standby taking over", 30)
        assert f"pid {pid_of(standby)}" in await lease_holder(postgres_url)
        assert "fencing_stale_active" in standby.log_path.read_text()
    finally:
        active.kill(signal.SIGCONT)

    async def standing_by_again() -> bool:
        log = active.log_path.read_text()
        return "stood_down" in log and STANDBY in log[log.index("stood_down") :]

    await until(standing_by_again, "the resumed NS standing down, then waiting as standby", 30)
    log = active.log_path.read_text()
    assert "lease_taken" not in log[log.index("stood_down") :], "the old one took the lease again"
    assert not await serves(fleet, active.url.split(",")[0]), "the old active still accepts"

    go.touch()
    async with AdminClient(both(active, standby), fleet.admin_token, fleet.trust()) as c:
        final = await wait_run(c, run_id, 120)
    assert final["status"] == "succeeded", final
    once_each(final, "wait")
    once_each(final, "on-ts")
    for name in NAMES:
        assert (marks / name).read_text() == "x\ny\n", f"{name} ran a step twice or skipped one"
    assert f"pid {pid_of(standby)}" in await lease_holder(postgres_url)


async def all_dispatched(database: str, run_id: int) -> bool:
    conn = await asyncpg.connect(database)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM instances WHERE run_id = $1 AND dispatched = 0", run_id
        )
    finally:
        await conn.close()
    return left == 0


async def test_kill_9_of_the_active_mid_task_on_its_builtin_service_agents(
    postgres_url, fleet: Fleet, tmp_path
):
    """Agents with no TS are served by the active NS's built-in task service, which holds the
    work of an offline agent in that NS's own data folder: the new active dispatches it again to
    its own service, so the agent that comes back gets it; each agent runs the task once."""
    go, plain = tmp_path / "go", tmp_path / "plain"
    plain.mkdir()
    active, standby = await pair(fleet, postgres_url, taskservers=False)
    script = f"echo t >> {plain}/%COMPUTERNAME%\nwhile [ ! -e {go} ]; do sleep 0.1; done"
    await add(fleet, tmp_path, "task", "plain", task_doc("plain", script))
    away = next(p for p in fleet.procs if p.name == NAMES[-1])
    away.kill(signal.SIGTERM)
    await away.wait()
    async with AdminClient(both(active, standby), fleet.admin_token, fleet.trust()) as c:
        run_id = (await c.call("run.start", task="plain", all=True))["run_id"]
    await until(lambda: all_marked(plain, NAMES[:-1], "t\n"), "the task running on two")
    await until(lambda: all_dispatched(postgres_url, run_id), "the third held by the service")

    active.kill(signal.SIGKILL)
    await active.wait()
    await until(lambda: serves(fleet, standby.url), "the standby serving", TAKEOVER_S)
    active.url = both(active, standby)  # the agent that comes back is given both addresses
    await fleet.agent(NAMES[-1])

    go.touch()
    async with AdminClient(both(active, standby), fleet.admin_token, fleet.trust()) as c:
        final = await wait_run(c, run_id, 90)
    assert final["status"] == "succeeded", final
    assert sorted(i["computer"] for i in final["instances"]) == NAMES
    for name in NAMES:
        assert (plain / name).read_text() == "t\n", f"{name} ran the task twice or never"


async def test_a_standby_with_another_key_refuses_to_run(postgres_url, fleet: Fleet, tmp_path):
    """A second NS that does not share the active one's key and TLS files could not keep the
    agents' tickets and pinned fingerprint valid: it exits at once, saying what to copy."""
    fleet.database = postgres_url
    await fleet.server()
    other = Proc(
        "ns-other",
        ["server", "--data", str(tmp_path / "other"), "--listen", "127.0.0.1:0"]
        + ["--database", postgres_url],
        tmp_path / "ns-other.log",
    )
    fleet.procs.append(other)
    await other.start(wait_ready=False)
    assert await other.wait(30) == 4
    assert "copy DATA/server.key and DATA/tls/" in other.log(), other.log()
