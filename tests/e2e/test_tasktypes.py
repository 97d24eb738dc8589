"""The task catalog, for real: local HTTP and SMTP servers, the real NS database, the real
machine's inventory, a harmless script standing in for reboots and service managers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from websockets.exceptions import ConnectionClosed, InvalidMessage

from admin.client import AdminClient
from agent.agent import Agent
from agent.commands import CommandTable
from server.core import NotificationServer
from taskserver.service import TaskServer
from tests.helpers import INSECURE, free_port, until, wait_run


class Site:
    """A local HTTP server that records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                site.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length).decode(),
                    }
                )
                status = 404 if self.path.startswith("/missing") else 201
                body = json.dumps({"hello": self.path}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def site():
    s = Site()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def recorder(tmp_path):
    """A harmless script for the command table: it records its arguments, one line per call."""
    log = tmp_path / "commands.log"
    script = tmp_path / "record.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho recorded "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    table = {
        name: [str(script), name, *args]
        for name, args in {
            "service.start": ["{service}"],
            "service.query": ["{service}"],
            "service.reload": ["{service}"],
            "power.restart": ["{delay_s}", "{message}"],
            "defragment": ["{volume}"],
        }.items()
    }
    table["power.logoff"] = []  # an empty entry: "not supported" here
    return log, CommandTable(table)


class World:
    """NS, one TS and one agent, in this process, over real sockets."""

    def __init__(self, tmp_path, commands: CommandTable, smtp_port: int):
        self.tmp = tmp_path
        self.ns = NotificationServer(
            data_dir=str(tmp_path / "ns"),
            insecure=True,
            smtp={
                "host": "127.0.0.1",
                "port": smtp_port,
                "security": "none",
                "sender": "taskfleet@test",
            },
        )
        self.commands = commands
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.ns.start()
        async with self.admin() as c:
            enrol = (await c.call("tokens.create", uses=10))["token"]
            ts_enrol = (await c.call("tokens.create", uses=1, role="taskserver"))["token"]
        self.ts = TaskServer(
            server_url=self.ns.url,
            data_dir=str(self.tmp / "ts"),
            name="ts-1",
            trust=INSECURE,
            enrol_token=ts_enrol,
            insecure=True,
        )
        await self.ts.start()
        await asyncio.wait_for(self.ts.connected.wait(), 15)
        self.agent = Agent(
            server_url=self.ns.url,
            name="pc-1",
            trust=INSECURE,
            enrol_token=enrol,
            data_dir=str(self.tmp / "agent"),
            commands=self.commands,
        )
        self.tasks.append(asyncio.create_task(self.agent.run()))
        await asyncio.wait_for(self.agent.connected.wait(), 15)

    def admin(self) -> AdminClient:
        return AdminClient(self.ns.url, self.ns.first_admin_token, INSECURE)

    async def run(self, doc: dict, computers: list[str] | None = None) -> dict:
        async with self.admin() as c:
            await c.call("task.add", document=doc)
            started = await c.call("run.start", task=doc["name"], computers=computers or [])
            final = await wait_run(c, started["run_id"], 60)
        return final["instances"][0]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.ts.stop()
        await self.ns.stop()


@pytest.fixture
async def world(tmp_path, recorder):
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    w = World(tmp_path, recorder[1], controller.port)
    w.mailbox = mailbox
    await w.start()
    try:
        yield w
    finally:
        await w.close()
        controller.stop()


async def test_call_web_service_from_server_and_client(world, site):
    """Both HTTP task types make the request as described (method, headers, body with tokens) and
    report status and body; an unexpected status fails with it; a refused connection says so."""
    common = {"method": "POST", "headers": {"X-Run": "%RUNID%"}, "body": "from %COMPUTERNAME%"}
    inst = await world.run(
        {
            "name": "w1",
            "type": "call-web-service-server",
            "params": {**common, "url": site.url + "/ns"},
        }
    )
    assert inst["status"] == "succeeded", inst
    out = json.loads(inst["output"])
    assert out["status"] == 201 and json.loads(out["body"]) == {"hello": "/ns"}
    assert site.requests[-1]["method"] == "POST" and site.requests[-1]["headers"]["X-Run"].isdigit()
    inst = await world.run(
        {
            "name": "w2",
            "type": "call-web-service-client",
            "params": {**common, "url": site.url + "/agent"},
        },
        ["pc-1"],
    )
    assert inst["status"] == "succeeded", inst
    assert site.requests[-1]["body"] == "from pc-1"
    inst = await world.run(
        {"name": "w3", "type": "call-web-service-server", "params": {"url": site.url + "/missing"}}
    )
    assert inst["status"] == "failed" and "HTTP status 404" in inst["reason"]
    inst = await world.run(
        {
            "name": "w4",
            "type": "call-web-service-server",
            "params": {"url": f"http://127.0.0.1:{free_port()}/"},
        }
    )
    assert inst["status"] == "failed" and "refused" in inst["reason"].lower()


async def test_sql_on_the_server_is_read_only_unless_allowed(world):
    """run-sql-query-on-server reads the real NS database; a write fails unless allow_write."""
    inst = await world.run(
        {
            "name": "q1",
            "type": "run-sql-query-on-server",
            "params": {"query": "SELECT name, has_agent FROM computers ORDER BY name"},
        }
    )
    assert inst["status"] == "succeeded", inst
    assert json.loads(inst["output"]) == {
        "columns": ["name", "has_agent"],
        "rows": [["pc-1", 1]],
        "truncated": False,
    }
    write = "INSERT INTO messages(at, severity, text, source) VALUES (0, 'info', 'via sql', 'test')"
    inst = await world.run(
        {"name": "q2", "type": "run-sql-query-on-server", "params": {"query": write}}
    )
    assert inst["status"] == "failed" and "readonly" in inst["reason"]
    inst = await world.run(
        {
            "name": "q3",
            "type": "run-sql-query-on-server",
            "params": {"query": write, "allow_write": True},
        }
    )
    assert inst["status"] == "succeeded", inst


async def test_messages_mail_tickles_and_hierarchy(world):
    """raise-message lands in `messages`; send-email reaches the local SMTP server with tokens
    replaced; tickle-client reaches the connected agent; replicate-hierarchy says no children are linked."""
    inst = await world.run(
        {"name": "m", "type": "raise-message", "params": {"text": "disk low (run %RUNID%)"}}
    )
    assert inst["status"] == "succeeded"
    async with world.admin() as c:
        texts = [m["text"] for m in await c.call("messages.list")]
    assert any(t.startswith("disk low (run ") for t in texts)

    inst = await world.run(
        {
            "name": "e",
            "type": "send-email",
            "params": {"to": ["ops@example.test"], "subject": "run %RUNID%", "body": "all good"},
        }
    )
    assert inst["status"] == "succeeded", inst
    (mail,) = world.mailbox.messages
    assert mail.rcpt_tos == ["ops@example.test"]
    assert b"Subject: run " in mail.content and b"all good" in mail.content

    inst = await world.run({"name": "t", "type": "tickle-client", "params": {}})
    assert inst["status"] == "succeeded"
    assert json.loads(inst["output"]) == {"reached": ["pc-1"], "offline": []}

    inst = await world.run({"name": "h", "type": "replicate-hierarchy", "params": {}})
    assert inst["status"] == "succeeded"
    assert inst["output"].strip() == "no children linked: nothing to replicate"


async def test_inventory_and_ip_configuration_read_the_real_machine(world):
    """send-basic-inventory reports this machine (the NS keeps it); get-ip-configuration shows
    the loopback interface with 127.0.0.1."""
    inst = await world.run({"name": "inv", "type": "send-basic-inventory", "params": {}}, ["pc-1"])
    assert inst["status"] == "succeeded", inst
    async with world.admin() as c:
        (kept,) = await c.call("inventory.show", computer="pc-1")
    assert kept["hostname"] == socket.gethostname()
    assert kept["cpus"] == os.cpu_count()
    assert "127.0.0.1" in kept["addresses"]
    assert kept["memory_bytes"] and kept["disks"]

    inst = await world.run({"name": "ip", "type": "get-ip-configuration", "params": {}}, ["pc-1"])
    config = json.loads(inst["output"])
    loopback = [
        i for i in config["interfaces"] if any(a["address"] == "127.0.0.1" for a in i["addresses"])
    ]
    assert loopback and loopback[0]["addresses"][0]["netmask"] == "255.0.0.0"


async def test_services_defragment_and_power_go_through_the_command_table(world, recorder):
    """Service, defragment and power tasks run the configured commands with the right arguments;
    power control reports first and acts after; an action with no command fails saying so."""
    log, _ = recorder
    inst = await world.run(
        {
            "name": "s1",
            "type": "control-service-state",
            "params": {"service": "cron", "action": "start"},
        },
        ["pc-1"],
    )
    assert inst["status"] == "succeeded" and inst["output"].strip() == "recorded service.start cron"
    inst = await world.run(
        {
            "name": "s2",
            "type": "unix-service-control",
            "params": {"service": "nginx", "action": "reload"},
        },
        ["pc-1"],
    )
    assert inst["status"] == "succeeded"
    inst = await world.run(
        {"name": "d", "type": "defragment-computer", "params": {"volume": "/data"}}, ["pc-1"]
    )
    assert inst["status"] == "succeeded"
    inst = await world.run(
        {
            "name": "p",
            "type": "power-control",
            "params": {"action": "restart", "delay_s": 5, "message": "patching"},
        },
        ["pc-1"],
    )
    assert inst["status"] == "succeeded", inst

    async def restarted():
        return log.exists() and "power.restart 5 patching" in log.read_text()

    await until(restarted, "the restart command to run")
    assert os.stat(log).st_mtime >= inst["ended_at"] - 0.01, "acted before reporting"
    assert log.read_text().splitlines()[:3] == [
        "service.start cron",
        "service.reload nginx",
        "defragment /data",
    ]
    inst = await world.run(
        {"name": "lo", "type": "power-control", "params": {"action": "logoff"}}, ["pc-1"]
    )
    assert inst["status"] == "failed" and "not supported" in inst["reason"]


async def test_agent_control_tasks(world):
    """update-client-configuration makes the agent register again; reset-task-agent stops what
    runs on the agent, clears its job state, and the agent comes back."""
    first = world.agent.link
    inst = await world.run(
        {"name": "u", "type": "update-client-configuration", "params": {}}, ["pc-1"]
    )
    assert inst["status"] == "succeeded"

    async def back():
        return world.agent.link is not None and world.agent.link is not first

    await until(back, "the agent re-registered")
    async with world.admin() as c:
        await c.call(
            "task.add",
            document={
                "name": "long",
                "type": "run-script",
                "timeout_s": 600,
                "params": {"script": "sleep 300"},
            },
        )
        long_run = (await c.call("run.start", task="long", computers=["pc-1"]))["run_id"]

        async def running():
            return (await c.call("run.show", run_id=long_run))["instances"][0][
                "status"
            ] == "running"

        await until(running, "the long task running")
        await c.call(
            "task.add", document={"name": "reset", "type": "reset-task-agent", "params": {}}
        )
        reset = await wait_run(
            c, (await c.call("run.start", task="reset", computers=["pc-1"]))["run_id"]
        )
        assert (
            reset["status"] == "succeeded" and "stopped 1 task" in reset["instances"][0]["output"]
        )
        final = await wait_run(c, long_run)
    assert final["instances"][0]["status"] == "stopped"


async def test_wake_on_lan_sends_the_magic_packet_for_the_device(world):
    """wake-on-lan from the TS sends 6×FF then the device's MAC 16 times; a device with no MAC
    known fails with what to do."""
    port = free_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", port))
    listener.settimeout(10)
    try:
        async with world.admin() as c:
            await c.call("computers.add", name="sleepy-pc", mac="00:11:22:aa:bb:cc")
            await c.call("computers.add", name="no-mac")
        inst = await world.run(
            {
                "name": "wol",
                "type": "wake-on-lan",
                "params": {"broadcast": "127.0.0.1", "port": port},
            },
            ["sleepy-pc"],
        )
        assert inst["status"] == "succeeded", inst
        data = await asyncio.to_thread(listener.recv, 1024)
        assert data == b"\xff" * 6 + bytes.fromhex("001122aabbcc") * 16
        inst = await world.run(
            {
                "name": "wol2",
                "type": "wake-on-lan",
                "params": {"broadcast": "127.0.0.1", "port": port},
            },
            ["no-mac"],
        )
        assert inst["status"] == "failed" and "--mac" in inst["reason"]
    finally:
        listener.close()


async def test_groups_filters_and_reports(world):
    """assign-to-group builds a group (creating it) that `run --group` targets; a filter over
    groups and inventory keeps a cached membership that update-filter-membership refreshes and
    `run --filter` targets; run-report keeps a snapshot that purge-report removes."""
    async with world.admin() as c:
        await c.call("computers.add", name="dev-1")
    inst = await world.run(
        {
            "name": "g",
            "type": "assign-to-group",
            "params": {"group": "web", "computers": ["pc-1"], "create": True},
        }
    )
    assert inst["status"] == "succeeded" and json.loads(inst["output"])["added"] == 1
    async with world.admin() as c:
        assert [(g["name"], g["computers"]) for g in await c.call("groups.list")] == [("web", 1)]
        await c.call(
            "task.add",
            document={"name": "hi", "type": "run-script", "params": {"script": "echo hi"}},
        )
        final = await wait_run(c, (await c.call("run.start", task="hi", groups=["web"]))["run_id"])
        assert [i["computer"] for i in final["instances"]] == ["pc-1"]

        saved = await c.call(
            "filter.add", document={"name": "f", "query": "computer.groups contains 'web'"}
        )
        assert saved["members"] == ["pc-1"]
        try:
            await c.call("filter.add", document={"name": "x", "query": "computer.color == 'red'"})
        except Exception as exc:  # RemoteError with the field path
            assert "query: unknown field computer.color" in str(exc)
        else:
            raise AssertionError("a filter on an unknown field was saved")
    # Without params.computers, the run's own targets are assigned.
    inst = await world.run(
        {"name": "g2", "type": "assign-to-group", "params": {"group": "web"}}, ["dev-1"]
    )
    assert inst["status"] == "succeeded", inst
    assert json.loads(inst["output"])["added"] == 1
    inst = await world.run(
        {"name": "u", "type": "update-filter-membership", "params": {"filter": "f"}}
    )
    assert json.loads(inst["output"]) == {"f": {"added": ["dev-1"], "removed": []}}
    async with world.admin() as c:
        started = await c.call("run.start", task="hi", filters=["f"])
        assert started["no_agent"] == ["dev-1"] and started["targets"] == 2
        await c.call(
            "report.add",
            document={"name": "fleet-size", "query": "SELECT count(*) AS n FROM computers"},
        )
    inst = await world.run({"name": "r", "type": "run-report", "params": {"report": "fleet-size"}})
    out = json.loads(inst["output"])
    assert out["columns"] == ["n"] and out["rows"] == [[2]]
    inst = await world.run(
        {"name": "purge", "type": "purge-report", "params": {"older_than_days": 0}}
    )
    assert json.loads(inst["output"]) == {"snapshots": 1}
    async with world.admin() as c:
        assert (await c.call("reports.list"))[0]["snapshots"] == 0


async def test_items_live_in_folders_and_can_be_moved_and_deleted(world):
    """Tasks, jobs, reports and filters are items in folders; move-item moves one (making the
    folder); delete-item refuses a task a job still uses, naming the job, and deletes one unused."""
    async with world.admin() as c:
        for name in ("used", "spare"):
            await c.call(
                "task.add",
                document={"name": name, "type": "run-script", "params": {"script": "true"}},
            )
        await c.call(
            "job.add",
            document={"name": "uses-it", "type": "client-job", "steps": [{"task": "used"}]},
        )
        paths = {i["id"]: i["path"] for i in await c.call("items.list")}
    assert (
        paths["task:used"] == "/Jobs and Tasks/used"
        and paths["job:uses-it"] == "/Jobs and Tasks/uses-it"
    )
    inst = await world.run(
        {
            "name": "mv",
            "type": "move-item",
            "params": {"item": "task:spare", "folder": "/Jobs and Tasks/Linux"},
        }
    )
    assert json.loads(inst["output"])["path"] == "/Jobs and Tasks/Linux/spare"
    inst = await world.run(
        {"name": "rm1", "type": "delete-item", "params": {"item": "/Jobs and Tasks/used"}}
    )
    assert inst["status"] == "failed" and "used by job(s) uses-it" in inst["reason"]
    inst = await world.run(
        {"name": "rm2", "type": "delete-item", "params": {"item": "/Jobs and Tasks/Linux/spare"}}
    )
    assert json.loads(inst["output"]) == {"deleted": ["task:spare"]}
    async with world.admin() as c:
        folders = {f["path"]: f["items"] for f in await c.call("folders.list")}
        ids = {i["id"] for i in await c.call("items.list")}
    assert folders["/Jobs and Tasks/Linux"] == 0 and "/Reports" in folders
    assert "task:spare" not in ids and "task:used" in ids


async def test_policies_reach_their_agents_and_run_on_schedule(world, tmp_path):
    """A policy (client task, schedule, targets) reaches the agents it targets with their
    configuration and runs on schedule; enable-disable-policy turns it off and tickles them."""
    marks = tmp_path / "policy.log"
    async with world.admin() as c:
        await c.call(
            "task.add",
            document={
                "name": "stamp",
                "type": "run-script",
                "params": {"script": f"echo %COMPUTERNAME% >> {marks}"},
            },
        )
        await c.call(
            "task.add",
            document={"name": "ns-only", "type": "raise-message", "params": {"text": "x"}},
        )
        try:
            await c.call(
                "policy.add",
                document={"name": "bad", "task": "ns-only", "schedule": {"every_s": 1}},
            )
        except Exception as exc:
            assert "task: 'ns-only' is a server task" in str(exc)
        else:
            raise AssertionError("a policy with a server task was saved")
        saved = await c.call(
            "policy.add",
            document={
                "name": "stamper",
                "task": "stamp",
                "enabled": False,
                "schedule": {"every_s": 1},
                "targets": {"computers": ["pc-1"]},
            },
        )
        assert saved["enabled"] is False
    inst = await world.run(
        {
            "name": "on",
            "type": "enable-disable-policy",
            "params": {"policy": "stamper", "enabled": True},
        }
    )
    assert json.loads(inst["output"])["tickled"] == ["pc-1"]

    async def stamped_twice():
        return marks.exists() and marks.read_text().count("pc-1") >= 2

    await until(stamped_twice, "the policy to run twice on pc-1", 20)
    inst = await world.run(
        {
            "name": "off",
            "type": "enable-disable-policy",
            "params": {"policy": "stamper", "enabled": False},
        }
    )
    assert inst["status"] == "succeeded"

    async def dropped():
        return "stamper" not in world.agent.policies

    await until(dropped, "the agent to drop the disabled policy", 20)


async def test_restart_server_services_in_place(world):
    """Restarting the scheduler, the built-in task service and the listeners keeps the NS up:
    the TS and agent reconnect by themselves and the next task runs. The listeners' restart
    closes every open connection (1001, going away), the admin's too, even one whose
    ``run.start`` answer had not arrived yet: the admin reconnects and finds the run."""
    async with world.admin() as c:
        await c.call(
            "task.add",
            document={
                "name": "rs",
                "type": "restart-server-services",
                "params": {"services": ["scheduler", "task-service", "listeners"]},
            },
        )
    # What the listeners' restart may do to an admin connection: close it (1001) during the
    # handshake, or cut a reply off (ConnectionError). Nothing else is forgiven.
    cut = (ConnectionError, OSError, ConnectionClosed, InvalidMessage)
    run_id = None
    try:
        async with world.admin() as c:
            run_id = (await c.call("run.start", task="rs"))["run_id"]
    except cut:
        pass  # the run may have started: the next connection looks for it

    async def started():
        try:
            async with world.admin() as c:
                return [r["id"] for r in await c.call("runs.list") if r["task_name"] == "rs"]
        except cut:
            return None

    if run_id is None:
        found = await until(started, "the restart run to be listed")
        assert len(found) == 1, found  # started once, not twice
        run_id = found[0]

    async def ended():
        try:  # a fresh connection each time: the restart of the listeners drops open ones
            async with world.admin() as c:
                view = await c.call("run.show", run_id=run_id)
        except cut:
            return None
        return view if view["status"] != "running" else None

    view = await until(ended, "the restart run to end")
    inst = view["instances"][0]
    assert inst["status"] == "succeeded", inst
    assert json.loads(inst["output"]) == {"restarted": ["scheduler", "task-service", "listeners"]}
    async with world.admin() as c:

        async def back():
            rows = await c.call("computers.list")
            return any(r["name"] == "pc-1" and r["online"] for r in rows)

        await until(back, "pc-1 online again", 30)
        await c.call(
            "task.add",
            document={"name": "after", "type": "run-script", "params": {"script": "echo ok"}},
        )
        final = await wait_run(
            c, (await c.call("run.start", task="after", computers=["pc-1"]))["run_id"]
        )
    assert final["status"] == "succeeded"


async def test_file_resource_cleanup_and_message_push(world):
    """file-resource-cleanup deletes old files and files no item names, keeps a referenced one;
    a raised message is pushed to an admin watching messages."""
    root = world.tmp / "ns" / "resources"
    (root / "pkgs").mkdir(parents=True)
    for name in ("old.bin", "kept.bin", "stray.bin"):
        (root / "pkgs" / name).write_bytes(b"x" * 10)
    os.utime(root / "pkgs" / "old.bin", (0, 0))
    async with world.admin() as c:
        await c.call(
            "task.add",
            document={
                "name": "uses-file",
                "type": "run-script",
                "params": {"script": "cat resources/pkgs/kept.bin"},
            },
        )
    inst = await world.run(
        {"name": "clean", "type": "file-resource-cleanup", "params": {"older_than_days": 30}}
    )
    out = json.loads(inst["output"])
    assert out == {"files": ["pkgs/old.bin", "pkgs/stray.bin"], "bytes_freed": 20}
    assert (root / "pkgs" / "kept.bin").exists()

    async with world.admin() as watcher:
        await watcher.call("messages.watch")
        await world.run(
            {
                "name": "alert",
                "type": "raise-message",
                "params": {"text": "fire", "severity": "critical"},
            }
        )
        event = await asyncio.wait_for(watcher._events.get(), 10)
    assert (
        event.kind == "message"
        and event.data["text"] == "fire"
        and event.data["severity"] == "critical"
    )
