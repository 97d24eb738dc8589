"""Trust end to end: enrolment, pending keys, key mismatch, TLS pinning, admin roles, audit."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time

from admin.cli import EXIT_REFUSED
from tests.helpers import Fleet, task_doc, until, wait_run


async def test_enrolment_with_a_token_and_by_an_admin(fleet: Fleet):
    """An agent with an enrolment token is accepted at once; one without waits as `pending`, is not
    a computer and gets no work or configuration, until `keys accept` lets it in."""
    await fleet.server()
    await fleet.agent("with-token")
    await fleet.agent("waits", enrol=False)
    await fleet.wait_online(["with-token"])
    async with fleet.admin() as c:

        async def pending():
            keys = {k["name"]: k["state"] for k in await c.call("keys.list")}
            return keys.get("waits") == "pending" and keys.get("with-token") == "accepted"

        await until(pending, "the second key pending")
        names = [r["name"] for r in await c.call("computers.list")]
        assert "waits" not in names, "a pending agent was registered as a computer"
        code, _, err = await fleet.cli("keys", "accept", "waits")
        assert code == 0, err
    await fleet.wait_online(["with-token", "waits"])
    async with fleet.admin() as c:
        await c.call("task.add", text=task_doc("hi", "echo hi"), filename="hi.toml")
        final = await wait_run(
            c, (await c.call("run.start", task="hi", computers=["waits"]))["run_id"]
        )
    assert final["status"] == "succeeded"


async def test_a_known_name_with_another_key_is_refused_and_raised(fleet: Fleet):
    """A reinstalled machine (same name, new key) is refused and an admin message is raised; the
    agent exits 5 (no retry changes it) saying `keys delete` lets it enrol again, and once an
    admin did, the agent started again is in."""
    await fleet.server()
    first = await fleet.agent("pc-9")
    await fleet.wait_online(["pc-9"])
    first.kill()
    await first.wait()
    shutil.rmtree(fleet.root / "pc-9")  # the machine is reinstalled: a new key
    again = await fleet.agent("pc-9")
    assert await again.wait(30) == EXIT_REFUSED, again.log()
    assert "keys delete pc-9" in again.log()
    async with fleet.admin() as c:

        async def raised():
            return [m for m in await c.call("messages.list") if "pc-9" in m["text"]]

        (message,) = await until(raised, "a message about pc-9's key")
        assert "not its registered key" in message["text"] and "keys delete pc-9" in message["text"]
        rows = {r["name"]: r for r in await c.call("computers.list")}
        assert not rows["pc-9"]["online"]
        await c.call("keys.delete", name="pc-9")
    await fleet.agent("pc-9")
    await fleet.wait_online(["pc-9"])


async def test_expired_and_used_up_enrolment_tokens_are_refused(fleet: Fleet):
    """A token past its time and a token with no uses left enrol no one; the log says why, the
    agents exit 5, and their keys wait as `pending` for an admin."""
    await fleet.server()
    async with fleet.admin() as c:
        once = (await c.call("tokens.create", ttl_s=3600, uses=1))["token"]
        brief = (await c.call("tokens.create", ttl_s=1, uses=5))["token"]
    created = time.time()
    fleet.enrol_token = once
    await fleet.agent("first")
    await fleet.wait_online(["first"])
    late = await fleet.agent("second")

    async def said(text: str):
        return text in late.log()

    await until(lambda: said("the enrolment token is used up"), "the used-up token refused")

    async def expired():
        return time.time() > created + 1.5

    await until(expired, "the short token expired", 5)
    fleet.enrol_token = brief
    slow = await fleet.agent("third")
    await until(
        lambda: said_in(slow, "the enrolment token has expired"), "the expired token refused"
    )
    assert await late.wait(30) == EXIT_REFUSED and await slow.wait(30) == EXIT_REFUSED
    async with fleet.admin() as c:
        keys = {k["name"]: k["state"] for k in await c.call("keys.list")}
    assert keys == {"first": "accepted", "second": "pending", "third": "pending"}


async def said_in(proc, text: str) -> bool:
    return text in proc.log()


async def test_tls_pin_is_checked(fleet: Fleet):
    """The pinned fingerprint works; a wrong pin, or no way to trust the server, is refused."""
    await fleet.server()
    code, out, err = await fleet.cli("computers")
    assert code == 0, err
    wrong = "SHA256:" + "0" * 64
    proc_args = [
        "computers",
        "--server",
        fleet.ns.url,
        "--token",
        fleet.admin_token,
        "--server-fingerprint",
        wrong,
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "admin",
        *proc_args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err_b = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3
    assert "does not match the pinned" in err_b.decode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "admin",
        "computers",
        "--server",
        fleet.ns.url,
        "--token",
        fleet.admin_token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err_b = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3 and "--server-fingerprint or --ca" in err_b.decode()


async def test_admin_roles_bound_what_each_admin_may_do_and_all_is_audited(fleet: Fleet, tmp_path):
    """viewer reads; operator runs and stops; only admin saves tasks and manages keys and tokens.
    Refusals say which role is needed, and every change and refusal is in the audit trail."""
    await fleet.server()
    await fleet.agent("r-1")
    await fleet.wait_online(["r-1"])
    (tmp_path / "t.toml").write_text(task_doc("t", "echo t"))
    assert (await fleet.cli("task", "add", str(tmp_path / "t.toml")))[0] == 0
    async with fleet.admin() as c:
        viewer = (await c.call("admins.add", name="vera", role="viewer"))["token"]
        operator = (await c.call("admins.add", name="otto", role="operator"))["token"]

    assert (await fleet.cli("runs", token=viewer))[0] == 0
    code, _, err = await fleet.cli("run", "t", "--all", token=viewer)
    assert code == 2 and "needs the role operator" in err
    code, _, err = await fleet.cli("run", "t", "--all", "--wait", token=operator)
    assert code == 0, err
    code, _, err = await fleet.cli("task", "add", str(tmp_path / "t.toml"), token=operator)
    assert code == 2 and "needs the role admin" in err
    code, _, err = await fleet.cli("tokens", "create", token=operator)
    assert code == 2 and "needs the role admin" in err
    code, _, err = await fleet.cli("keys", token=viewer)
    assert code == 2 and "needs the role admin" in err

    async with fleet.admin() as c:
        await c.call("admins.revoke", name="vera")
        trail = await c.call("audit.list")
    code, _, err = await fleet.cli("runs", token=viewer)
    assert code == 3 and "admin token refused" in err
    seen = {(a["who"], a["action"], a["outcome"].split(":")[0]) for a in trail}
    assert ("admin", "task.add", "ok") in seen
    assert ("vera", "run.start", "refused") in seen
    assert ("otto", "run.start", "ok") in seen
    assert ("otto", "task.add", "refused") in seen
    assert ("admin", "admins.revoke", "ok") in seen
    code, out, _ = await fleet.cli("audit")
    assert code == 0 and "otto" in out and "run.start" in out
