"""Task documents: the catalog of task types, their parameter schemas, and validation.

A task document is TOML (or JSON with the same structure)::

    name = "hello"
    type = "run-script"
    timeout_s = 60
    [params]
    interpreter = "sh"
    script = "echo hello from %COMPUTERNAME%"

:func:`parse_task` returns a :class:`TaskDefinition` or raises
:class:`~protocol.errors.ValidationError` listing every problem by field path.
"""

from __future__ import annotations

import builtins
import copy
import json
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocol.errors import Problem, ValidationError
from protocol.hierflags import REMOTE_START, REPLICATE, check_flags, flag_keys


class Kind(StrEnum):
    """Where a task type runs (see DOMAIN.md, "Three kinds of task")."""

    SERVER = "server"
    CLIENT = "client"
    TASKSERVER = "taskserver"


@dataclass(frozen=True, slots=True)
class Param:
    """Schema of one parameter."""

    type: builtins.type | tuple[builtins.type, ...]
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    item_type: builtins.type | None = None
    doc: str = ""
    pattern: str = ""
    """For strings: a regular expression the whole value must match."""


@dataclass(frozen=True, slots=True)
class TaskType:
    """One task type: stable id, kind, parameter schema."""

    id: str
    kind: Kind
    params: dict[str, Param]
    doc: str
    aliases: dict[str, str] = field(default_factory=dict)
    """Old parameter names still accepted on save: ``{old: new}``; saved under the new name."""


INTERPRETERS = ("sh", "bash", "python", "powershell", "cmd")

_SCRIPT_PARAMS: dict[str, Param] = {
    "interpreter": Param(
        str, default="sh", choices=INTERPRETERS, doc="program that runs the script"
    ),
    "script": Param(str, required=True, doc="script text; tokens like %COMPUTERNAME% are replaced"),
    "env": Param(dict, default={}, item_type=str, doc="extra environment variables"),
    "working_dir": Param(
        str,
        default="",
        pattern=r"(?:(?:/|[A-Za-z]:[\\/]|\\\\)[^\x00]{0,4095})?",
        doc="an absolute folder path, or empty for a fresh temporary folder",
    ),
    "success_codes": Param(list, default=[0], item_type=int, doc="return codes that mean success"),
    "output_limit_bytes": Param(
        int, default=65_536, minimum=0, maximum=512 * 1024, doc="output kept; the rest is cut"
    ),
}

USER_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?"
"""A user name as POSIX systems take it (``useradd``'s rule, capitals allowed, an optional
trailing ``$`` for machine accounts)."""

_CLIENT_SCRIPT_PARAMS: dict[str, Param] = {
    **_SCRIPT_PARAMS,
    "run_as": Param(
        str,
        default="",
        pattern=f"(?:{USER_NAME})?",
        doc="a user name; empty: the agent's own account",
    ),
}
"""run-script on an agent may start the script as another user (the agent must be root)."""

_SCRIPT_ALIASES = {"cwd": "working_dir"}
"""``cwd`` was the first name of ``working_dir``: documents that use it are still accepted."""

_HTTP_PARAMS: dict[str, Param] = {
    "method": Param(str, default="GET", choices=("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")),
    "url": Param(str, required=True, pattern=r"https?://\S+", doc="an http:// or https:// URL"),
    "headers": Param(dict, default={}, item_type=str),
    "body": Param(str, default=""),
    "request_timeout_s": Param(int, default=30, minimum=1, maximum=3600),
    "expected_status": Param(
        list, default=[], item_type=int, doc="status codes that mean success; empty: 2xx"
    ),
    "output_limit_bytes": Param(int, default=65_536, minimum=0, maximum=512 * 1024),
}
_SERVICE = r"[A-Za-z0-9@_.:-]{1,200}"

CATALOG: dict[str, TaskType] = {
    t.id: t
    for t in (
        TaskType(
            "run-script",
            Kind.CLIENT,
            _CLIENT_SCRIPT_PARAMS,
            "Run a script on each target computer's agent (as another user with run_as).",
            _SCRIPT_ALIASES,
        ),
        TaskType(
            "run-script-on-taskserver",
            Kind.TASKSERVER,
            _SCRIPT_PARAMS,
            "Run a script on the Task Server once per target, with that target's tokens; "
            "reaches devices with no agent.",
            _SCRIPT_ALIASES,
        ),
        TaskType(
            "run-script-on-server",
            Kind.SERVER,
            _SCRIPT_PARAMS,
            "Run a script once on the Notification Server.",
            _SCRIPT_ALIASES,
        ),
        TaskType(
            "write-server-log",
            Kind.SERVER,
            {
                "level": Param(str, default="info", choices=("debug", "info", "warning", "error")),
                "message": Param(str, required=True, doc="text; tokens like %RUNID% are replaced"),
            },
            "Write an entry to the Notification Server's log.",
        ),
        TaskType(
            "raise-message",
            Kind.SERVER,
            {
                "severity": Param(
                    str, default="warning", choices=("info", "warning", "error", "critical")
                ),
                "text": Param(
                    str, required=True, doc="the message; tokens like %RUNID% are replaced"
                ),
            },
            "Raise a message (alert) visible in `taskfleet messages`.",
        ),
        TaskType(
            "call-web-service-server",
            Kind.SERVER,
            _HTTP_PARAMS,
            "Make an HTTP(S) request from the NS.",
        ),
        TaskType(
            "call-web-service-client",
            Kind.CLIENT,
            _HTTP_PARAMS,
            "Make an HTTP(S) request from each agent.",
        ),
        TaskType(
            "run-sql-query-on-server",
            Kind.SERVER,
            {
                "query": Param(str, required=True, doc="one SQL statement"),
                "allow_write": Param(
                    bool, default=False, doc="without it the database is opened read-only"
                ),
                "row_limit": Param(int, default=1000, minimum=1, maximum=100_000),
            },
            "Run SQL on the NS database, read-only unless allow_write; columns and rows as output.",
        ),
        TaskType(
            "send-email",
            Kind.SERVER,
            {
                "to": Param(list, required=True, item_type=str, doc="recipients"),
                "subject": Param(str, required=True),
                "body": Param(str, default="", doc="text; tokens like %RUNID% are replaced"),
                "attach_report": Param(
                    str, default="", doc="a report whose latest snapshot goes along as CSV"
                ),
            },
            "Send mail through the NS's configured SMTP server (--smtp).",
        ),
        TaskType(
            "tickle-client",
            Kind.SERVER,
            {
                "computers": Param(
                    list,
                    default=[],
                    item_type=str,
                    doc="names; empty: the run's targets, or every agent",
                )
            },
            "Tell agents to check in now: they fetch configuration and pending work.",
        ),
        TaskType(
            "replicate-hierarchy",
            Kind.SERVER,
            {},
            "Reconcile every child NS now, recursively, and report each (docs/hierarchy.md).",
        ),
        TaskType(
            "send-basic-inventory",
            Kind.CLIENT,
            {},
            "Collect host name, OS, CPUs, memory, disks, addresses, uptime, users; the NS keeps it.",
        ),
        TaskType(
            "get-ip-configuration",
            Kind.CLIENT,
            {},
            "Report interfaces, addresses, masks, MACs, gateways and DNS servers.",
        ),
        TaskType(
            "update-client-configuration",
            Kind.CLIENT,
            {},
            "Have the agent fetch its configuration from the NS now.",
        ),
        TaskType(
            "reset-task-agent",
            Kind.CLIENT,
            {},
            "Stop every running task, clear the agent's queue and job state, re-register.",
        ),
        TaskType(
            "control-service-state",
            Kind.CLIENT,
            {
                "service": Param(str, required=True, pattern=_SERVICE, doc="a service name"),
                "action": Param(str, required=True, choices=("start", "stop", "restart", "query")),
            },
            "Start, stop, restart or query a service through the platform's service manager.",
        ),
        TaskType(
            "unix-service-control",
            Kind.CLIENT,
            {
                "service": Param(str, required=True, pattern=_SERVICE, doc="a service name"),
                "action": Param(
                    str,
                    required=True,
                    choices=("start", "stop", "restart", "reload", "enable", "disable", "status"),
                ),
            },
            "Control a service through systemctl, service or launchctl.",
        ),
        TaskType(
            "defragment-computer",
            Kind.CLIENT,
            {
                "volume": Param(
                    str,
                    default="/",
                    pattern=r"[A-Za-z0-9_./:\\-]{1,200}",
                    doc="a volume or mount point",
                )
            },
            "Run the platform's defragment / trim command for a volume.",
        ),
        TaskType(
            "power-control",
            Kind.CLIENT,
            {
                "action": Param(str, required=True, choices=("restart", "shutdown", "logoff")),
                "delay_s": Param(int, default=60, minimum=0, maximum=86_400),
                "message": Param(
                    str, default="", doc="shown to logged-on users where the platform can"
                ),
            },
            "Restart, shut down or log off, after a delay; the agent reports before it acts.",
        ),
        TaskType(
            "wake-on-lan",
            Kind.TASKSERVER,
            {
                "mac": Param(
                    str,
                    default="%MACADDRESS%",
                    doc="the target's MAC; default: the one the NS knows",
                ),
                "broadcast": Param(
                    str, default="255.255.255.255", doc="where the magic packet goes"
                ),
                "port": Param(int, default=9, minimum=1, maximum=65535),
            },
            "Send the Wake-on-LAN magic packet for each target from the task server's network.",
        ),
        TaskType(
            "assign-to-group",
            Kind.SERVER,
            {
                "group": Param(str, required=True, doc="the organizational group"),
                "computers": Param(
                    list, default=[], item_type=str, doc="computer names; empty: the run's targets"
                ),
                "create": Param(bool, default=False, doc="create the group when it does not exist"),
            },
            "Add computers to an organizational group (creating it if asked).",
        ),
        TaskType(
            "update-filter-membership",
            Kind.SERVER,
            {"filter": Param(str, default="", doc="one filter; empty: every filter")},
            "Recompute the cached membership of one or every filter.",
        ),
        TaskType(
            "run-report",
            Kind.SERVER,
            {
                "report": Param(str, required=True),
                "row_limit": Param(int, default=10_000, minimum=1, maximum=100_000),
            },
            "Run a saved report (read-only SQL) and keep a snapshot of its rows.",
        ),
        TaskType(
            "purge-report",
            Kind.SERVER,
            {
                "older_than_days": Param(int, required=True, minimum=0, maximum=36_500),
                "runs": Param(bool, default=False, doc="also delete ended runs and their results"),
            },
            "Delete report snapshots (and, if asked, run history) older than N days.",
        ),
        TaskType(
            "delete-item",
            Kind.SERVER,
            {
                "item": Param(
                    str, required=True, doc="an id (task:NAME) or a path (/Jobs and Tasks/NAME)"
                )
            },
            "Delete an item; a task or job still used by a job is refused, naming the job.",
        ),
        TaskType(
            "move-item",
            Kind.SERVER,
            {
                "item": Param(str, required=True, doc="an id (task:NAME) or a path"),
                "folder": Param(
                    str, required=True, pattern=r"/[^\x00]{0,255}", doc="an absolute folder path"
                ),
            },
            "Move an item to another folder (made if it does not exist).",
        ),
        TaskType(
            "enable-disable-policy",
            Kind.SERVER,
            {"policy": Param(str, required=True), "enabled": Param(bool, required=True)},
            "Enable or disable a policy; the agents it targets are tickled to fetch it now.",
        ),
        TaskType(
            "restart-server-services",
            Kind.SERVER,
            {
                "services": Param(
                    list,
                    default=["scheduler", "task-service"],
                    item_type=str,
                    doc="any of scheduler, task-service, listeners",
                )
            },
            "Restart internal services of the NS in place; agents and task servers reconnect.",
        ),
        TaskType(
            "file-resource-cleanup",
            Kind.SERVER,
            {
                "older_than_days": Param(int, default=30, minimum=0, maximum=36_500),
                "unreferenced": Param(bool, default=True, doc="also delete files no item names"),
            },
            "Delete files in the NS's resource folder that are old, or that no item references.",
        ),
        TaskType(
            "noop",
            Kind.CLIENT,
            {"delay_ms": Param(int, default=0, minimum=0, maximum=3_600_000)},
            "Do nothing (after an optional delay) and succeed: measures the control plane.",
        ),
    )
}
"""Every task type, by id. A new type is one entry here plus its runner."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
DEFAULT_TIMEOUT_S = 300
MAX_TIMEOUT_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    """A validated task: the form stored by the NS and sent in ``dispatch``."""

    name: str
    type: str
    kind: Kind
    timeout_s: int
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    replicate: bool = False
    """Sent by a parent NS to its children (``protocol.hierflags``)."""
    remote_start: bool = False
    """The parent NS may start it through a child."""

    def to_dict(self) -> dict[str, Any]:
        """Plain form for storage and the wire (a hierarchy flag only when it is set)."""
        out = {
            "name": self.name,
            "type": self.type,
            "kind": str(self.kind),
            "timeout_s": self.timeout_s,
            "params": self.params,
            "description": self.description,
        }
        if self.replicate:
            out[REPLICATE] = True
        if self.remote_start:
            out[REMOTE_START] = True
        return out


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", dict: "a table", list: "a list", bool: "a boolean"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _is(value: Any, t: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and t is not bool and not (isinstance(t, tuple) and bool in t):
        return False
    return isinstance(value, t)


def _renamed(ttype: TaskType, params: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """``params`` with old parameter names (``TaskType.aliases``) under their new name, so a
    document written before a rename still saves; giving both names is a problem."""
    if not any(old in params for old in ttype.aliases):
        return params
    out = dict(params)
    for old, new in ttype.aliases.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out:
            problems.append(Problem(f"params.{old}", f"the old name of {new}: give only {new}"))
        else:
            out[new] = value
    return out


def validate_params(ttype: TaskType, params: Any, problems: list[Problem]) -> dict[str, Any]:
    """Check ``params`` against the type's schema; append problems; return params with defaults."""
    if not isinstance(params, dict):
        problems.append(Problem("params", "must be a table"))
        return {}
    params = _renamed(ttype, params, problems)
    out: dict[str, Any] = {}
    for key in params:
        if key not in ttype.params:
            known = ", ".join(sorted(ttype.params)) or "none"
            problems.append(
                Problem(f"params.{key}", f"unknown parameter for {ttype.id} (known: {known})")
            )
    for key, spec in ttype.params.items():
        path = f"params.{key}"
        if key not in params:
            if spec.required:
                problems.append(Problem(path, "required parameter is missing"))
            else:
                out[key] = copy.deepcopy(spec.default)
            continue
        value = params[key]
        if not _is(value, spec.type):
            problems.append(Problem(path, f"must be {_type_name(spec.type)}"))
            continue
        if spec.choices and value not in spec.choices:
            problems.append(Problem(path, f"must be one of {', '.join(map(str, spec.choices))}"))
            continue
        if spec.pattern and isinstance(value, str) and not re.fullmatch(spec.pattern, value):
            problems.append(
                Problem(path, f"must match {spec.pattern} ({spec.doc or 'see docs/tasks.md'})")
            )
            continue
        if spec.minimum is not None and value < spec.minimum:
            problems.append(Problem(path, f"must be at least {spec.minimum}"))
            continue
        if spec.maximum is not None and value > spec.maximum:
            problems.append(Problem(path, f"must be at most {spec.maximum}"))
            continue
        if spec.item_type is not None:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            bad = [k for k, v in items if not _is(v, spec.item_type)]
            for k in bad:
                where = f"{path}.{k}" if isinstance(value, dict) else f"{path}[{k}]"
                problems.append(Problem(where, f"must be {_type_name(spec.item_type)}"))
            if bad:
                continue
        out[key] = value
    return out


def validate_task(doc: Any) -> TaskDefinition:
    """Validate a task document (already parsed into a dict)."""
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        raise ValidationError("task document", [Problem("(document)", "must be a table")])
    known = {"name", "type", "timeout_s", "params", "description", *flag_keys(True)}
    for key in doc:
        if key not in known:
            problems.append(Problem(str(key), f"unknown field (known: {', '.join(sorted(known))})"))
    name = doc.get("name")
    if name is None:
        problems.append(Problem("name", "required field is missing"))
    elif not isinstance(name, str) or not _NAME.match(name):
        problems.append(
            Problem("name", "must be 1-128 characters: letters, digits, space, '.', '_', '-'")
        )
    ttype: TaskType | None = None
    tid = doc.get("type")
    if tid is None:
        problems.append(Problem("type", "required field is missing"))
    elif not isinstance(tid, str) or tid not in CATALOG:
        problems.append(
            Problem("type", f"unknown task type {tid!r}; known: {', '.join(sorted(CATALOG))}")
        )
    else:
        ttype = CATALOG[tid]
    timeout = doc.get("timeout_s", DEFAULT_TIMEOUT_S)
    if not _is(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT_S:
        problems.append(Problem("timeout_s", f"must be an integer from 1 to {MAX_TIMEOUT_S}"))
    description = doc.get("description", "")
    if not isinstance(description, str):
        problems.append(Problem("description", "must be a string"))
    params: dict[str, Any] = {}
    if ttype is not None:
        params = validate_params(ttype, doc.get("params", {}), problems)
    flags = check_flags(doc, problems, startable=True)
    if problems:
        label = f"task {name!r}" if isinstance(name, str) else "task document"
        raise ValidationError(label, problems)
    assert ttype is not None and isinstance(name, str)
    return TaskDefinition(name, ttype.id, ttype.kind, int(timeout), params, description, **flags)


def parse_document(text: str, *, filename: str = "") -> Any:
    """Parse a TOML document (or JSON, by ``.json`` suffix or a leading ``{``)."""
    try:
        if filename.endswith(".json") or text.lstrip().startswith("{"):
            return json.loads(text)
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(
            f"document {filename or ''}".strip(),
            [Problem("(document)", f"cannot parse: {exc}")],
        ) from None


def parse_task(text: str, *, filename: str = "") -> TaskDefinition:
    """Parse a task document (TOML or JSON) and validate it."""
    return validate_task(parse_document(text, filename=filename))


TOKENS = ("COMPUTERNAME", "COMPUTERID", "TASKSERVER", "RUNID", "MACADDRESS")
_TOKEN = re.compile(r"%(" + "|".join(TOKENS) + r")%")


def replace_tokens(text: str, tokens: dict[str, str]) -> str:
    """Replace ``%COMPUTERNAME%`` and the other known tokens; unknown ``%X%`` stay as they are."""
    return _TOKEN.sub(lambda m: tokens.get(m.group(1), m.group(0)), text)


def output_limit(params: dict[str, Any]) -> int:
    """Bytes of output a run-script instance keeps."""
    value = params.get("output_limit_bytes", 65_536)
    return int(value) if isinstance(value, int) else 65_536


_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-]?)[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")


def unicast_mac(text: Any) -> str:
    """``text`` as a MAC that can name one network card (``aa:bb:cc:dd:ee:ff``, lower case), or
    ``""``: six hex pairs separated all by ``:``, all by ``-`` or not at all, not all zero (what
    a loopback or a virtual interface without a card reports) and not a group address (the low
    bit of the first byte: multicast, and the broadcast ``ff:ff:ff:ff:ff:ff``). A wake-on-LAN
    packet for any of those would wake nothing."""
    if not isinstance(text, str) or not _MAC.fullmatch(text.strip()):
        return ""
    raw = bytes.fromhex(text.strip().replace(":", "").replace("-", ""))
    if not any(raw) or raw[0] & 1:
        return ""
    return ":".join(f"{b:02x}" for b in raw)


def inventory_mac(data: Any) -> str:
    """The MAC an agent's send-basic-inventory result gives its computer (wake-on-lan's
    ``%MACADDRESS%``): its ``mac`` (the agent's pick: the card that carries its addresses) if
    that is a :func:`unicast_mac`, else the first of its ``macs`` that is one; ``""`` for none.
    The agent's word is checked here again: the NS stores nothing it would not send a packet to."""
    if not isinstance(data, dict):
        return ""
    macs = data.get("macs")
    for candidate in [data.get("mac"), *(macs if isinstance(macs, list) else [])]:
        if mac := unicast_mac(candidate):
            return mac
    return ""
