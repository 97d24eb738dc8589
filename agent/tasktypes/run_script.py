"""run-script: a script with a chosen interpreter (see ``runtime.runner``), as the agent's own
user or, with ``run_as``, as another one (the agent must then run as root)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from runtime.runner import Account, Outcome, ScriptRun

if TYPE_CHECKING:
    from agent.tasktypes.context import TaskContext

try:
    import pwd
except ImportError:  # Windows: no user database to switch to
    pwd = None  # type: ignore[assignment]


class RunAsRefused(Exception):
    """``run_as`` cannot be honoured here; the message is the instance's reason."""


def resolve_run_as(name: str, euid: int | None = None) -> Account | None:
    """Who a run-script with ``run_as = name`` runs as, for an agent whose effective user id is
    ``euid`` (default: this process's). None: as the agent itself (``name`` empty, or the
    agent's own user). Raises :class:`RunAsRefused` with what to do when the name is unknown
    here, or when it names another user and the agent is not root (only root may switch users:
    an agent that is not root runs nothing as somebody else, rather than its own user quietly)."""
    if not name:
        return None
    if pwd is None:
        raise RunAsRefused(f"run_as {name!r}: this platform has no users to switch to")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RunAsRefused(f"run_as {name!r}: no such user on this computer") from None
    euid = os.geteuid() if euid is None else euid
    if entry.pw_uid == euid:
        return None
    if euid != 0:
        try:
            me = pwd.getpwuid(euid).pw_name
        except KeyError:
            me = f"uid {euid}"
        raise RunAsRefused(
            f"run_as {name!r}: the agent must run as root to start a script as another user"
            f" (it runs as {me!r}); run the agent as root, or leave run_as empty"
        )
    groups = tuple(os.getgrouplist(name, entry.pw_gid))
    return Account(
        name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, entry.pw_shell or "/bin/sh"
    )


async def run(ctx: TaskContext) -> Outcome:
    try:
        account = resolve_run_as(str(ctx.params.get("run_as") or ""))
    except RunAsRefused as exc:
        return Outcome.failed(str(exc))
    return await ctx.run(ScriptRun(ctx.params, ctx.tokens, ctx.timeout_s, account=account))
