"""Policies: a client task run by agents on a schedule, for the computers a policy targets.

name = "disk-check"
task = "check-disk"                 # a saved client task
enabled = true
[schedule]
every_s = 900                       # or: daily_at = "02:30" (UTC)
[targets]
groups = ["web"]                    # and/or computers, filters; or all = true
"""

from __future__ import annotations

import re
from typing import Any

from protocol.errors import Problem, ValidationError
from protocol.hierflags import check_flags, flag_keys

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"\s*(\d+)\s*([smhd]?)\s*")


def duration_s(text: str) -> int | None:
    """``90``, ``30m``, ``12h``, ``7d`` → seconds (a bare number is seconds); None when
    ``text`` is not such a duration (each caller says what it expected)."""
    m = _DURATION.fullmatch(text)
    return int(m.group(1)) * UNITS_S[m.group(2) or "s"] if m else None


def target_problems(targets: dict[str, Any]) -> list[Problem]:
    """What is wrong with a ``targets`` table (``all``, ``computers``, ``groups``, ``filters``)
    of a policy or a schedule, each at its field path."""
    problems = []
    for key, value in targets.items():
        if key == "all":
            if not isinstance(value, bool):
                problems.append(Problem("targets.all", "must be true or false"))
        elif key in ("computers", "groups", "filters"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(Problem(f"targets.{key}", "must be a list of names"))
        else:
            problems.append(
                Problem(f"targets.{key}", "unknown (known: all, computers, filters, groups)")
            )
    return problems


def validate_policy(doc: Any, task_kind: str | None) -> dict[str, Any]:
    """Check a policy document; ``task_kind`` is the kind of the task it names (None: no such task)."""
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        raise ValidationError("policy document", [Problem("(document)", "must be a table")])
    for key in doc:
        if key not in ("name", "task", "enabled", "schedule", "targets", "description"):
            if key in flag_keys(True):
                continue  # checked below, with a clearer message
            problems.append(
                Problem(
                    str(key),
                    "unknown field (known: description, enabled, name, replicate, schedule,"
                    " targets, task)",
                )
            )
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(
            Problem("name", "must be 1-128 characters: letters, digits, space, '.', '_', '-'")
        )
    task = doc.get("task")
    if not isinstance(task, str):
        problems.append(Problem("task", "required: the name of a saved client task"))
    elif task_kind is None:
        problems.append(Problem("task", f"no task named {task!r}; save it first"))
    elif task_kind != "client":
        problems.append(
            Problem(
                "task", f"{task!r} is a {task_kind} task; a policy runs a client task on agents"
            )
        )
    if not isinstance(doc.get("enabled", True), bool):
        problems.append(Problem("enabled", "must be true or false"))
    schedule = doc.get("schedule")
    if not isinstance(schedule, dict) or len(schedule) != 1:
        problems.append(
            Problem(
                "schedule", 'must hold exactly one of every_s (seconds) or daily_at ("HH:MM", UTC)'
            )
        )
    elif "every_s" in schedule:
        every = schedule["every_s"]
        if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= 31 * 86400:
            problems.append(Problem("schedule.every_s", "must be an integer from 1 to 2678400"))
    elif "daily_at" in schedule:
        if not isinstance(schedule["daily_at"], str) or not _TIME.match(schedule["daily_at"]):
            problems.append(Problem("schedule.daily_at", 'must be a UTC time "HH:MM"'))
    else:
        problems.append(Problem("schedule", "must hold every_s or daily_at"))
    targets = doc.get("targets", {})
    if not isinstance(targets, dict):
        problems.append(Problem("targets", "must be a table"))
    else:
        problems.extend(target_problems(targets))
    flags = check_flags(doc, problems, startable=False)
    if problems:
        raise ValidationError(f"policy {name!r}", problems)
    return {
        "name": name,
        "task": task,
        "enabled": bool(doc.get("enabled", True)),
        "schedule": schedule,
        "targets": targets,
        "description": str(doc.get("description", "")),
        **flags,
    }


def next_due(schedule: dict[str, Any], last_run: float | None, now: float) -> float:
    """When a policy should run next (UNIX seconds), given when it last ran."""
    if "every_s" in schedule:
        return now if last_run is None else last_run + int(schedule["every_s"])
    hours, minutes = map(int, str(schedule["daily_at"]).split(":"))
    day = now - now % 86400
    due = day + hours * 3600 + minutes * 60
    if last_run is not None and last_run >= due:
        due += 86400
    elif last_run is None and due < now:
        due += 86400
    return due
