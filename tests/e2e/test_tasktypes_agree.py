"""The seed's task types where docs/tasks.md and docs/jobs.md once disagreed with the code: each
test runs the behaviour the page now describes, on a real NS and real agents over loopback, with
harmless scripts standing in for reboots, service managers and other users' shells."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from admin.client import AdminClient
from agent.agent import Agent
from agent.commands import CommandTable, default_table
from server.core import NotificationServer
from tests.helpers import INSECURE, Fleet, Proc, task_doc, until, wait_run


class Here:
    """The NS of the ``ns`` fixture, with in-process agents made as each test needs them."""

    def __init__(self, ns: NotificationServer, root: Path):
        self.ns = ns
        self.root = root
        self.tasks: list[asyncio.Task] = []
        self.token = ""

    def admin(self) -> AdminClient:
        return AdminClient(self.ns.url, self.ns.first_admin_token, INSECURE)

    async def agent(
        self, name: str, *, commands: CommandTable | None = None, allow_power: bool = False
    ) -> Agent:
        if not self.token:
            async with self.admin() as c:
                self.token = (await c.call("tokens.create", uses=20))["token"]
        agent = Agent(
            server_url=self.ns.url,
            name=name,
            trust=INSECURE,
            enrol_token=self.token,
            data_dir=str(self.root / name),
            commands=commands,
            allow_power=allow_power,
        )
        self.tasks.append(asyncio.create_task(agent.run()))
        await asyncio.wait_for(agent.connected.wait(), 15)
        return agent

    async def run(self, doc: dict, computers: list[str] | None = None) -> dict:
        """Save ``doc``, run it on ``computers``, return its one instance at the end."""
        async with self.admin() as c:
            await c.call("task.add", document=doc)
            started = await c.call("run.start", task=doc["name"], computers=computers or [])
            final = await wait_run(c, started["run_id"], 60)
        (instance,) = final["instances"]
        return instance

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def here(ns, tmp_path):
    h = Here(ns, tmp_path)
    try:
        yield h
    finally:
        await h.close()


def recorder(folder: Path, name: str) -> tuple[Path, Path]:
    """A harmless program ``folder/name`` that appends its arguments and the time (seconds since
    the epoch) to ``folder/name.log`` and echoes them: (program, log)."""
    folder.mkdir(exist_ok=True)
    log = folder / f"{name}.log"
    program = folder / name
    date = shutil.which("date")  # by its full path: a test may empty PATH
    program.write_text(f'#!/bin/sh\necho "$@" "$({date} +%s.%N)" >> {log}\necho {name} "$@"\n')
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return program, log


def lines(log: Path) -> list[str]:
    """The recorded calls, each without its time."""
    return [line.rsplit(" ", 1)[0] for line in log.read_text().splitlines()] if log.exists() else []


async def recorded(log: Path) -> list[str]:
    """``lines`` for ``until``."""
    return lines(log)


# -- inventory and wake-on-lan ---------------------------------------------------------------


def machine_macs() -> set[str]:
    macs = set()
    for card in os.listdir("/sys/class/net"):
        try:
            macs.add(Path(f"/sys/class/net/{card}/address").read_text().strip().lower())
        except OSError:
            continue
    return macs


async def test_inventory_sets_the_mac_wake_on_lan_sends_to(here):
    """send-basic-inventory reports the machine's own MAC (one of its cards', unicast), the NS
    keeps it on the computer, and wake-on-lan with no params.mac then sends the magic packet
    for that MAC (a real UDP socket receives it)."""
    await here.agent("pc-1")
    inst = await here.run({"name": "inv", "type": "send-basic-inventory"}, ["pc-1"])
    assert inst["status"] == "succeeded", inst
    async with here.admin() as c:
        (kept,) = await c.call("inventory.show", computer="pc-1")
    mac = kept["mac"]
    assert mac in kept["macs"] and mac in machine_macs(), kept
    assert "00:00:00:00:00:00" not in kept["macs"]
    assert all(int(m[:2], 16) & 1 == 0 for m in kept["macs"]), "a multicast MAC was reported"

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    try:
        port = listener.getsockname()[1]
        wake = {"broadcast": "127.0.0.1", "port": port}
        inst = await here.run({"name": "wol", "type": "wake-on-lan", "params": wake}, ["pc-1"])
        assert inst["status"] == "succeeded", inst
        assert inst["output"] == f"magic packet for {mac} sent to 127.0.0.1:{port}"
        packet = await asyncio.to_thread(listener.recv, 1024)
    finally:
        listener.close()
    assert packet == b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) * 16


# -- power-control: refused unless allowed ---------------------------------------------------


def agent_proc(fleet: Fleet, name: str, *extra: str) -> Proc:
    """A real ``taskfleet agent`` process of this fleet with extra options."""
    assert fleet.ns is not None
    args = ["agent", "--server", fleet.ns.url, "--data", str(fleet.root / name), "--name", name]
    args += ["--enrol-token", fleet.enrol_token, *fleet.trust_args(), *extra]
    proc = Proc(name, args, fleet.root / f"{name}.log")
    fleet.procs.append(proc)
    return proc


async def test_power_actions_need_allow_power(fleet, tmp_path, monkeypatch):
    """Two real agents with the platform's own power commands (``shutdown`` on their PATH is a
    recorder here): the one started without --allow-power refuses, saying how to allow it, and
    runs nothing; the one started with it reports, then runs ``shutdown -r +1 MESSAGE``."""
    shutdown, log = recorder(tmp_path / "bin", "shutdown")
    monkeypatch.setenv("PATH", f"{shutdown.parent}{os.pathsep}{os.environ['PATH']}")
    await fleet.server()
    await agent_proc(fleet, "guarded").start(wait_ready=False)
    await agent_proc(fleet, "allowed", "--allow-power").start(wait_ready=False)
    await fleet.wait_online(["guarded", "allowed"])
    restart = {"action": "restart", "delay_s": 30, "message": "patching"}
    async with fleet.admin() as c:
        await c.call("task.add", document={"name": "p", "type": "power-control", "params": restart})
        started = await c.call("run.start", task="p", computers=["guarded", "allowed"])
        final = await wait_run(c, started["run_id"])
    by = {i["computer"]: i for i in final["instances"]}
    assert by["guarded"]["status"] == "failed"
    assert by["guarded"]["reason"] == (
        "power actions are off on this agent: start it with --allow-power (or give"
        ' "power.restart" a command of your own in its --commands file) to restart it'
    )
    assert by["allowed"]["status"] == "succeeded", by["allowed"]
    assert by["allowed"]["output"] == "restart in 30 s: shutdown -r +1 patching"
    await until(lambda: recorded(log), "the allowed agent's shutdown to run")
    assert lines(log) == ["-r +1 patching"], "the guarded agent ran its shutdown"


async def test_a_power_command_of_the_agents_own_opts_in(here, tmp_path):
    """An agent without --allow-power runs a power action whose command table entry it was given
    (a script); an entry that only repeats the platform's default still needs the flag; an
    entry with an unknown placeholder fails naming it."""
    restart, log = recorder(tmp_path / "bin", "restart")
    own = await here.agent(
        "own",
        commands=CommandTable(
            {
                "power.restart": [str(restart), "{delay_s}"],
                "power.shutdown": default_table()["power.shutdown"],
                "power.logoff": [str(restart), "{nope}"],
            }
        ),
    )
    assert not own.allow_power
    doc = {"name": "r", "type": "power-control", "params": {"action": "restart", "delay_s": 0}}
    inst = await here.run(doc, ["own"])
    assert inst["status"] == "succeeded", inst
    await until(lambda: recorded(log), "the restart script to run")
    assert lines(log) == ["0"]
    doc = {"name": "s", "type": "power-control", "params": {"action": "shutdown"}}
    inst = await here.run(doc, ["own"])
    assert inst["status"] == "failed" and "--allow-power" in inst["reason"], inst
    doc = {"name": "l", "type": "power-control", "params": {"action": "logoff"}}
    inst = await here.run(doc, ["own"])
    assert inst["status"] == "failed"
    assert inst["reason"] == (
        "power-control failed on the agent: command 'power.logoff' in the command table uses an"
        " unknown placeholder 'nope'; known here: {delay_s}, {delay_min}, {message}, {user}"
    )
    assert lines(log) == ["0"]


async def test_logoff_waits_for_its_delay(here, tmp_path):
    """A power command with no delay of its own (logoff: neither {delay_s} nor {delay_min}) is
    started by the agent delay_s after it reported, not at once."""
    logoff, log = recorder(tmp_path / "bin", "logoff")
    await here.agent("pc-1", commands=CommandTable({"power.logoff": [str(logoff), "{user}"]}))
    doc = {"name": "lo", "type": "power-control", "params": {"action": "logoff", "delay_s": 2}}
    inst = await here.run(doc, ["pc-1"])
    assert inst["status"] == "succeeded", inst
    assert inst["output"].startswith(f"logoff in 2 s: {logoff} ")
    await until(lambda: recorded(log), "the logoff command to run", 20)
    ran_at = float(log.read_text().split()[-1])
    assert ran_at >= inst["ended_at"] + 2 - 0.1, "logoff ran before its delay"


# -- unix-service-control's `service` fallback --------------------------------------------


async def test_unix_service_control_falls_back_to_service(here, tmp_path, monkeypatch):
    """With no systemctl on the agent's PATH but a ``service`` program, the default table's
    systemctl command becomes ``service NAME ACTION``; enable (which ``service`` has not) fails
    saying so; with neither, the task fails naming systemctl."""
    service, log = recorder(tmp_path / "bin", "service")
    await here.agent("pc-1")
    monkeypatch.setenv("PATH", str(service.parent))
    doc = {"name": "u", "type": "unix-service-control"}
    inst = await here.run({**doc, "params": {"service": "nginx", "action": "restart"}}, ["pc-1"])
    assert inst["status"] == "succeeded", inst
    assert inst["output"].strip() == "service nginx restart"
    inst = await here.run({**doc, "params": {"service": "nginx", "action": "enable"}}, ["pc-1"])
    assert inst["status"] == "failed" and "needs systemctl" in inst["reason"], inst
    assert lines(log) == ["nginx restart"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    inst = await here.run({**doc, "params": {"service": "nginx", "action": "start"}}, ["pc-1"])
    assert inst["status"] == "failed"
    assert inst["reason"] == "'systemctl' is not installed on this computer"


# -- file-resource-cleanup ----------------------------------------------------------------


async def test_file_resource_cleanup_keeps_what_any_item_names(here):
    """A file is referenced when a task, job, policy, report or filter names its relative path
    as whole path components: ``up.sh`` is not named by ``pkg/setup.sh`` and goes; so does a
    file nobody names; each file that one item kind names stays, and the ``setup.sh`` that
    ``pkg/setup.sh`` ends with."""
    root = Path(here.ns.data_dir) / "resources"
    names = ["up.sh", "pkg/setup.sh", "by-job.sh", "by-policy.sh", "by-report.csv"]
    names += ["by-filter.txt", "stray.bin", "setup.sh"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * 10)
    await here.agent("pc-1")
    async with here.admin() as c:
        script = {"script": "sh resources/pkg/setup.sh.", "env": {"SETUP": "pkg/setup.sh"}}
        await c.call("task.add", document={"name": "a", "type": "run-script", "params": script})
        await c.call(
            "job.add",
            document={
                "name": "j",
                "type": "client-job",
                "description": "then by-job.sh",
                "steps": [{"task": "a"}],
            },
        )
        await c.call(
            "policy.add",
            document={
                "name": "p",
                "task": "a",
                "enabled": False,
                "description": "runs by-policy.sh nightly",
                "schedule": {"every_s": 3600},
                "targets": {"computers": ["pc-1"]},
            },
        )
        await c.call("report.add", document={"name": "r", "query": "SELECT 'by-report.csv'"})
        await c.call(
            "filter.add", document={"name": "f", "query": "computer.name == 'by-filter.txt'"}
        )
    doc = {"name": "clean", "type": "file-resource-cleanup", "params": {"older_than_days": 30}}
    inst = await here.run(doc)
    assert inst["status"] == "succeeded", inst
    assert json.loads(inst["output"]) == {"files": ["stray.bin", "up.sh"], "bytes_freed": 20}
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    # setup.sh stays too: "pkg/setup.sh" ends with it as a whole component (when unsure, keep).
    assert left == [
        "by-filter.txt",
        "by-job.sh",
        "by-policy.sh",
        "by-report.csv",
        "pkg/setup.sh",
        "setup.sh",
    ]


# -- server tasks and their run's targets -------------------------------------------------


async def test_server_tasks_run_once_and_take_the_runs_targets(here):
    """A server task runs once, as ``(server)``, whatever targets it is given; tickle-client
    (like assign-to-group) acts on those targets when its own list is empty, and on every
    agent when there are none."""
    await here.agent("pc-1")
    await here.agent("pc-2")
    async with here.admin() as c:
        await c.call("computers.add", name="printer-3")
    doc = {"name": "log", "type": "write-server-log", "params": {"message": "hi"}}
    inst = await here.run(doc, ["pc-1", "pc-2"])
    assert inst["computer"] == "(server)" and inst["status"] == "succeeded", inst
    tickle = {"name": "t", "type": "tickle-client"}
    inst = await here.run(tickle, ["pc-2"])
    assert json.loads(inst["output"]) == {"reached": ["pc-2"], "offline": []}
    inst = await here.run(tickle, ["printer-3"])
    assert json.loads(inst["output"]) == {"reached": [], "offline": []}
    inst = await here.run(tickle)
    everyone = json.loads(inst["output"])  # pc-2 may still be re-registering: offline then
    assert sorted(everyone["reached"] + everyone["offline"]) == ["pc-1", "pc-2"]


# -- the HTTP output-cut marker -------------------------------------------------------------


class _Big(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"0123456789" * 10
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def test_http_body_is_cut_with_the_documented_marker(here):
    """A response body longer than output_limit_bytes is kept up to the limit, then the line
    ``[output cut at N bytes]``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Big)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        params = {"url": url, "output_limit_bytes": 25}
        inst = await here.run({"name": "h", "type": "call-web-service-server", "params": params})
    finally:
        server.shutdown()
        server.server_close()
    assert inst["status"] == "succeeded", inst
    assert (
        json.loads(inst["output"])["body"] == "0123456789012345678901234\n[output cut at 25 bytes]"
    )


# -- the "no agent" warning of `taskfleet run` ----------------------------------------------


async def test_run_warns_about_targets_with_no_agent_as_jobs_md_shows(fleet, tmp_path):
    """`taskfleet run` of a server job with a client step on a device prints, on standard error,
    the warning docs/jobs.md quotes (§6, "Computers without an agent")."""
    await fleet.server()
    code, _, err = await fleet.cli("computers", "add", "printer-3")
    assert code == 0, err
    for doc in (
        {"name": "note", "type": "write-server-log", "params": {"message": "rollout"}},
        {"name": "hello", "type": "run-script", "params": {"script": "echo hi"}},
    ):
        (tmp_path / f"{doc['name']}.json").write_text(json.dumps(doc))
        code, _, err = await fleet.cli("task", "add", str(tmp_path / f"{doc['name']}.json"))
        assert code == 0, err
    job = {"name": "rollout", "type": "server-job", "steps": [{"task": "note"}, {"task": "hello"}]}
    (tmp_path / "rollout.json").write_text(json.dumps(job))
    code, _, err = await fleet.cli("job", "add", str(tmp_path / "rollout.json"))
    assert code == 0, err
    code, _, err = await fleet.cli("run", "rollout", "--computer", "printer-3")
    assert code == 0, err
    quoted = "warning: 1 target(s) have no agent and will fail their client steps with reason"
    assert f"{quoted} 'no agent': printer-3" in err
    docs = Path(__file__).parents[2] / "docs" / "jobs.md"
    assert f"{quoted} 'no agent': printer-3" in " ".join(docs.read_text().split())


# -- run-script: run_as and working_dir ---------------------------------------------------


async def test_run_script_as_another_user_in_a_working_dir(here, tmp_path, monkeypatch):
    """As root, an agent starts run_as = "nobody" as nobody (its groups, HOME, USER, LOGNAME),
    reading the script it wrote in a private folder now nobody's, with taskfleet's own
    variables still kept out; working_dir is
    where the script starts; an unknown user and a missing folder fail with what is wrong."""
    assert os.geteuid() == 0, "this test needs root (as CI and this sandbox have)"
    monkeypatch.setenv("TASKFLEET_SECRET_FOR_TEST", "must-not-leak")
    await here.agent("pc-1")
    script = 'id -un; id -gn; echo "$HOME $USER $LOGNAME"; pwd; stat -c "%a %U" .\n'
    script += "env | grep -c ^TASKFLEET_SECRET"
    doc = {"name": "who", "type": "run-script", "params": {"script": script, "run_as": "nobody"}}
    doc["params"]["success_codes"] = [1]  # grep -c finds nothing: 1
    inst = await here.run(doc, ["pc-1"])
    assert inst["status"] == "succeeded", inst
    user, group, env, where, private, secrets = inst["output"].splitlines()
    entry = pwd.getpwnam("nobody")
    assert (user, env) == ("nobody", f"{entry.pw_dir} nobody nobody")
    assert group == grp.getgrgid(entry.pw_gid).gr_name
    assert where.startswith("/") and os.path.basename(where).startswith("taskfleet-")
    assert private == "700 nobody", "the script's folder is not nobody's own private one"
    assert secrets == "0"

    folder = tmp_path / "work here"
    folder.mkdir()
    inst = await here.run(
        {
            "name": "pwd",
            "type": "run-script",
            "params": {"script": "pwd", "working_dir": str(folder)},
        },
        ["pc-1"],
    )
    assert inst["status"] == "succeeded" and inst["output"].strip() == str(folder), inst

    inst = await here.run(
        {
            "name": "ghost",
            "type": "run-script",
            "params": {"script": "id", "run_as": "no-such-user"},
        },
        ["pc-1"],
    )
    assert inst["status"] == "failed"
    assert inst["reason"] == "run_as 'no-such-user': no such user on this computer"
    gone = str(tmp_path / "gone")
    inst = await here.run(
        {"name": "lost", "type": "run-script", "params": {"script": "pwd", "working_dir": gone}},
        ["pc-1"],
    )
    assert inst["status"] == "failed"
    assert (
        inst["reason"]
        == f"working_dir {gone!r} does not exist on this computer (or is not a folder)"
    )


async def test_a_script_stopped_by_the_agents_sigterm_keeps_its_output(tmp_path, fleet):
    """SIGTERM to a real agent mid-script: the result stored at its stop carries what the script
    had printed, and the next start reports it ("agent restarted while the task ran")."""
    await fleet.server()
    agent = await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])
    printed = tmp_path / "printed"
    doc = tmp_path / "long.toml"
    doc.write_text(task_doc("long", f"echo start; touch '{printed}'; sleep 120", timeout_s=600))
    assert (await fleet.cli("task", "add", str(doc)))[0] == 0
    code, out, err = await fleet.cli("run", "long", "--computer", "pc-1", "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]

    async def has_printed() -> bool:
        return printed.exists()

    await until(has_printed, "the script to print 'start'")
    agent.kill(signal.SIGTERM)
    assert await agent.wait(20) == 0
    await fleet.agent("pc-1", enrol=False)
    async with fleet.admin() as c:
        final = await wait_run(c, run_id, timeout_s=60)
    [instance] = final["instances"]
    assert (instance["status"], instance["reason"]) == (
        "failed",
        "agent restarted while the task ran",
    ), instance
    assert instance["output"] == "start\n"


async def test_run_as_is_refused_at_save_when_malformed(here):
    """run_as must be a user name and working_dir an absolute path: `task add` lists both."""
    bad = {"script": "true", "run_as": "root; rm -rf /", "working_dir": "relative/dir"}
    async with here.admin() as c:
        with pytest.raises(Exception) as info:
            await c.call("task.add", document={"name": "bad", "type": "run-script", "params": bad})
    assert "params.run_as: must match" in str(info.value)
    assert "params.working_dir: must match" in str(info.value)
