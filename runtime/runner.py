"""Runs scripts for run-script (agent), run-script-on-taskserver (TS) and run-script-on-server (NS).

The script text is written to a file and the interpreter gets the file as an argument
list: no shell string is ever built from parameters. The process gets its own session
(process group), so stop and timeout kill everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from protocol.messages import Report
from protocol.states import InstanceState
from protocol.tasks import output_limit, replace_tokens

KILL_GRACE_S = 2.0


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


class ScriptRun:
    """One script execution that can be stopped from outside (``stop``)."""

    def __init__(
        self,
        params: dict[str, Any],
        tokens: dict[str, str],
        timeout_s: float,
        argv: list[str] | None = None,
    ):
        self.params = params
        self.tokens = tokens
        self.timeout_s = timeout_s
        self.argv = argv
        """When given, run this program with these arguments instead of a script."""
        self._proc: asyncio.subprocess.Process | None = None
        self._stopped = False

    def stop(self) -> None:
        """Kill the process group; the run ends ``stopped``."""
        self._stopped = True
        self._kill(signal.SIGKILL)

    def _kill(self, sig: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    async def run(self) -> Outcome:
        """Run the script to its end, its timeout, or ``stop``."""
        started = time.time()
        interpreter = str(self.params.get("interpreter", "sh"))
        limit = output_limit(self.params)
        with tempfile.TemporaryDirectory(prefix="taskfleet-") as tmp:
            path = os.path.join(tmp, "script" + _SUFFIX.get(interpreter, ""))
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(replace_tokens(str(self.params.get("script", "")), self.tokens))
            cmd = list(self.argv) if self.argv else _command(interpreter, path)
            if cmd is None or (self.argv and shutil.which(cmd[0]) is None):
                missing = repr(cmd[0]) if cmd else f"interpreter {interpreter!r}"
                return Outcome.failed(
                    f"{missing} is not installed on this computer", started_at=started
                )
            env = dict(os.environ)
            for key, value in (self.params.get("env") or {}).items():
                env[str(key)] = replace_tokens(str(value), self.tokens)
            for key, value in self.tokens.items():
                env[f"TASKFLEET_{key}"] = value
            cwd = self.params.get("cwd") or tmp
            if self._stopped:
                return Outcome(
                    InstanceState.STOPPED,
                    reason="stopped before start",
                    started_at=started,
                    ended_at=time.time(),
                )
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *cmd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                return Outcome.failed(
                    f"could not start {cmd[0]}: {exc.strerror or exc}", started_at=started
                )
            kept = bytearray()
            dropped = 0

            async def pump() -> None:
                nonlocal dropped
                assert self._proc is not None and self._proc.stdout is not None
                while chunk := await self._proc.stdout.read(65_536):
                    room = limit - len(kept)
                    kept.extend(chunk[: max(room, 0)])
                    dropped += max(len(chunk) - max(room, 0), 0)
                await self._proc.wait()

            timed_out = False
            try:
                await asyncio.wait_for(pump(), timeout=max(self.timeout_s, 0.001))
            except TimeoutError:
                timed_out = True
                self._kill(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self._proc.wait(), KILL_GRACE_S)
                except TimeoutError:
                    self._kill(signal.SIGKILL)
                    await self._proc.wait()
            except asyncio.CancelledError:
                self._kill(signal.SIGKILL)
                raise
            ended = time.time()
            # The group may hold children that outlived the shell; they go with it.
            self._kill(signal.SIGKILL)
        # Invalid bytes decode to U+FFFD (3 bytes each): cut again so the limit holds in bytes too.
        output = (
            kept.decode("utf-8", errors="replace").encode()[:limit].decode("utf-8", errors="ignore")
        )
        if dropped:
            output += f"\n[output cut: {dropped} more bytes]"
        code = self._proc.returncode
        if self._stopped:
            return Outcome(
                InstanceState.STOPPED, code, output, "stopped by an administrator", started, ended
            )
        if timed_out:
            return Outcome(
                InstanceState.TIMED_OUT,
                code,
                output,
                f"killed after the time limit of {self.timeout_s:.0f} s",
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
