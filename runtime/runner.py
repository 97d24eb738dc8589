"""Runs scripts for run-script (agent), run-script-on-taskserver (TS) and run-script-on-server (NS).

The script text is written to a file and the interpreter gets the file as an argument
list: no shell string is ever built from parameters. The process gets its own session
(process group), and every end of a script (success, failure, time-out, stop) ends everything
it started:

- the script's process group (and session) is killed with ``SIGKILL`` as soon as the script's
  own process exits, so ``sleep 3001 &`` does not outlive it; a time-out sends ``SIGTERM`` to the
  group first, then ``SIGKILL`` after ``KILL_GRACE_S``, and the reason names the signal;
- on Linux the process that runs scripts makes itself a *child subreaper*
  (``prctl(PR_SET_CHILD_SUBREAPER)``, once per process), so what a script daemonised (double
  fork, ``setsid``) is re-parented to this process instead of ``init``. At the script's end its
  children left in the script's group or session are killed and reaped. One that also left the
  session (``setsid``) cannot be told apart from another running script's: it is killed and
  reaped at the end of a script when no other script of this process is running.
- What this cannot catch: a process that left the tree altogether (handed to systemd, cron,
  ``at``, ``ssh``, or re-parented to another subreaper), and, off Linux, anything that left the
  group. A cgroup would catch those, but needs root and systemd delegation: taskfleet uses none.

The script's environment is this process's, without taskfleet's own variables (``TASKFLEET_*``:
admin and enrolment tokens, the SMTP password, settings), plus the task's ``env`` and the
documented ``TASKFLEET_<TOKEN>`` values.

With an :class:`Account` (run-script's ``run_as``, on an agent running as root), the script's
private folder and file are handed to that user (``chown``: it must read the script, nobody else
may), and the child takes the user's groups, group and user before it runs the interpreter. Its
environment then starts afresh, as a login (``runuser -l``) would give it: ``SAFE_PATH``, the
locale and time zone (``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``), the user's ``HOME``, ``USER``,
``LOGNAME``, ``SHELL``, then ``env`` and the tokens; nothing else of this (root) process's
environment (credentials it was given) reaches the lower user. The working folder is entered *as
that user* (:data:`ENTER`, a small ``sh`` that changes folder, then ``exec``-s the script), never
by root before the switch, after a check started as that user too: a folder the user cannot
enter fails the instance with a reason naming both, instead of starting the script there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.messages import Report
from protocol.states import InstanceState
from protocol.tasks import output_limit, replace_tokens

KILL_GRACE_S = 2.0
"""After a time-out's ``SIGTERM``, how long the script has before ``SIGKILL``."""
REAP_S = 1.0
"""How long the end of a script waits for what it left behind to die and be reaped."""
DRAIN_S = 1.0
"""How long output still in the pipe is read after the script's group is gone; a process that
escaped the group and holds the pipe open does not hold the result longer."""
OWN_ENV_PREFIX = "TASKFLEET_"
"""taskfleet's own environment variables (tokens, the SMTP password, settings): never passed on
to a script (the documented ``TASKFLEET_<TOKEN>`` values are set afresh)."""

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
"""``PATH`` of a script started as another user (a login's default on Linux)."""
_KEPT_FOR_ACCOUNT = ("LANG", "LANGUAGE", "TZ")
"""Variables (with every ``LC_*``) a script started as another user gets from this process."""
ENTER = 'cd -- "$1" || exit 126; shift; exec "$@"'
"""``sh -c`` text that enters a folder (``$1``) and runs the rest of its arguments there: the
``cd`` is done by the user the script runs as (``exit 126``: it could not)."""

_PR_SET_CHILD_SUBREAPER = 36
_subreaper: bool | None = None
_live: set[int] = set()
"""Process ids of this process's scripts that have not been cleaned up after yet."""
_starting = 0
"""Scripts being started right now (forked, not yet in ``_live``)."""


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux; once per process)."""
    global _subreaper
    if _subreaper is None:
        _subreaper = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return _subreaper


def script_environ() -> dict[str, str]:
    """This process's environment without taskfleet's own variables (``OWN_ENV_PREFIX``)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(OWN_ENV_PREFIX)}


def _children() -> list[int]:
    """This process's children (Linux ``/proc``; empty where that is not available)."""
    pids: list[int] = []
    try:
        threads = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in threads:
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids.extend(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            continue
    return pids


def _childless() -> bool:
    """Whether this process has no child at all, alive or dead (one system call, where the scan
    of ``_children`` reads a file per thread): then a script left nothing behind to kill or
    reap. Nothing is reaped here (``WNOWAIT``)."""
    waitid = getattr(os, "waitid", None)
    if waitid is None or not hasattr(os, "WNOWAIT"):
        return False
    try:
        waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    except OSError:
        return False
    return False


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, session) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[2]), int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def _sweep(leader: int, marks: set[int]) -> int:
    """Kill the groups in ``marks`` and this process's children that belong to them (or, when no
    other script runs here, any child that left this process's session); reap the dead ones.
    Returns how many were still alive."""
    for group in marks:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    if _childless():
        return 0
    idle = _starting == 0 and not (_live - {leader})
    own_session = os.getsid(0)
    alive = 0
    for pid in _children():
        if pid in _live:
            continue
        st = _stat(pid)
        if st is None:
            continue
        state, group, session = st
        if not (group in marks or session in marks or (idle and session != own_session)):
            continue
        marks.update((pid, session))
        if state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            alive += 1
    return alive


async def end_tree(leader: int) -> None:
    """Kill and reap what is left of the script whose process was ``leader`` (see the module's
    docstring for what can and cannot be caught); bounded by ``REAP_S``."""
    marks = {leader}
    for _ in range(int(REAP_S / 0.01)):
        if not _sweep(leader, marks):
            return
        await asyncio.sleep(0.01)


class _Child:
    """A script's process, watched from the event loop itself: its exit through a pidfd (Linux
    5.3 and later), its output pipe through the loop's reader.

    asyncio's own subprocess machinery (Python 3.11) starts a thread per child to wait for it,
    and ``Thread.start`` blocks the event loop until that thread runs; with a hundred agents
    each starting a script on two CPUs, those threads and their hand-offs were a large share of
    a step. Where there is no pidfd, one thread per child waits, as asyncio's would.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        loop: asyncio.AbstractEventLoop,
        on_chunk: Callable[[bytes], None],
    ) -> None:
        assert popen.stdout is not None
        self.popen = popen
        self.pid = popen.pid
        self.loop = loop
        self.returncode: int | None = None
        self.exited = asyncio.Event()
        """Set once the script's own process exited (and was reaped)."""
        self.drained = asyncio.Event()
        """Set once its output pipe is closed by every holder (or ``close`` gave up on it)."""
        self._on_chunk = on_chunk
        self._out = popen.stdout.fileno()
        os.set_blocking(self._out, False)
        loop.add_reader(self._out, self._read)
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux, or a kernel older than 5.3
            threading.Thread(target=self._wait_in_thread, daemon=True).start()
        else:
            loop.add_reader(self._pidfd, self._reap)

    def _read(self) -> None:
        try:
            chunk = os.read(self._out, 65_536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._on_chunk(chunk)
            return
        self._close_output()

    def _close_output(self) -> None:
        if self.drained.is_set():
            return
        self.loop.remove_reader(self._out)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
        self.drained.set()

    def _reap(self) -> None:
        """The pidfd is readable: the process exited; collect its status."""
        self.loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by someone else: no status to read
            code = 255
        self._exited(code)

    def _wait_in_thread(self) -> None:
        code = self.popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(self._exited, code)

    def _exited(self, code: int) -> None:
        self.returncode = self.popen.returncode = code
        self.exited.set()

    def close(self) -> None:
        """Stop reading its output; a process still running is killed (its exit is still
        collected when it comes, so nothing is left a zombie)."""
        self._close_output()
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)


@dataclass
class Outcome:
    """What one execution produced."""

    state: InstanceState
    return_code: int | None = None
    output: str = ""
    reason: str = ""
    started_at: float | None = None
    ended_at: float | None = None

    @classmethod
    def failed(cls, reason: str, started_at: float | None = None) -> Outcome:
        """A failure ending now, with a reason a person can act on (``started_at``: when the
        work began; by default now, for work refused before it began)."""
        now = time.time()
        return cls(
            InstanceState.FAILED,
            reason=reason,
            started_at=now if started_at is None else started_at,
            ended_at=now,
        )

    def report(self, instance_id: int, *, computer: str = "", step: str = "") -> Report:
        """This outcome as the report that carries it upstream."""
        return Report(
            instance_id=instance_id,
            state=self.state,
            step=step,
            computer=computer,
            return_code=self.return_code,
            output=self.output,
            reason=self.reason,
            started_at=self.started_at,
            ended_at=self.ended_at,
        )


@dataclass(frozen=True)
class Account:
    """The user a script is started as (run-script's ``run_as``, agents running as root): the
    child sets its groups, group and user before it runs anything (``subprocess``'s
    ``extra_groups``, ``group``, ``user``), and gets a login's environment: that user's ``HOME``,
    ``USER``, ``LOGNAME``, ``SHELL`` and none of this process's variables but the locale's."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str = "/bin/sh"

    def environ(self) -> dict[str, str]:
        """The environment a script run as this user starts from (``runuser -l``'s, roughly):
        never this process's credentials or settings, only its locale and time zone."""
        env = {k: v for k, v in os.environ.items() if k in _KEPT_FOR_ACCOUNT or k.startswith("LC_")}
        env.update(
            PATH=SAFE_PATH, HOME=self.home, USER=self.name, LOGNAME=self.name, SHELL=self.shell
        )
        return env

    def start_in(self, folder: str, cmd: list[str]) -> list[str]:
        """``cmd`` run in ``folder``, entered by this user once it is this user (:data:`ENTER`)."""
        return ["/bin/sh", "-c", ENTER, "sh", folder, *cmd]

    def spawn_args(self) -> dict[str, Any]:
        """The process-start arguments that make a child this user."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    async def can_enter(self, folder: str) -> bool:
        """Whether this user may enter ``folder`` (every parent searchable, the folder too):
        asked of a tiny ``sh`` started as the user, since only the kernel can tell."""
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                'cd -- "$1"',
                "sh",
                folder,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                cwd="/",
                env=self.environ(),
                **self.spawn_args(),
            )
        except OSError:
            return False
        return await proc.wait() == 0


def _command(interpreter: str, path: str) -> list[str] | None:
    if interpreter == "python":
        return [sys.executable, path]
    if interpreter in ("sh", "bash"):
        exe = shutil.which(interpreter)
        return [exe, path] if exe else None
    if interpreter == "powershell":
        exe = shutil.which("pwsh") or shutil.which("powershell")
        return [exe, "-NoProfile", "-NonInteractive", "-File", path] if exe else None
    if interpreter == "cmd":
        exe = shutil.which("cmd")
        return [exe, "/c", path] if exe else None
    return None


_SUFFIX = {"python": ".py", "powershell": ".ps1", "cmd": ".cmd", "sh": ".sh", "bash": ".sh"}


_removing: set[asyncio.Future[None]] = set()
"""Script folders being removed (``_remove_later``)."""


def _remove_folder(folder: str) -> None:
    """Remove a script's folder and what the script left in it; what it made read-only is
    made writable first (as ``tempfile.TemporaryDirectory`` does)."""

    def unlock(_func: Any, path: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)

    shutil.rmtree(folder, onerror=unlock)


def _remove_later(folder: str) -> None:
    """Remove a script's folder in a worker thread, while its result goes on its way.

    Removing a folder waits on the file system's journal and on the lock of the folder above it
    (``/tmp``, shared by every process starting scripts): 3 ms a removal on a loaded machine,
    in the event loop and before the result, when a hundred agents ended a step at once."""
    try:
        removal = asyncio.get_running_loop().run_in_executor(None, _remove_folder, folder)
    except RuntimeError:  # the loop's executor is already shut down: remove it here
        _remove_folder(folder)
        return
    _removing.add(removal)
    removal.add_done_callback(_removing.discard)


class ScriptRun:
    """One script execution that can be stopped from outside (``stop``)."""

    def __init__(
        self,
        params: dict[str, Any],
        tokens: dict[str, str],
        timeout_s: float,
        argv: list[str] | None = None,
        account: Account | None = None,
    ):
        self.params = params
        self.account = account
        """Start the script as this user (None: as this process's user)."""
        self.tokens = tokens
        self.timeout_s = timeout_s
        self.argv = argv
        """When given, run this program with these arguments instead of a script."""
        self.on_output: Callable[[bytes], None] | None = None
        """Called with each piece of output as the script produces it (live output: the agent
        sends it on while the script runs); plain code that must not block."""
        self._proc: _Child | None = None
        self._stopped = False
        self._ended = False
        self._limit = output_limit(params)
        self._kept = bytearray()
        self._dropped = 0

    def output(self) -> str:
        """What the script printed, up to the task's output limit (with a note of what was cut):
        all of it once ``run`` returned, what was read so far if it was cancelled (an agent
        that stops keeps it with the result it reports at its next start)."""
        limit = self._limit
        # Invalid bytes decode to U+FFFD (3 bytes each): cut again so the limit holds in bytes too.
        raw = self._kept.decode("utf-8", errors="replace").encode()[:limit]
        output = raw.decode("utf-8", errors="ignore")
        if self._dropped:
            output += f"\n[output cut: {self._dropped} more bytes]"
        return output

    def stop(self) -> None:
        """Kill the process group; the run ends ``stopped``."""
        self._stopped = True
        self._kill(signal.SIGKILL)

    def _kill(self, sig: int) -> None:
        if self._proc is not None and not self._ended:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def _environ(self) -> dict[str, str]:
        env = script_environ() if self.account is None else self.account.environ()
        for key, value in (self.params.get("env") or {}).items():
            env[str(key)] = replace_tokens(str(value), self.tokens)
        for key, value in self.tokens.items():
            env[f"TASKFLEET_{key}"] = value
        return env

    def _as_account(self) -> dict[str, Any]:
        """The process-start arguments that make the child ``self.account`` (none without one)."""
        return {} if self.account is None else self.account.spawn_args()

    async def run(self) -> Outcome:
        """Run the script to its end, its timeout, or ``stop``."""
        global _starting
        started = time.time()
        interpreter = str(self.params.get("interpreter", "sh"))
        tmp = tempfile.mkdtemp(prefix="taskfleet-")
        try:
            path = os.path.join(tmp, "script" + _SUFFIX.get(interpreter, ""))
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(replace_tokens(str(self.params.get("script", "")), self.tokens))
            if self.account is not None:
                # The folder stays private (0700), to its new owner: the user the script runs as
                # reads the script there, and it is the script's default working folder.
                for owned in (tmp, path):
                    os.chown(owned, self.account.uid, self.account.gid)
            cmd = list(self.argv) if self.argv else _command(interpreter, path)
            if cmd is None or (self.argv and shutil.which(cmd[0]) is None):
                missing = repr(cmd[0]) if cmd else f"interpreter {interpreter!r}"
                return Outcome.failed(
                    f"{missing} is not installed on this computer", started_at=started
                )
            env = self._environ()
            cwd = self.params.get("working_dir") or self.params.get("cwd") or tmp
            if not os.path.isdir(cwd):
                return Outcome.failed(
                    f"working_dir {cwd!r} does not exist on this computer (or is not a folder)",
                    started_at=started,
                )
            if self.account is not None:
                if not await self.account.can_enter(cwd):
                    return Outcome.failed(
                        f"working_dir {cwd!r} is not reachable by user {self.account.name!r}"
                        " (it cannot enter that folder or one above it)",
                        started_at=started,
                    )
                cmd, cwd = self.account.start_in(cwd, cmd), None
            if self._stopped:
                return Outcome(
                    InstanceState.STOPPED,
                    reason="stopped before start",
                    started_at=started,
                    ended_at=time.time(),
                )
            become_subreaper()
            kept = self._kept

            def take(chunk: bytes) -> None:
                if self.on_output is not None:
                    self.on_output(chunk)
                room = max(self._limit - len(kept), 0)
                kept.extend(chunk[:room])
                self._dropped += max(len(chunk) - room, 0)

            _starting += 1
            try:
                # Started here rather than through ``loop.subprocess_exec``: see ``_Child``. Popen
                # only starts it (vfork and exec, as asyncio's transport does too, in the loop);
                # its end and its output are awaited on the loop.
                popen = subprocess.Popen(  # noqa: ASYNC220
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    bufsize=0,
                    **self._as_account(),
                )
            except OSError as exc:
                return Outcome.failed(
                    f"could not start {cmd[0]}: {exc.strerror or exc}", started_at=started
                )
            finally:
                _starting -= 1
            child = self._proc = _Child(popen, asyncio.get_running_loop(), take)
            leader = child.pid
            _live.add(leader)
            if self._stopped:
                self._kill(signal.SIGKILL)
            killed_with = 0
            try:
                try:
                    await asyncio.wait_for(child.exited.wait(), max(self.timeout_s, 0.001))
                except TimeoutError:
                    killed_with = signal.SIGTERM
                    self._kill(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(child.exited.wait(), KILL_GRACE_S)
                    except TimeoutError:
                        killed_with = signal.SIGKILL
                        self._kill(signal.SIGKILL)
                        await child.exited.wait()
                ended = time.time()
                # The script is over: what it started goes with it, whether or not it is done.
                await end_tree(leader)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.drained.wait(), DRAIN_S)
            except asyncio.CancelledError:
                self._kill(signal.SIGKILL)
                _sweep(leader, {leader})
                # What it printed up to now stays readable (``output``); bounded as at its end.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(child.drained.wait(), DRAIN_S)
                raise
            finally:
                self._ended = True
                _live.discard(leader)
                child.close()
        finally:
            _remove_later(tmp)
        output = self.output()
        code = child.returncode
        if self._stopped:
            return Outcome(
                InstanceState.STOPPED, code, output, "stopped by an administrator", started, ended
            )
        if killed_with:
            how = signal.Signals(killed_with).name
            if killed_with == signal.SIGKILL:
                how += f" ({KILL_GRACE_S:g} s after SIGTERM)"
            return Outcome(
                InstanceState.TIMED_OUT,
                code,
                output,
                f"killed after the time limit of {self.timeout_s:g} s with {how}",
                started,
                ended,
            )
        success = self.params.get("success_codes") or [0]
        if code in success:
            return Outcome(InstanceState.SUCCEEDED, code, output, "", started, ended)
        return Outcome(
            InstanceState.FAILED,
            code,
            output,
            f"return code {code} is not a success code",
            started,
            ended,
        )


async def run_noop(params: dict[str, Any], timeout_s: float) -> Outcome:
    """The ``noop`` task: optional delay, then success."""
    started = time.time()
    delay_s = int(params.get("delay_ms", 0)) / 1000
    if delay_s > timeout_s:
        await asyncio.sleep(timeout_s)
        return Outcome(
            InstanceState.TIMED_OUT, None, "", "time limit reached", started, time.time()
        )
    if delay_s:
        await asyncio.sleep(delay_s)
    return Outcome(InstanceState.SUCCEEDED, 0, "", "", started, time.time())
