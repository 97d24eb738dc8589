"""Running the roles as services: started from a configuration file alone, the systemd unit
``install-service`` writes, the notify protocol (READY, WATCHDOG, STOPPING) over a real
datagram socket, and the clean stop on SIGTERM (exit 0, connections closed with 1001)."""

from __future__ import annotations

import asyncio
import json
import pwd
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import task_doc, until, wait_run

STOP_BOUND_S = 20.0
"""How long a role may take to stop on SIGTERM before the test calls it hung."""


def _taskfleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


# -- a role started from its configuration file alone ---------------------------------------


async def test_server_and_agent_start_from_their_configuration_files_alone(
    tmp_path, fleet, monkeypatch
):
    """The NS from ``/etc/taskfleet/server.toml`` (moved by TASKFLEET_CONFIG_DIR), with no
    flag at all; an agent from ``--config FILE`` alone, its enrolment token by file path; the
    agent comes online, so every setting it needed came from the file."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "server.toml").write_text(
        f'data = "{tmp_path / "ns"}"\nlisten = "127.0.0.1:0"\nname = "ns-from-file"\n'
        'max_handshakes = 64\n[smtp]\nfrom = "fleet@example.org"\n'
    )
    monkeypatch.setenv("TASKFLEET_CONFIG_DIR", str(etc))
    fleet.ns = await fleet._proc("ns", ["server"]).start()
    assert fleet.ns.url.startswith("wss://127.0.0.1:")
    fleet.admin_token = (tmp_path / "ns" / "admin.token").read_text().strip()
    async with fleet.admin() as c:
        fleet.enrol_token = (await c.call("tokens.create", ttl_s=600, uses=5))["token"]

    token_file = tmp_path / "enrol.token"
    token_file.write_text(fleet.enrol_token + "\n")
    token_file.chmod(0o600)
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(
        f'server = "{fleet.ns.url}"\ndata = "{tmp_path / "pc-1"}"\nname = "pc-1"\n'
        f'server_fingerprint = "{fleet.fingerprint}"\nenrol_token_file = "{token_file}"\n'
        "concurrency = 2\n"
    )
    await fleet._proc("pc-1", ["agent", "--config", str(agent_toml)]).start(wait_ready=False)
    rows = await fleet.wait_online(["pc-1"])
    assert [r["name"] for r in rows] == ["pc-1"]

    shown = _taskfleet("agent", "--config", str(agent_toml), "--print-config", "--concurrency", "3")
    assert shown.returncode == 0, shown.stderr
    assert 'name = "pc-1"  # file' in shown.stdout
    assert "concurrency = 3  # flag" in shown.stdout
    assert fleet.enrol_token not in shown.stdout


def test_a_required_flag_missing_from_flags_and_file_is_still_a_usage_error(tmp_path):
    (tmp_path / "agent.toml").write_text('name = "pc-1"\n')
    done = _taskfleet("agent", "--config", str(tmp_path / "agent.toml"))
    assert done.returncode == 2
    assert "the following arguments are required: --server, --data" in done.stderr


def test_an_unknown_key_stops_the_role_before_it_starts(tmp_path):
    (tmp_path / "server.toml").write_text(f'data = "{tmp_path / "ns"}"\nlisen = "0.0.0.0:1"\n')
    done = _taskfleet("server", "--config", str(tmp_path / "server.toml"))
    assert done.returncode == 2
    assert "unknown key lisen" in done.stderr and str(tmp_path / "server.toml") in done.stderr
    assert "did you mean listen?" in done.stderr
    assert not (tmp_path / "ns").exists()  # nothing was started or written


# -- install-service -------------------------------------------------------------------------


def _config(tmp_path: Path, role: str, text: str) -> Path:
    path = tmp_path / f"{role}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("role", ["server", "taskserver"])
def test_the_unit_of_a_listening_role_is_sandboxed_to_its_data_folder(tmp_path, role):
    config = _config(tmp_path, role, 'data = "/var/lib/taskfleet/x"\nlisten = "0.0.0.0:8470"\n')
    done = _taskfleet("install-service", role, "--config", str(config), "--print")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start.endswith(f" {role} --config {config}")
    assert exec_start.split("=", 1)[1].startswith("/")  # an absolute command
    for directive in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "Restart=on-failure",
        "RestartPreventExitStatus=2 5",
        "User=taskfleet",
        "Group=taskfleet",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/taskfleet/x",
        "StateDirectory=taskfleet/x",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "LimitNOFILE=1048576",
        "CapabilityBoundingSet=",
        "WantedBy=multi-user.target",
    ):
        assert directive in lines, f"{directive} missing from:\n{done.stdout}"
    assert not any(line.startswith("MemoryDenyWriteExecute") for line in lines)


def test_the_agents_unit_runs_it_as_root_without_the_sandbox(tmp_path):
    config = _config(
        tmp_path, "agent", 'server = "wss://ns.example.org:8470"\ndata = "/srv/taskfleet agent"\n'
    )
    done = _taskfleet("install-service", "agent", "--config", str(config), "--print")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for directive in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "KillMode=mixed"):
        assert directive in lines
    for absent in ("User=", "ProtectSystem=", "NoNewPrivileges=", "PrivateTmp=", "ProtectHome="):
        assert not any(line.startswith(absent) for line in lines), absent


def test_install_service_writes_the_unit_and_says_what_to_run(tmp_path):
    config = _config(tmp_path, "server", f'data = "{tmp_path / "data"}"\nlisten = "0.0.0.0:443"\n')
    units = tmp_path / "units"
    units.mkdir()
    done = _taskfleet(
        "install-service", "server", "--config", str(config), "--unit-dir", str(units)
    )
    assert done.returncode == 0, done.stderr
    unit = units / "taskfleet-server.service"
    text = unit.read_text()
    assert f"ReadWritePaths={tmp_path / 'data'}" in text.splitlines()
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text.splitlines()  # port 443
    assert unit.stat().st_mode & 0o777 == 0o644
    assert "systemctl daemon-reload && systemctl enable --now taskfleet-server" in done.stdout


def test_install_service_refuses_a_configuration_without_a_data_folder(tmp_path):
    config = _config(tmp_path, "taskserver", 'server = "wss://ns:8470"\n')
    done = _taskfleet(
        "install-service", "taskserver", "--config", str(config), "--unit-dir", str(tmp_path)
    )
    assert done.returncode == 2
    assert "no data key" in done.stderr and "ReadWritePaths" in done.stderr
    assert not (tmp_path / "taskfleet-taskserver.service").exists()


# -- the notify protocol ---------------------------------------------------------------------


class NotifySocket:
    """The socket systemd would give: AF_UNIX datagrams, read here one message at a time."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.path = str(path)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    async def next(self, timeout_s: float = 30.0) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout_s)
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(message)
        return message

    async def until(self, key: str, timeout_s: float = 30.0) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            message = await self.next(max(0.01, deadline - loop.time()))
            if key in message:
                return message


@pytest.fixture
def notify(tmp_path):
    """A notify socket in the test's folder; ``NOTIFY_SOCKET=notify.path`` for a role to use it."""
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.sock.close()


async def test_a_server_under_systemd_notifies_ready_watchdog_and_stopping(
    tmp_path, fleet, notify, monkeypatch
):
    """READY=1 comes once the listener accepts (a connection to it right then succeeds), with
    the process's pid; WATCHDOG=1 pings follow at half of WATCHDOG_USEC; SIGTERM brings
    STOPPING=1 and exit 0."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    ns = await fleet._proc(
        "ns", ["server", "--data", str(tmp_path / "ns"), "--listen", "127.0.0.1:0"]
    ).start(wait_ready=False)
    assert ns.proc is not None
    ready = await notify.until("READY")
    assert ready["READY"] == "1" and ready["MAINPID"] == str(ns.proc.pid)
    url = ready["STATUS"].split("url=", 1)[1].split()[0]
    host, port = url.removeprefix("wss://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))  # the listener is up
    writer.close()
    assert not any("WATCHDOG" in m for m in notify.messages)  # no ping before READY

    for _ in range(3):
        assert (await notify.until("WATCHDOG"))["WATCHDOG"] == "1"

    ns.kill(signal.SIGTERM)
    assert (await notify.until("STOPPING"))["STOPPING"] == "1"
    assert await ns.wait(STOP_BOUND_S) == 0


async def test_watchdog_pings_are_for_the_named_process_only(tmp_path, fleet, notify, monkeypatch):
    """WATCHDOG_PID naming another process (a variable inherited by mistake): READY, no pings."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    ns = await fleet._proc(
        "ns", ["server", "--data", str(tmp_path / "ns"), "--listen", "127.0.0.1:0"]
    ).start()
    await notify.until("READY")
    ns.kill(signal.SIGTERM)
    await notify.until("STOPPING")
    assert not any("WATCHDOG" in m for m in notify.messages)
    assert await ns.wait(STOP_BOUND_S) == 0


# -- SIGTERM ---------------------------------------------------------------------------------


async def test_sigterm_stops_the_ns_with_exit_0_closing_its_connections_with_1001(fleet):
    """An NS with an agent and a bare WebSocket client connected: SIGTERM, exit 0, and both
    peers are told 1001 (going away), not a dropped connection."""
    ns = await fleet.server()
    agent = await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # the raw client only watches how it is closed
    async with ws_connect(ns.url, ssl=insecure) as raw:
        ns.kill(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(raw.recv(), STOP_BOUND_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert await ns.wait(STOP_BOUND_S) == 0

    async def agent_told() -> bool:
        return "1001" in agent.log()

    await until(agent_told, "the agent to log the NS going away (1001)", STOP_BOUND_S)


async def test_sigterm_stops_an_agent_running_a_script_and_the_instance_is_reported_after_restart(
    tmp_path, fleet
):
    """SIGTERM to an agent in the middle of a script: exit 0 within a bound; at its next start
    the instance is reported ``failed`` ("agent restarted while the task ran", docs/protocol.md),
    so the run ends instead of waiting for its time limit."""
    await fleet.server()
    agent = await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])
    doc = tmp_path / "long.toml"
    doc.write_text(task_doc("long", "sleep 120", timeout_s=600))
    assert (await fleet.cli("task", "add", str(doc)))[0] == 0
    code, out, err = await fleet.cli("run", "long", "--computer", "pc-1", "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    async with fleet.admin() as c:

        async def running() -> bool:
            run = await c.call("run.show", run_id=run_id)
            return [i["status"] for i in run["instances"]] == ["running"]

        await until(running, "the script running on pc-1")
        agent.kill(signal.SIGTERM)
        assert await agent.wait(STOP_BOUND_S) == 0

        await fleet.agent("pc-1", enrol=False)
        final = await wait_run(c, run_id, timeout_s=60)
    [instance] = final["instances"]
    assert instance["status"] == "failed", {k: instance.get(k) for k in ("status", "reason", "rc")}
    assert instance["reason"] == "agent restarted while the task ran"


async def test_sigterm_stops_a_taskserver_with_exit_0_telling_its_agents_1001(fleet):
    await fleet.server()
    ts = await fleet.taskserver("ts-1")
    agent = await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])

    async def behind_the_ts() -> bool:
        return '"via": "ts-1"' in agent.log() or "via=ts-1" in agent.log()

    await until(behind_the_ts, "pc-1 connected through ts-1")
    assert "1001" not in agent.log()
    ts.kill(signal.SIGTERM)
    assert await ts.wait(STOP_BOUND_S) == 0

    async def agent_told() -> bool:
        return "1001" in agent.log()

    await until(agent_told, "the agent to log its TS going away (1001)", STOP_BOUND_S)


async def test_an_agent_under_systemd_is_ready_once_connected_and_notifies_its_stop(
    fleet, notify, monkeypatch
):
    """The agent's READY comes with its first connection (STATUS says so), and SIGTERM brings
    STOPPING=1 and exit 0."""
    await fleet.server()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)  # for the agent only
    agent = await fleet.agent("pc-1")
    ready = await notify.until("READY")
    assert "pc-1 connected to wss://" in ready["STATUS"]
    await fleet.wait_online(["pc-1"])
    agent.kill(signal.SIGTERM)
    assert (await notify.until("STOPPING"))["STOPPING"] == "1"
    assert await agent.wait(STOP_BOUND_S) == 0


async def test_sigterm_during_a_client_job_step_resumes_the_job_at_the_next_start(tmp_path, fleet):
    """SIGTERM in the middle of a client job's step: exit 0; at the next start that step is
    ``failed`` ("agent restarted while this step ran") and the job goes on, as after a crash."""
    marks = tmp_path / "marks"
    marks.mkdir()
    await fleet.server()
    agent = await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])
    for name, script in (
        ("s1", f"echo 1 >> {marks}/s1\nsleep 60"),
        ("s2", f"echo 2 >> {marks}/s2"),
    ):
        (tmp_path / f"{name}.toml").write_text(task_doc(name, script))
        assert (await fleet.cli("task", "add", str(tmp_path / f"{name}.toml")))[0] == 0
    (tmp_path / "job.toml").write_text(
        'name = "two"\ntype = "client-job"\n[[steps]]\ntask = "s1"\non_failure = "continue"\n'
        '[[steps]]\ntask = "s2"\n'
    )
    assert (await fleet.cli("job", "add", str(tmp_path / "job.toml")))[0] == 0
    async with fleet.admin() as c:
        run_id = (await c.call("run.start", task="two", computers=["pc-1"]))["run_id"]

        async def s1_running() -> bool:
            return (marks / "s1").exists()

        await until(s1_running, "step s1 running")
        agent.kill(signal.SIGTERM)
        assert await agent.wait(STOP_BOUND_S) == 0
        await fleet.agent("pc-1", enrol=False)
        final = await wait_run(c, run_id, 60)
    steps = {i["step"]: i for i in final["instances"] if i["step"]}
    assert steps["s1"]["status"] == "failed", steps["s1"]
    assert steps["s1"]["reason"] == "agent restarted while this step ran"
    assert steps["s2"]["status"] == "succeeded"
    assert (marks / "s1").read_text() == "1\n"  # not run again


def test_install_service_warns_of_paths_the_sandbox_hides_and_a_missing_user(tmp_path):
    """A configuration under /tmp (this test's) and a data folder there: the NS's unit would hide
    them (PrivateTmp=yes) and fail only at `systemctl start`; install-service says so now."""
    config = _config(tmp_path, "server", f'data = "{tmp_path}/ns"\n')
    done = _taskfleet("install-service", "server", "--config", str(config), "--print")
    assert done.returncode == 0, done.stderr
    assert (
        f"the configuration is {config}, which the unit's ProtectHome=/PrivateTmp=" in done.stderr
    )
    assert f"the data folder {tmp_path}/ns is hidden from the service" in done.stderr
    try:
        pwd.getpwnam("taskfleet")
    except KeyError:
        assert "there is no user taskfleet" in done.stderr
    agent = _config(tmp_path, "agent", f'data = "{tmp_path}/a"\nserver = "wss://127.0.0.1:1"\n')
    done = _taskfleet("install-service", "agent", "--config", str(agent), "--print")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr  # no sandbox there
