"""Test helpers: start real ``taskfleet`` processes, talk to them as an admin, wait with bounds."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from admin.client import AdminClient
from agent.agent import Agent
from runtime.tls import ClientTrust

READY_TIMEOUT_S = 30.0
INSECURE = ClientTrust(insecure=True)
"""Trust for in-process servers started with ``insecure=True`` (plain ws:// on loopback)."""


def quick_agent(url: str, name: str, enrol_token: str) -> Agent:
    """An in-process agent for an in-process NS: plain ws://, state in memory, simulated tasks
    that end at once, quick reconnects."""
    return Agent(
        server_url=url,
        name=name,
        trust=INSECURE,
        enrol_token=enrol_token,
        lightweight=True,
        simulate={"delay_ms": 0},
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )


async def until(
    predicate: Callable[[], Awaitable[Any]],
    what: str,
    timeout_s: float = 30.0,
    every_s: float = 0.05,
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for: {what}")
        await asyncio.sleep(every_s)


class Proc:
    """One real ``taskfleet`` process (``python -m admin ...``), stderr kept in a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path):
        self.name = name
        self.args = args
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.fingerprint = ""
        self.env: dict[str, str] = {}
        """More environment for the process (a secret a test passes as a role would)."""
        self.admin_token = ""
        """For an NS: its first admin token (``Fleet.server``, ``Fleet.child_server``)."""

    async def start(self, wait_ready: bool = True) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "admin",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()
        if wait_ready:
            await self._ready()
        return self

    async def _ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name} did not become ready; log:\n{self.log()}")
            line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            if not line:
                raise AssertionError(f"{self.name} exited before ready; log:\n{self.log()}")
            text = line.decode().strip()
            if " ready url=" in text:
                fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
                self.url = fields["url"]
                self.fingerprint = fields.get("fingerprint", "")
                return

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)


class Fleet:
    """Starts an NS, task servers and agents as separate processes in one temporary folder.

    Everything speaks TLS with the NS's self-made certificate pinned by fingerprint; agents and
    task servers enrol with tokens the fleet creates through the first admin token (one for
    agents, one for task servers: a token enrols only the role it was made for).
    """

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[Proc] = []
        self.ns: Proc | None = None
        self.admin_token = ""
        self.enrol_token = ""
        self.ts_enrol_token = ""
        self.database: str | None = None
        """A PostgreSQL URL every NS of this fleet keeps its tables in (None: SQLite in its
        data folder); set by the ``fleet`` fixture under ``--store=postgresql``."""

    def _proc(self, name: str, args: list[str]) -> Proc:
        p = Proc(name, args, self.root / f"{name}.log")
        self.procs.append(p)
        return p

    @property
    def fingerprint(self) -> str:
        assert self.ns is not None
        return self.ns.fingerprint

    def trust(self) -> ClientTrust:
        return ClientTrust(fingerprint=self.fingerprint)

    def trust_args(self) -> list[str]:
        return ["--server-fingerprint", self.fingerprint]

    async def server(
        self, name: str = "ns", port: int = 0, *extra: str, data_root: Path | None = None
    ) -> Proc:
        data = (data_root or self.root) / name
        if self.database is not None and "--database" not in extra:
            extra = ("--database", self.database, *extra)
        self.ns = await self._proc(
            name, ["server", "--data", str(data), "--listen", f"127.0.0.1:{port}", *extra]
        ).start()
        self.admin_token = (data / "admin.token").read_text().strip()
        self.ns.admin_token = self.admin_token
        if not self.enrol_token or not self.ts_enrol_token:
            async with self.admin() as c:
                if not self.enrol_token:
                    created = await c.call("tokens.create", ttl_s=3600, uses=10_000)
                    self.enrol_token = created["token"]
                if not self.ts_enrol_token:
                    created = await c.call("tokens.create", ttl_s=3600, uses=100, role="taskserver")
                    self.ts_enrol_token = created["token"]
        return self.ns

    async def taskserver(self, name: str, port: int = 0, *extra: str) -> Proc:
        assert self.ns is not None
        return await self._proc(
            name,
            [
                "taskserver",
                "--server",
                self.ns.url,
                "--data",
                str(self.root / name),
                "--listen",
                f"127.0.0.1:{port}",
                "--name",
                name,
                "--enrol-token",
                self.ts_enrol_token,
                *self.trust_args(),
                *extra,
            ],
        ).start()

    async def simulate(
        self, agents: int, *extra: str, processes: int = 1, name: str = "simulate"
    ) -> Proc:
        """Start ``taskfleet simulate`` with ``agents`` agents against this fleet's NS (each
        enrolled by token, trusting the NS by fingerprint); ``extra`` are more of its options."""
        assert self.ns is not None
        return await self._proc(
            name,
            [
                "simulate",
                "--server",
                self.ns.url,
                "--agents",
                str(agents),
                "--processes",
                str(processes),
                *extra,
                "--enrol-token",
                self.enrol_token,
                *self.trust_args(),
            ],
        ).start(wait_ready=False)

    async def agent(self, name: str, *, enrol: bool = True) -> Proc:
        assert self.ns is not None
        token = ["--enrol-token", self.enrol_token] if enrol else []
        return await self._proc(
            name,
            [
                "agent",
                "--server",
                self.ns.url,
                "--data",
                str(self.root / name),
                "--name",
                name,
                *token,
                *self.trust_args(),
            ],
        ).start(wait_ready=False)

    # -- several NS: a hierarchy (docs/hierarchy.md) -----------------------------------

    async def child_server(
        self,
        name: str,
        parent: Proc,
        *extra: str,
        token_via: str = "file",
        token: str | None = None,
        wait_linked: bool = True,
        port: int = 0,
        parent_url: str | None = None,
    ) -> Proc:
        """Start another NS process (named ``name``, its own data folder ``ROOT/name``, SQLite
        always) as a child of ``parent``: a child enrolment token made on the parent through
        its admin client (or ``token``), given by a 0600 file (``token_via="file"``) or the
        environment (``"env"``), never on the command line (``"none"``: no token, its key waits
        for `keys accept`); the parent pinned by fingerprint. ``port``: its --listen port (a
        child restarted on the same data comes back on the same address for its own children);
        ``parent_url``: the --parent URL when not ``parent.url`` (a forwarder in between,
        tests/netcut.py). Returns once it is ready and (``wait_linked``) the parent lists it as
        connected."""
        if token is None and token_via != "none":
            token = await self.child_token(parent)
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        args = [
            "server",
            "--data",
            str(data),
            "--listen",
            f"127.0.0.1:{port}",
            "--name",
            name,
            "--parent",
            parent_url or parent.url,
            "--parent-fingerprint",
            parent.fingerprint,
            *extra,
        ]
        proc = self._proc(name, args)
        if token is not None and token_via == "file":
            path = self.root / f"{name}.enrol-token"
            path.write_text(token + "\n")
            path.chmod(0o600)
            args += ["--enrol-token-file", str(path)]
        elif token is not None:
            proc.env = {"TASKFLEET_ENROL_TOKEN": token}
        await proc.start()
        proc.admin_token = (data / "admin.token").read_text().strip()
        if wait_linked:
            await self.wait_linked(parent, name)
        return proc

    async def child_token(self, parent: Proc, role: str = "child", uses: int = 1) -> str:
        """An enrolment token made on ``parent`` (for a child NS, unless ``role`` says)."""
        async with self.admin_of(parent) as c:
            created = await c.call("tokens.create", ttl_s=3600, uses=uses, role=role)
        return str(created["token"])

    def admin_of(self, proc: Proc, token: str | None = None) -> AdminClient:
        """An admin client of any NS of this fleet (its first admin token by default)."""
        return AdminClient(
            proc.url, token or proc.admin_token, ClientTrust(fingerprint=proc.fingerprint)
        )

    async def cli_on(self, proc: Proc, *args: str, timeout_s: float = 60.0) -> tuple[int, str, str]:
        """Run an admin verb as a real process against the NS ``proc``."""
        proc_cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "admin",
            *args,
            "--server",
            proc.url,
            "--token",
            proc.admin_token,
            "--server-fingerprint",
            proc.fingerprint,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc_cli.communicate(), timeout_s)
        assert proc_cli.returncode is not None
        return proc_cli.returncode, out.decode(), err.decode()

    async def wait_linked(
        self, parent: Proc, child: str, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """Wait until ``parent`` lists ``child`` as a connected child; return its row."""
        async with self.admin_of(parent) as c:

            async def linked() -> dict[str, Any] | None:
                rows = await c.call("children.list")
                return next((r for r in rows if r["name"] == child and r["connected"]), None)

            found: dict[str, Any] = await until(
                linked, f"{child} linked to {parent.name}", timeout_s
            )
            return found

    async def agent_on(self, ns: Proc, name: str) -> Proc:
        """An agent process of the NS ``ns`` (any NS of the fleet), enrolled by a token made
        there, its enrolment token in the environment."""
        token = await self.child_token(ns, role="agent")
        proc = self._proc(
            name,
            [
                "agent",
                "--server",
                ns.url,
                "--data",
                str(self.root / name),
                "--name",
                name,
                "--server-fingerprint",
                ns.fingerprint,
            ],
        )
        proc.env = {"TASKFLEET_ENROL_TOKEN": token}
        return await proc.start(wait_ready=False)

    def admin(self, token: str | None = None) -> AdminClient:
        assert self.ns is not None
        return AdminClient(self.ns.url, token or self.admin_token, self.trust())

    async def cli(
        self, *args: str, timeout_s: float = 60.0, token: str | None = None
    ) -> tuple[int, str, str]:
        """Run an admin verb as a real process; return (exit code, stdout, stderr)."""
        assert self.ns is not None
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "admin",
            *args,
            "--server",
            self.ns.url,
            "--token",
            token or self.admin_token,
            *self.trust_args(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def cli_json(self, *args: str) -> Any:
        code, out, err = await self.cli(*args, "--json")
        assert code == 0, f"taskfleet {' '.join(args)} exited {code}: {err}"
        return json.loads(out)

    async def wait_online(self, names: list[str], timeout_s: float = 30.0) -> list[dict[str, Any]]:
        async with self.admin() as c:

            async def ready() -> list[dict[str, Any]] | None:
                rows = await c.call("computers.list")
                online = {r["name"] for r in rows if r["online"]}
                return rows if set(names) <= online else None

            return await until(ready, f"agents {names} online", timeout_s)

    async def close(self) -> None:
        for p in reversed(self.procs):
            p.kill(signal.SIGTERM)
        for p in reversed(self.procs):
            if p.proc is not None and p.proc.returncode is None:
                try:
                    await p.wait(5)
                except TimeoutError:
                    p.kill()
                    await p.wait(5)
        for p in self.procs:
            # A process's stdout pipe can outlive it (a child holds it: simulate's workers);
            # closed here, it is not left to the garbage collector to warn about in a later test.
            transport = getattr(p.proc, "_transport", None)
            if transport is not None:
                transport.close()


def task_doc(name: str, script: str, *, type: str = "run-script", timeout_s: int = 60) -> str:
    """A run-script task document in TOML."""
    return (
        f'name = "{name}"\ntype = "{type}"\ntimeout_s = {timeout_s}\n[params]\n'
        f"interpreter = \"sh\"\nscript = '''\n{script}\n'''\n"
    )


async def wait_run(c: AdminClient, run_id: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Follow a run through its events to its end; return the final run."""

    async def follow() -> dict[str, Any]:
        async for kind, data in c.watch(run_id):
            if kind == "run":
                return data
        raise AssertionError("watch ended without the run's end")

    return await asyncio.wait_for(follow(), timeout_s)


def free_port() -> int:
    """A loopback port free right now (for a server that must come back on the same port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``"24m"``) under ``tmp_path``: a disk a test can fill for real
    without touching the machine's own (needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Fill the file system that holds ``path`` to its last byte (a file at ``path``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
