"""taskfleet beside its peers: the same workloads on Salt and Ansible, in the same run.

    python bench/peers.py --salt --ansible --json-out peers.json [--rounds 5] [--salt-version 3008]

Every system runs as real processes on loopback on this machine, one after the other (never two
at once, so none pays for another's idle work):

1. ``true`` on 20 computers. taskfleet: an NS, one TS and 20 ``taskfleet agent`` processes (TLS,
   the NS pinned by fingerprint, each agent with its own data folder), a saved ``run-script``
   task ``true``; timed from ``run.start`` to the last result stored (the NS ends a run only
   once its last result is stored), and the wall time of ``taskfleet run true --all --wait`` as
   a process. Salt: ``salt-master`` and 20 ``salt-minion`` processes, each minion with its own
   id, configuration, pki and cache folder, keys accepted automatically;
   ``LocalClient.cmd('*', 'cmd.run', ['true'])`` timed in a Python process of Salt's own venv,
   and the wall time of ``salt '*' cmd.run true``.
2. Three steps of ``true`` on 100 computers. taskfleet: 100 agent processes, a server job of
   three ``run-script`` steps (each a barrier: every computer ends step 1 before step 2 starts)
   and one server task that writes a line in the NS's log (a server job may not hold only client
   tasks). Ansible: 100 inventory hosts with ``ansible_connection=local``, 50 forks, a playbook
   of three ``command: true`` tasks without facts (the default linear strategy: a barrier per
   task, as taskfleet's steps).
3. The floor for the part no orchestrator can skip: ``asyncio.create_subprocess_exec`` of
   ``true`` (and of ``sh -c true``, what a ``run-script`` starts) from this process, one at a
   time and 20/100 at once.

Each figure is the median of ``--rounds`` rounds after one warm-up round; the spread (min-max)
is printed beside it. Salt and Ansible are installed from the package registry with pip into
their own virtual environments under ``--cache`` (default ``~/.cache/taskfleet-bench``), once:
a second run reuses them. Every process this bench starts is in a process group of its own and
is ended with it (SIGTERM, then SIGKILL), on error too; ``PR_SET_PDEATHSIG`` ends the direct
children should the bench be killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/peers.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

from admin.client import AdminClient  # noqa: E402
from bench.fleet import one_run, until  # noqa: E402
from bench.procs import _LIVE_PIDS, ServerProc, _child_env, _die_with_parent  # noqa: E402
from runtime.tls import ClientTrust  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskfleet-bench"
TRUE_TASK = (
    'name = "true"\ntype = "run-script"\ntimeout_s = 120\n[params]\n'
    "interpreter = \"sh\"\nscript = '''\ntrue\n'''\n"
)
LOG_TASK = 'name = "peers-log"\ntype = "write-server-log"\n[params]\nmessage = "peers %RUNID%"\n'
TRUE3_JOB = (
    'name = "true3"\ntype = "server-job"\n'
    + "".join(f'[[steps]]\nid = "true{i}"\ntask = "true"\n' for i in (1, 2, 3))
    + '[[steps]]\nid = "log"\ntask = "peers-log"\n'
)
PLAYBOOK = """- hosts: all
  gather_facts: false
  tasks:
    - command: "true"
    - command: "true"
    - command: "true"
"""
SALT_DRIVER = r"""
import json, sys, time
import salt.client, salt.version
conf, n, rounds, ready_timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
client = salt.client.LocalClient(c_path=conf)
deadline = time.monotonic() + ready_timeout
while True:
    try:
        seen = client.cmd("*", "test.ping", timeout=5)
    except Exception:  # the master still busy with the minions' keys: ask again
        seen = {}
    if len(seen) >= n:
        break
    if time.monotonic() > deadline:
        sys.exit(f"only {len(seen)} of {n} minions answered in {ready_timeout:g} s")
    time.sleep(0.2)
ready_at = time.time()
times, bad = [], 0
for _ in range(rounds + 1):
    t0 = time.perf_counter()
    out = client.cmd("*", "cmd.run", ["true"], timeout=120)
    times.append(time.perf_counter() - t0)
    bad += sum(1 for v in out.values() if v != "") + (n - len(out))
print(json.dumps({"version": salt.version.__version__, "ready_at": ready_at,
                  "warmup_s": times[0], "times_s": times[1:], "bad": bad}))
"""

# -- processes ----------------------------------------------------------------------------


class Group:
    """Child processes, each leading a process group of its own: ended with all it started."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def spawn(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None, stdout: Any = None
    ) -> asyncio.subprocess.Process:
        with open(log, "ab") as fh:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=stdout if stdout is not None else fh,
                stderr=fh,
                env={**_child_env(), **(env or {})},
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        _LIVE_PIDS.add(proc.pid)
        self.procs.append(proc)
        return proc

    def rss_mib(self, proc: asyncio.subprocess.Process) -> float:
        """Resident memory of the process and everything in its process group."""
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    pgrp = int(fh.read().rsplit(")", 1)[1].split()[2])
                if pgrp == proc.pid:
                    with open(f"/proc/{entry}/status", encoding="ascii") as fh:
                        for line in fh:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1])
        return total / 1024

    async def close(self) -> None:
        """SIGTERM every group, wait up to 10 s, SIGKILL what is left (only our own groups)."""
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.wait(), max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            if p.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(p.wait(), 10)
            _LIVE_PIDS.discard(p.pid)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "all": values,
    }


async def timed_process(
    argv: list[str], env: dict[str, str], log: Path, group: Group
) -> tuple[float, int, str]:
    """Wall time of one command run as a process; (seconds, exit code, its stdout)."""
    t0 = time.perf_counter()
    proc = await group.spawn(argv, log, env, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    _LIVE_PIDS.discard(proc.pid)
    group.procs.remove(proc)
    return time.perf_counter() - t0, int(proc.returncode or 0), out.decode(errors="replace")


# -- the peers' virtual environments ------------------------------------------------------------


def venv(name: str, requirement: str, cache: Path) -> Path:
    """A virtual environment holding ``requirement`` under ``cache``, made once; its bin folder."""
    where = cache / name
    marker = where / ".installed"
    if marker.exists() and marker.read_text() == requirement:
        return where / "bin"
    print(f"peers: installing {requirement} into {where} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(where)], check=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, requirement], check=True)
    marker.write_text(requirement)
    return where / "bin"


def pip_version(bin_dir: Path, package: str) -> str:
    out = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "show", package],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:")), "?"
    )


# -- taskfleet ----------------------------------------------------------------------------


class Taskfleet:
    """An NS, one TS and real agent processes in one temporary folder."""

    def __init__(self, root: Path, group: Group):
        self.root = root
        self.group = group
        self.ns = ServerProc(
            "ns", ["server", "--data", str(root / "ns"), "--listen", "127.0.0.1:0"], root / "ns.log"
        )
        self.ts: ServerProc | None = None
        self.admin_token = ""
        self.enrol = ""
        self.agents: list[asyncio.subprocess.Process] = []

    def client(self) -> AdminClient:
        trust = ClientTrust(fingerprint=self.ns.fingerprint)
        return AdminClient(self.ns.url, self.admin_token, trust, identity="peers")

    async def start(self) -> None:
        await self.ns.start()
        self.admin_token = (self.root / "ns" / "admin.token").read_text().strip()
        async with self.client() as c:
            self.enrol = (await c.call("tokens.create", ttl_s=86_400, uses=1000))["token"]
            ts_enrol = (await c.call("tokens.create", ttl_s=86_400, uses=2, role="taskserver"))[
                "token"
            ]
            ts_args = [
                "taskserver", "--server", self.ns.url, "--data", str(self.root / "ts-1"),
                "--listen", "127.0.0.1:0", "--name", "ts-1", "--enrol-token", ts_enrol,
                "--server-fingerprint", self.ns.fingerprint,
            ]  # fmt: skip
            self.ts = ServerProc("ts-1", ts_args, self.root / "ts-1.log")
            await self.ts.start()

            async def ts_online() -> bool:
                rows = await c.call("taskservers.list")
                return any(r["name"] == "ts-1" and r["online"] for r in rows)

            await until(ts_online, "ts-1 online at the NS", 30, 0.05)
            for text in (TRUE_TASK, LOG_TASK):
                await c.call("task.add", text=text, filename="peers.toml")
            await c.call("job.add", text=TRUE3_JOB, filename="peers.toml")

    async def grow(self, n: int, timeout_s: float) -> float:
        """Start agent processes up to ``n`` in all; seconds until the NS lists all online."""
        t0 = time.perf_counter()
        for i in range(len(self.agents), n):
            name = f"pc-{i:03d}"
            argv = [
                sys.executable, "-m", "admin", "agent", "--server", self.ns.url,
                "--data", str(self.root / name), "--name", name,
                "--server-fingerprint", self.ns.fingerprint,
            ]  # fmt: skip
            env = {"TASKFLEET_ENROL_TOKEN": self.enrol}
            self.agents.append(await self.group.spawn(argv, self.root / f"{name}.log", env))
        async with self.client() as c:

            async def all_online() -> bool:
                for p in self.agents:
                    if p.returncode is not None:
                        raise RuntimeError(f"an agent exited ({p.returncode}); see {self.root}")
                rows = await c.call("computers.list")
                return sum(1 for r in rows if r["online"] and r["taskserver"] == "ts-1") >= n

            await until(all_online, f"{n} agents online", timeout_s, 0.1)
        return time.perf_counter() - t0

    async def runs(self, name: str, rounds: int) -> dict[str, Any]:
        """``rounds`` runs of ``name`` on every computer (after one warm-up): the server's time
        (run created to ended: the last result stored), the time this client saw, and the CPU
        seconds per run of the NS, the TS, the agents and the scripts they started (where a
        step's time goes on a machine of two CPUs)."""
        server, seen = [], []
        cpu: dict[str, float] = {}
        procs = {"ns": self.ns, "ts-1": self.ts} if self.ts else {"ns": self.ns}
        async with self.client() as c:
            for i in range(rounds + 1):
                agents0 = self.agents_cpu_s()
                r = await one_run(c, name, 600, procs)
                if not r["ok"]:
                    raise RuntimeError(f"taskfleet run of {name} did not succeed: {r['statuses']}")
                if i:
                    server.append(r["server_s"])
                    seen.append(r["end_s"])
                    agents1 = self.agents_cpu_s()
                    agents, scripts = agents1[0] - agents0[0], agents1[1] - agents0[1]
                    # machine_busy_s counts every process: less ours, what others took meanwhile.
                    others = max(0.0, r["cpu_s"]["others"] - agents - scripts)
                    for key, value in (
                        ("ns", r["cpu_s"]["ns"]),
                        ("ts", r["cpu_s"]["ts"]),
                        ("agents", agents),
                        ("scripts", scripts),
                        ("others", others),
                    ):
                        cpu[key] = cpu.get(key, 0.0) + value / rounds
                await asyncio.sleep(0.3)
        return {"server_s": spread(server), "client_s": spread(seen), "cpu_per_run_s": cpu}

    def agents_cpu_s(self) -> tuple[float, float]:
        """CPU seconds the agent processes used so far, and their reaped children (scripts)."""
        own = children = 0
        for p in self.agents:
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{p.pid}/stat", encoding="ascii") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                own += int(fields[11]) + int(fields[12])
                children += int(fields[13]) + int(fields[14])
        tick = os.sysconf("SC_CLK_TCK")
        return own / tick, children / tick

    async def cli(self, name: str, rounds: int) -> dict[str, Any]:
        """Wall time of ``taskfleet run NAME --all --wait`` as a process (token in the env)."""
        argv = [
            sys.executable, "-m", "admin", "run", name, "--all", "--wait",
            "--server", self.ns.url, "--server-fingerprint", self.ns.fingerprint,
        ]  # fmt: skip
        times = []
        for i in range(rounds + 1):
            env = {"TASKFLEET_TOKEN": self.admin_token}
            t, code, _ = await timed_process(argv, env, self.root / "cli.log", self.group)
            if code != 0:
                raise RuntimeError(
                    f"taskfleet run {name} --wait exited {code}; see {self.root}/cli.log"
                )
            if i:
                times.append(t)
            await asyncio.sleep(0.3)
        return spread(times)

    def memory_mib(self) -> dict[str, float]:
        return {
            "ns": self.ns.rss_kib() / 1024,
            "ts": self.ts.rss_kib() / 1024 if self.ts else 0.0,
            "agent": statistics.median(self.group.rss_mib(p) for p in self.agents),
        }

    async def stop(self) -> None:
        await self.group.close()
        if self.ts:
            await self.ts.stop()
        await self.ns.stop()


async def taskfleet_true20(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    group = Group()
    tf = Taskfleet(root / "tf20", group)
    try:
        (root / "tf20").mkdir()
        await tf.start()
        connect = await tf.grow(args.computers, 180)
        print(f"peers: taskfleet: {args.computers} agents online in {connect:.1f} s", flush=True)
        result = await tf.runs("true", args.rounds)
        result["cli_s"] = await tf.cli("true", args.rounds)
        result["connect_s"] = connect
        result["memory_mib"] = tf.memory_mib()
        return result
    finally:
        await tf.stop()


async def taskfleet_true3(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    group = Group()
    tf = Taskfleet(root / "tf100", group)
    try:
        (root / "tf100").mkdir()
        await tf.start()
        connect = await tf.grow(args.hosts, 600)
        print(f"peers: taskfleet: {args.hosts} agents online in {connect:.1f} s", flush=True)
        result = await tf.runs("true3", args.rounds)
        result["cli_s"] = await tf.cli("true3", args.rounds)
        result["connect_s"] = connect
        return result
    finally:
        await tf.stop()


# -- Salt ---------------------------------------------------------------------------------


def _salt_configs(root: Path, n: int) -> tuple[Path, list[Path], int]:
    publish, ret = free_port(), free_port()
    common = "user: root\nlog_level_logfile: warning\n"
    master = root / "master"
    (master / "conf").mkdir(parents=True)
    (master / "conf" / "master").write_text(
        f"root_dir: {master}\npki_dir: {master}/pki\ncachedir: {master}/cache\n"
        f"sock_dir: {master}/sock\nlog_file: {master}/master.log\ninterface: 127.0.0.1\n"
        f"publish_port: {publish}\nret_port: {ret}\nauto_accept: true\n{common}"
    )
    minions = []
    for i in range(n):
        m = root / f"minion-{i:02d}"
        (m / "conf").mkdir(parents=True)
        (m / "conf" / "minion").write_text(
            f"id: minion-{i:02d}\nroot_dir: {m}\npki_dir: {m}/pki\ncachedir: {m}/cache\n"
            f"sock_dir: {m}/sock\nlog_file: {m}/minion.log\nmaster: 127.0.0.1\n"
            f"master_port: {ret}\npublish_port: {publish}\n{common}"
        )
        minions.append(m / "conf")
    return master / "conf", minions, ret


async def salt_true20(args: argparse.Namespace, root: Path, bin_dir: Path) -> dict[str, Any]:
    group = Group()
    root = root / f"salt{bin_dir.parent.name}"
    master_conf, minion_confs, ret_port = _salt_configs(root, args.computers)
    try:
        await group.spawn(
            [str(bin_dir / "salt-master"), "-c", str(master_conf), "-l", "warning"],
            root / "master.out",
        )
        await until(lambda: _listening(ret_port), "salt-master listening", 60, 0.1)
        t0 = time.time()
        minions = [
            await group.spawn(
                [str(bin_dir / "salt-minion"), "-c", str(c), "-l", "warning"],
                c.parent / "minion.out",
            )
            for c in minion_confs
        ]
        driver = root / "driver.py"
        driver.write_text(SALT_DRIVER)
        argv = [
            str(bin_dir / "python"),
            str(driver),
            str(master_conf / "master"),
            str(args.computers),
            str(args.rounds),
            "300",
        ]
        t, code, out = await timed_process(argv, {}, root / "driver.log", group)
        if code != 0:
            raise RuntimeError(f"Salt's LocalClient driver exited {code}: see {root}/driver.log")
        found = json.loads(out.strip().splitlines()[-1])
        result: dict[str, Any] = {
            "version": found["version"],
            "connect_s": found["ready_at"] - t0,
            "localclient_s": spread(found["times_s"]),
            "bad_returns": found["bad"],
        }
        cli = [
            str(bin_dir / "salt"),
            "-c",
            str(master_conf),
            "*",
            "cmd.run",
            '"true"',
        ]  # quoted: a bare true is YAML for True
        times = []
        for i in range(args.rounds + 1):
            t, code, out = await timed_process(cli, {}, root / "cli.log", group)
            if code != 0 or out.count("minion-") != args.computers:
                (root / "cli.out").write_text(out)
                raise RuntimeError(f"salt '*' cmd.run true exited {code}; see {root}/cli.out")
            if i:
                times.append(t)
        result["cli_s"] = spread(times)
        result["memory_mib"] = {
            "master": group.rss_mib(group.procs[0]),
            "minion": statistics.median(group.rss_mib(p) for p in minions),
        }
        return result
    finally:
        await group.close()


# -- Ansible ------------------------------------------------------------------------------


async def ansible_true3(args: argparse.Namespace, root: Path, bin_dir: Path) -> dict[str, Any]:
    group = Group()
    root = root / "ansible"
    root.mkdir()
    py = bin_dir / "python"
    hosts = "".join(
        f"host-{i:03d} ansible_connection=local ansible_python_interpreter={py}\n"
        for i in range(args.hosts)
    )
    (root / "hosts.ini").write_text(f"[all]\n{hosts}")
    (root / "play.yml").write_text(PLAYBOOK)
    env = {
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(root / "tmp"),
        "ANSIBLE_REMOTE_TMP": str(root / "remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": str(args.forks),
    }
    argv = [
        str(bin_dir / "ansible-playbook"),
        "-i",
        str(root / "hosts.ini"),
        "-f",
        str(args.forks),
        str(root / "play.yml"),
    ]
    times = []
    try:
        for i in range(args.ansible_rounds + 1):
            t, code, out = await timed_process(argv, env, root / "ansible.log", group)
            ok = sum(1 for ln in out.splitlines() if "ok=3" in ln and "failed=0" in ln)
            if code != 0 or ok != args.hosts:
                (root / "last.out").write_text(out)
                raise RuntimeError(
                    f"ansible-playbook exited {code}, {ok} hosts ok; see {root}/last.out"
                )
            print(f"peers: ansible round {i}: {t:.1f} s", flush=True)
            if i:
                times.append(t)
        return {"version": pip_version(bin_dir, "ansible-core"), "playbook_s": spread(times)}
    finally:
        await group.close()


# -- the floor: a bare process start --------------------------------------------------------


async def spawn_floor(rounds: int, counts: tuple[int, ...]) -> dict[str, Any]:
    """What starting ``true`` (and ``sh -c true``) costs from asyncio on this machine."""

    async def one(*argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(*argv)
        await proc.wait()

    async def timed(n: int, *argv: str) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(*argv) for _ in range(n)))
        return time.perf_counter() - t0

    out: dict[str, Any] = {}
    for label, argv in (("true", ("true",)), ("sh", ("sh", "-c", "true"))):
        for n in counts:
            await timed(n, *argv)
            out[f"{label}x{n}_s"] = spread([await timed(n, *argv) for _ in range(max(rounds, 9))])
    return out


# -- the report ---------------------------------------------------------------------------


def _ms(s: dict[str, Any]) -> str:
    return f"{s['median'] * 1000:.0f} ms ({s['min'] * 1000:.0f}-{s['max'] * 1000:.0f})"


def _sec(s: dict[str, Any]) -> str:
    return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _ratio(peer: dict[str, Any], ours: dict[str, Any], digits: int = 1) -> str:
    return f"{peer['median'] / ours['median']:.{digits}f}×"


def _salt_rows(n: int, tf: dict[str, Any], salt: dict[str, Any]) -> list[str]:
    mem, smem = tf["memory_mib"], salt["memory_mib"]
    ours_mem = f"NS {mem['ns']:.0f} MiB, TS {mem['ts']:.0f} MiB, agent {mem['agent']:.0f} MiB"
    connect = f"{salt['connect_s'] / tf['connect_s']:.1f}×"
    return [
        _row(
            f"`true` on {n}, server-side",
            _ms(tf["server_s"]),
            f"Salt {salt['version']} `LocalClient.cmd`: {_ms(salt['localclient_s'])}",
            _ratio(salt["localclient_s"], tf["server_s"]),
        ),
        _row(
            "same, CLI wall",
            _ms(tf["cli_s"]),
            f"`salt '*' cmd.run true`: {_ms(salt['cli_s'])}",
            _ratio(salt["cli_s"], tf["cli_s"]),
        ),
        _row(
            "all connected after start",
            f"{tf['connect_s']:.1f} s",
            f"{n} minions: {salt['connect_s']:.1f} s",
            connect,
        ),
        _row(
            "memory",
            ours_mem,
            f"master {smem['master']:.0f} MiB, minion {smem['minion']:.0f} MiB",
            "",
        ),
    ]


def _floor_rows(r: dict[str, Any], fl: dict[str, Any]) -> list[str]:
    n, h = r["computers"], r["hosts"]
    at_n, at_h = fl[f"shx{n}_s"], fl[f"shx{h}_s"]
    rows = [
        _row(
            "floor: `create_subprocess_exec` `sh -c true`",
            f"×1 {_ms(fl['shx1_s'])}; {n} at once {_ms(at_n)}; {h} at once {_ms(at_h)}",
            f"(`true`: ×1 {_ms(fl['truex1_s'])})",
            "",
        )
    ]
    if tf20 := r.get("taskfleet_true20"):
        ratio = tf20["server_s"]["median"] / at_n["median"]
        rows.append(
            _row(f"taskfleet ÷ floor, `true` on {n}", f"{ratio:.1f}× {n} starts at once", "", "")
        )
    if tf100 := r.get("taskfleet_true3"):
        ratio = tf100["server_s"]["median"] / (3 * at_h["median"])
        what = f"{ratio:.1f}× three rounds of {h} starts at once"
        rows.append(_row(f"taskfleet ÷ floor, 3 steps on {h}", what, "", ""))
    return rows


def render(r: dict[str, Any]) -> str:
    """The printed table: medians with their min-max, and the peer's time over taskfleet's."""
    rows = ["| workload | taskfleet | peer | ratio |", "| --- | --- | --- | --- |"]
    tf20, tf100, ans = r.get("taskfleet_true20"), r.get("taskfleet_true3"), r.get("ansible")
    n, h = r["computers"], r["hosts"]
    if tf20:
        for salt in r.get("salt", []):
            rows += _salt_rows(n, tf20, salt)
    if tf20 and not r.get("salt"):
        rows.append(_row(f"`true` on {n}, server-side", _ms(tf20["server_s"]), "-", ""))
    if tf100:
        peer = (
            f"Ansible {ans['version']}, forks {r['forks']}: {_sec(ans['playbook_s'])}"
            if ans
            else "-"
        )
        rows.append(
            _row(
                f"3 × `true` on {h}, server job",
                _sec(tf100["server_s"]),
                peer,
                _ratio(ans["playbook_s"], tf100["server_s"], 0) if ans else "",
            )
        )
        rows.append(
            _row(
                "same, CLI wall",
                _sec(tf100["cli_s"]),
                "`ansible-playbook` wall (as above)" if ans else "-",
                _ratio(ans["playbook_s"], tf100["cli_s"], 0) if ans else "",
            )
        )
    if fl := r.get("floor"):
        rows += _floor_rows(r, fl)
    for key, what in (
        ("taskfleet_true20", f"`true` on {n}"),
        ("taskfleet_true3", f"3 steps on {h}"),
    ):
        if cpu := (r.get(key) or {}).get("cpu_per_run_s"):
            cells = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            rows.append(_row(f"CPU s per run, {what}", cells, "", ""))
    return "\n".join(rows)


async def _suite(
    args: argparse.Namespace,
    root: Path,
    result: dict[str, Any],
    salt_bins: list[Path],
    ans_bin: Path | None,
) -> None:
    """Each system in turn, never two at once; the figures go into ``result`` as they come."""
    print("peers: the floor (bare process starts) ...", flush=True)
    result["floor"] = await spawn_floor(args.rounds, (1, args.computers, args.hosts))
    if not args.peers_only:
        print(f"peers: taskfleet, `true` on {args.computers} ...", flush=True)
        result["taskfleet_true20"] = await taskfleet_true20(args, root)
    for salt_bin in salt_bins:
        print(f"peers: Salt, `true` on {args.computers} minions ...", flush=True)
        result.setdefault("salt", []).append(await salt_true20(args, root, salt_bin))
    if not args.peers_only:
        print(f"peers: taskfleet, 3 steps on {args.hosts} ...", flush=True)
        result["taskfleet_true3"] = await taskfleet_true3(args, root)
    if ans_bin:
        print(f"peers: Ansible, 3 tasks on {args.hosts} hosts ...", flush=True)
        result["ansible"] = await ansible_true3(args, root, ans_bin)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "computers": args.computers,
        "hosts": args.hosts,
        "forks": args.forks,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),  # the machine is shared: how busy it was
    }
    salt_bins = [
        venv(f"salt{v}", f"salt=={v}.*", args.cache)
        for v in (args.salt_version.split(",") if args.salt else [])
    ]
    ans_bin = (
        venv("ansible", f"ansible-core=={args.ansible_version}.*", args.cache)
        if args.ansible
        else None
    )
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        root = Path(tmp)
        try:
            await _suite(args, root, result, salt_bins, ans_bin)
        finally:
            if args.keep_logs:
                shutil.copytree(
                    root, args.keep_logs, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.ipc")
                )
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--salt", action="store_true", help="measure Salt (salt-master + minions)")
    p.add_argument("--ansible", action="store_true", help="measure Ansible (ansible-playbook)")
    p.add_argument(
        "--salt-version",
        default="3008",
        help="Salt release series, comma-separated (default 3008; e.g. 3007,3008)",
    )
    p.add_argument("--ansible-version", default="2.19", help="ansible-core series (default 2.19)")
    p.add_argument("--computers", type=int, default=20, help="computers for `true` (default 20)")
    p.add_argument("--hosts", type=int, default=100, help="computers for 3 steps (default 100)")
    p.add_argument("--forks", type=int, default=50, help="Ansible's forks (default 50)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up (default 5)")
    p.add_argument(
        "--ansible-rounds", type=int, default=3, help="Ansible's timed rounds (default 3)"
    )
    p.add_argument("--cache", type=Path, default=CACHE, help=f"the peers' venvs (default {CACHE})")
    p.add_argument(
        "--peers-only", action="store_true", help="skip taskfleet (to check a peer's set-up)"
    )
    p.add_argument("--json-out", type=Path, help="write every figure as JSON here")
    p.add_argument("--keep-logs", type=Path, help="copy every process's log and config here")
    args = p.parse_args(argv)
    for name in ("computers", "hosts", "forks", "rounds", "ansible_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(main_async(args))
    result["loadavg_end"] = os.getloadavg()
    print(f"peers: load average at start {result['loadavg_start']}, at end {result['loadavg_end']}")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
