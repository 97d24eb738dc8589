"""Issue 19, "processes that fail loudly and exit": real ``taskfleet`` processes that cannot do
their job end at once with a documented exit code and one line saying what to do, instead of
hanging (a server that did not listen) or retrying for ever (an agent refused for good); and the
admin verbs put their errors in the right class (a cut pipe, a URL of the wrong form, an unknown
computer, a demo with no agents).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from admin.cli import (
    DEMO_MAX_AGENTS,
    EXIT_CLOSED_STDOUT,
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_START,
    EXIT_USAGE,
)
from tests.helpers import Fleet, Proc

EXIT_BOUND_S = 10.0
"""A role that cannot work must be gone within this (it exits in well under a second; the bound
is for a loaded test machine). Before, it hung or retried for ever."""
NOWHERE = "ws://127.0.0.1:9"


async def run(*args: str, timeout_s: float = 30.0) -> tuple[int, str, str]:
    """``taskfleet ARGS`` as a real process, with no TASKFLEET_* settings from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "admin",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ended(proc: Proc) -> int:
    """The process's exit code; fail if it is still running after EXIT_BOUND_S."""
    try:
        return await proc.wait(EXIT_BOUND_S)
    except TimeoutError:
        raise AssertionError(f"{proc.name} still runs; log:\n{proc.log()}") from None


# -- roles that cannot start ------------------------------------------------------------------


@pytest.mark.parametrize("role", ["server", "taskserver"])
async def test_a_taken_port_ends_the_role_before_it_writes_anything_secret(
    fleet: Fleet, tmp_path: Path, role: str
):
    """Fault: another process listens on the role's --listen port. Before, the NS said "cannot
    reach the server", wrote admin.token without printing it, and (in an earlier build) kept
    running without listening. Must hold: the role exits 4 within seconds, the message names the
    address, the cause and the fix, the NS wrote no admin token, and no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / role
        args = ["--data", str(data), "--listen", f"127.0.0.1:{port}"]
        if role == "taskserver":
            args += ["--server", NOWHERE, "--insecure"]
        proc = await fleet._proc(role, [role, *args]).start(wait_ready=False)
        code = await ended(proc)
    log = proc.log()
    assert code == EXIT_START, log
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in log, log
    assert "another --listen" in log and "Traceback" not in log
    assert "cannot reach the server" not in log
    assert not (data / "admin.token").exists()


@pytest.mark.parametrize("role", ["server", "taskserver", "agent"])
async def test_an_unusable_data_folder_ends_the_role(fleet: Fleet, role: str):
    """Fault: --data names a folder that cannot be made (/proc/nope). Before: "cannot reach the
    server", exit 3. Must hold: exit 4 at once, naming the folder and what to do."""
    args = [role, "--data", "/proc/nope"]
    if role == "server":
        args += ["--listen", "127.0.0.1:0"]
    else:
        args += ["--server", NOWHERE, "--insecure"]
    proc = await fleet._proc(role, args).start(wait_ready=False)
    code = await ended(proc)
    log = proc.log()
    assert code == EXIT_START, log
    assert "cannot use the data folder /proc/nope" in log and "give --data a folder" in log
    assert "cannot reach the server" not in log and "Traceback" not in log


@pytest.mark.parametrize("role", ["taskserver", "agent"])
async def test_a_role_with_no_way_to_trust_the_ns_is_a_usage_error(tmp_path: Path, role: str):
    """Fault: a TS or agent given a wss:// NS with neither --server-fingerprint nor --ca (before:
    it retried for ever, logging errors), or a --server URL of the wrong form. Must hold: exit 2
    at once with the options to give (the URL form), and nothing is created in its data folder."""
    data = tmp_path / role
    code, _, err = await run(role, "--server", "wss://127.0.0.1:9", "--data", str(data))
    assert code == EXIT_USAGE, err
    assert "--server-fingerprint" in err and "--ca" in err
    code, _, err = await run(role, "--server", "https://127.0.0.1:9", "--data", str(data))
    assert code == EXIT_USAGE, err
    assert "wss://HOST:PORT" in err and "here: wss://127.0.0.1:9" in err
    assert not data.exists()


# -- refusals no retry changes --------------------------------------------------------------


async def test_an_agent_with_a_used_up_token_exits_and_waits_as_pending(fleet: Fleet):
    """Fault: an agent presents an enrolment token that is used up (before: it retried for ever
    and the admin could not see it). Must hold: it exits 5 within seconds with one line saying
    what to do; its key is listed `pending`; `keys accept` then lets it in when started again."""
    await fleet.server()
    async with fleet.admin() as c:
        fleet.enrol_token = (await c.call("tokens.create", ttl_s=3600, uses=1))["token"]
    await fleet.agent("first")
    await fleet.wait_online(["first"])
    late = await fleet.agent("second")
    assert await ended(late) == EXIT_REFUSED, late.log()
    log = late.log()
    assert "the enrolment token is used up" in log and "`taskfleet keys accept second`" in log
    assert "Retrying cannot help" in log and "Traceback" not in log
    async with fleet.admin() as c:
        keys = {k["name"]: k["state"] for k in await c.call("keys.list")}
    assert keys == {"first": "accepted", "second": "pending"}
    code, _, err = await fleet.cli("keys", "accept", "second")
    assert code == 0, err
    await fleet.agent("second")
    await fleet.wait_online(["first", "second"])


async def test_an_agent_with_a_wrong_pin_exits(fleet: Fleet):
    """Fault: an agent pins a fingerprint that is not the NS's (before: it retried for ever).
    Must hold: exit 5 within seconds, naming both fingerprints and the option to fix."""
    await fleet.server()
    wrong = "SHA256:" + "0" * 64
    assert fleet.ns is not None
    proc = await fleet._proc(
        "pinned",
        [
            "agent",
            "--server",
            fleet.ns.url,
            "--data",
            str(fleet.root / "pinned"),
            "--name",
            "pinned",
            "--server-fingerprint",
            wrong,
        ],
    ).start(wait_ready=False)
    assert await ended(proc) == EXIT_REFUSED, proc.log()
    log = proc.log()
    assert f"does not match the pinned {wrong}" in log and fleet.fingerprint in log
    assert "--server-fingerprint" in log and "Traceback" not in log


async def test_a_task_server_with_a_bad_token_exits_and_waits_as_pending(fleet: Fleet):
    """Fault: a TS enrols with an unknown token (before: it listened and retried for ever).
    Must hold: exit 5 within seconds saying what to do, and its key is listed `pending`."""
    await fleet.server()
    assert fleet.ns is not None
    proc = await fleet._proc(
        "ts-bad",
        [
            "taskserver",
            "--server",
            fleet.ns.url,
            "--data",
            str(fleet.root / "ts-bad"),
            "--listen",
            "127.0.0.1:0",
            "--name",
            "ts-bad",
            "--enrol-token-file",
            str(token_file(fleet.root, "tfe_not-a-token")),
            *fleet.trust_args(),
        ],
    ).start(wait_ready=False)
    assert await ended(proc) == EXIT_REFUSED, proc.log()
    assert "unknown enrolment token" in proc.log() and "keys accept ts-bad" in proc.log()
    async with fleet.admin() as c:
        keys = {k["name"]: k["state"] for k in await c.call("keys.list")}
    assert keys == {"ts-bad": "pending"}


def token_file(root: Path, token: str) -> Path:
    """A secret in a 0600 file, for --token-file / --enrol-token-file (never on a command line)."""
    path = root / f"{token[:3]}.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


# -- admin verbs: errors in the right class --------------------------------------------------


async def test_output_cut_short_is_not_a_server_failure(fleet: Fleet):
    """Fault: the reader of a verb's output goes away (`taskfleet runs | head -1`). Before: "cannot
    reach the server: Broken pipe", exit 3. Must hold: nothing on stderr, exit 141 (as a command
    ended by SIGPIPE), for every verb; through a real `head -1`, head gets the first line."""
    await fleet.server()
    assert fleet.ns is not None
    code, _, err = await fleet.cli("computers", "add", "printer-1")
    assert code == 0, err
    admin_token = token_file(fleet.root, fleet.admin_token)
    common = ["--server", fleet.ns.url, "--token-file", str(admin_token), *fleet.trust_args()]
    for verb in (["computers"], ["runs"], ["keys"], ["computers", "--json"], ["runs", "--json"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before a byte is written: every write fails
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "admin",
            *verb,
            *common,
            stdout=write,
            stderr=asyncio.subprocess.PIPE,
        )
        os.close(write)
        _, err_b = await asyncio.wait_for(proc.communicate(), 30)
        assert (proc.returncode, err_b.decode()) == (EXIT_CLOSED_STDOUT, ""), verb

    line = " ".join(["'" + a + "'" for a in [sys.executable, "-m", "admin", "computers", *common]])
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f'set -o pipefail; {line} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 30)
    (first,) = out_b.decode().splitlines()  # head's one line: the table's header
    assert first.split()[0] == "NAME", first
    # Whether the process wrote its last bytes before head left is a race: 0 or 141, never 3.
    assert err_b.decode().strip() in ("status=0", f"status={EXIT_CLOSED_STDOUT}"), err_b


async def test_server_urls_of_the_wrong_form_are_usage_errors(fleet: Fleet):
    """Fault: an admin gives `--server https://…`, a URL with no scheme, or ws:// to the NS that
    speaks TLS (before: exit 3 "isn't a valid URI", and 30 s of retries then "did not receive a
    valid HTTP response"). Must hold: exit 2 at once, showing the right form."""
    await fleet.server()
    assert fleet.ns is not None
    hostport = fleet.ns.url.removeprefix("wss://")
    token = ["--token", fleet.admin_token, *fleet.trust_args()]
    for url in (f"https://{hostport}", hostport):
        code, _, err = await run("computers", "--server", url, *token)
        assert code == EXIT_USAGE, err
        assert "wss://HOST:PORT" in err and f"here: wss://{hostport}" in err, err
    started = time.monotonic()
    code, _, err = await run("computers", "--server", f"ws://{hostport}", "--insecure", *token)
    assert code == EXIT_USAGE, err
    assert f"speaks TLS: use wss://{hostport}" in err, err
    assert time.monotonic() - started < EXIT_BOUND_S


async def test_inventory_of_an_unknown_computer_is_a_usage_error(fleet: Fleet):
    """Fault: `inventory NAME` for a computer that does not exist (before: exit 1 "no inventory",
    as for a real computer not yet inventoried). Must hold: exit 2 naming the unknown computer;
    a known computer with no inventory is still exit 1."""
    await fleet.server()
    code, _, err = await fleet.cli("inventory", "UNKNOWN")
    assert code == EXIT_USAGE and "unknown computer 'UNKNOWN'" in err, err
    code, _, err = await fleet.cli("computers", "add", "printer-1")
    assert code == 0, err
    code, _, err = await fleet.cli("inventory", "printer-1")
    assert code == EXIT_FAILED and "no inventory for printer-1" in err, err


@pytest.mark.parametrize("agents", ["-1", "0", str(DEMO_MAX_AGENTS + 1), "many"])
async def test_demo_with_a_number_of_agents_out_of_range_is_a_usage_error(agents: str):
    """Fault: `demo --agents -1` printed a token error and hung; `--agents 0` exited 2 with a
    confusing line. Must hold: exit 2 at once, saying the range."""
    code, out, err = await run("demo", "--agents", agents, timeout_s=EXIT_BOUND_S)
    assert code == EXIT_USAGE, err
    assert f"give 1 to {DEMO_MAX_AGENTS}" in err and out == ""
