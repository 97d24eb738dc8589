"""Filters: saved queries over computers, in the job condition language.

A filter's ``query`` is a condition whose references name ``computer.<field>``::

    computer.os contains 'Linux' and computer.cpus >= 4 and computer.groups contains 'web'

Fields are those of :data:`FIELDS`: the computer's record, its groups, and its latest basic
inventory. Lists (addresses, MACs, groups) are one space-separated string, so ``contains``
tests membership of a word or part of one.
"""

from __future__ import annotations

import re
from typing import Any

from protocol.conditions import Condition, ConditionError, evaluate, parse_condition
from protocol.errors import Problem, ValidationError
from protocol.hierflags import check_flags, flag_keys

FIELDS: dict[str, str] = {
    "name": "the computer's name",
    "os": "operating system as the agent registered it",
    "agent_version": "the agent's version",
    "has_agent": "1 for an agent, 0 for a device",
    "online": "1 when connected now",
    "taskserver": "the TS that serves it ('' for the built-in service or none)",
    "addresses": "its addresses, space-separated",
    "groups": "the organizational groups it is in, space-separated",
    "hostname": "inventory: host name",
    "fqdn": "inventory: fully qualified name",
    "os_name": "inventory: OS name",
    "os_version": "inventory: OS version",
    "architecture": "inventory: machine architecture",
    "cpus": "inventory: number of CPUs",
    "memory_bytes": "inventory: memory in bytes",
    "macs": "inventory: MAC addresses, space-separated",
    "users": "inventory: logged-on users, space-separated",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")


def validate_filter(doc: Any) -> tuple[dict[str, Any], Condition]:
    """Check a filter document ``{name, query, description?}``; return it and its parsed query."""
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        raise ValidationError("filter document", [Problem("(document)", "must be a table")])
    for key in doc:
        if key not in ("name", "query", "description", *flag_keys(True)):
            problems.append(
                Problem(str(key), "unknown field (known: description, name, query, replicate)")
            )
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(
            Problem("name", "must be 1-128 characters: letters, digits, space, '.', '_', '-'")
        )
    flags = check_flags(doc, problems, startable=False)
    query = doc.get("query")
    condition: Condition | None = None
    if not isinstance(query, str):
        problems.append(Problem("query", "required: a condition over computer.<field>"))
    else:
        try:
            condition = parse_condition(query)
        except ConditionError as exc:
            problems.append(Problem("query", str(exc)))
        else:
            for ref, field in sorted(condition.references()):
                if ref != "computer":
                    problems.append(
                        Problem("query", f"refers to {ref!r}: a filter tests only computer.<field>")
                    )
                elif field not in FIELDS:
                    problems.append(
                        Problem(
                            "query", f"unknown field computer.{field}; known: {', '.join(FIELDS)}"
                        )
                    )
    if problems or condition is None:
        raise ValidationError(f"filter {name!r}", problems)
    stored = {"name": name, "query": query, "description": str(doc.get("description", ""))}
    return {**stored, **flags}, condition


def record(
    computer: dict[str, Any], groups: list[str], inventory: dict[str, Any] | None
) -> dict[str, Any]:
    """The values a filter sees for one computer."""
    inv = inventory or {}
    raw_os = inv.get("os")
    os_info: dict[str, Any] = raw_os if isinstance(raw_os, dict) else {}
    return {
        "name": computer.get("name", ""),
        "os": computer.get("os", ""),
        "agent_version": computer.get("agent_version", ""),
        "has_agent": 1 if computer.get("has_agent") else 0,
        "online": 1 if computer.get("online") else 0,
        "taskserver": computer.get("taskserver") or "",
        "addresses": " ".join(map(str, computer.get("addresses", []))),
        "groups": " ".join(groups),
        "hostname": str(inv.get("hostname", "")),
        "fqdn": str(inv.get("fqdn", "")),
        "os_name": str(os_info.get("name", "")),
        "os_version": str(os_info.get("version", "")),
        "architecture": str(inv.get("architecture", "")),
        "cpus": inv.get("cpus") if isinstance(inv.get("cpus"), int) else None,
        "memory_bytes": inv.get("memory_bytes")
        if isinstance(inv.get("memory_bytes"), int)
        else None,
        "macs": " ".join(map(str, inv.get("macs", []) or [])),
        "users": " ".join(map(str, inv.get("users", []) or [])),
    }


def matches(condition: Condition, values: dict[str, Any]) -> bool:
    """Whether a computer (its :func:`record`) is in the filter."""
    return evaluate(condition, {"computer": values})
