"""The one JSON schema of every admin verb's ``--json`` output (documented in docs/json.md).

The admin protocol hands the CLI rows as the NS stores them: UNIX times in ``*_at`` fields, ids
named ``id``, flags as 0/1. A script should not have to know that, nor that ``runs`` and
``runs show`` read different tables. Every verb turns what it got into JSON here, so the rules
live in one place:

- every time is an ISO 8601 UTC string (``2026-12-05T02:55:28.534369Z``) or null, and its
  name drops the ``_at`` of the column (``created_at`` -> ``created``); a thing that ended has
  ``finished`` (a run, an instance, a step). The name changes with the type on purpose: a
  script that read a float from ``created_at`` fails loudly instead of misreading a string;
- the number that identifies an object is ``<object>_id`` (``run_id``, ``instance_id``,
  ``computer_id``, ``token_id`` ...), in every verb that shows it;
- a flag is a JSON boolean; an empty reason is null; binary columns are not shown.

Errors have one shape too (:func:`error`), and ``runs show --csv`` has its rows here
(:func:`csv_rows`), so its columns are the JSON fields of the same names.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from typing import IO, Any

from admin.output import iso
from protocol.states import TERMINAL

TIME_FIELDS = {
    "created_at": "created",
    "started_at": "started",
    "ended_at": "finished",
    "decided_at": "decided",
    "expires_at": "expires",
    "revoked_at": "revoked",
    "saved_at": "saved",
    "updated_at": "updated",
    "members_at": "computed",
    "next_at": "next",
    "last_at": "last",
    "last_seen": "last_seen",
    "deadline": "deadline",
    "at": "at",
}
"""A stored time's column -> its JSON name (the value becomes ISO 8601 UTC)."""

FLAGS = frozenset({"online", "has_agent", "enabled", "current", "replaced", "changed", "replicate"})
"""Fields that are yes/no, whatever number the store kept them as."""


def when(value: Any) -> str | None:
    """A stored time (UNIX seconds) as ISO 8601 UTC; null stays null, a string is kept (already
    converted), so converting twice is harmless."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a time: {value!r}")
    return iso(float(value))


def record(row: dict[str, Any], id_name: str | None = None) -> dict[str, Any]:
    """Any row by the general rules: times renamed and converted, ``id`` -> ``id_name`` (when
    given), flags as booleans, bytes left out. For rows with no converter of their own."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, bytes | bytearray):
            continue
        if key == "id" and id_name is not None:
            out[id_name] = value
        elif key in TIME_FIELDS:
            out[TIME_FIELDS[key]] = when(value)
        elif key in FLAGS and isinstance(value, int):
            out[key] = bool(value)
        elif key == "origin":  # the parent NS an item came from; null: this NS's own
            out[key] = value or None
        else:
            out[key] = value
    return out


def records(rows: list[dict[str, Any]], id_name: str | None = None) -> list[dict[str, Any]]:
    return [record(r, id_name) for r in rows]


# -- runs -------------------------------------------------------------------------------

RUN_FIELDS = (
    "run_id",
    "task",
    "kind",
    "version",
    "status",
    "created",
    "finished",
    "total",
    "succeeded",
    "failed",
    "pending",
)
"""The fields ``runs --json`` and ``runs show --json`` share, in both with the same meaning."""


def _counts(instances: list[dict[str, Any]]) -> dict[str, int]:
    """How many top-level instances ended well, ended otherwise, are still open: what the
    NS's run list counts, computed the same way from a run's rows."""
    tops = [i["status"] for i in instances if i.get("parent_id") is None]
    ok = sum(1 for s in tops if s == "succeeded")
    ended = sum(1 for s in tops if s in TERMINAL)
    return {"total": len(tops), "succeeded": ok, "failed": ended - ok, "pending": len(tops) - ended}


def run(row: dict[str, Any]) -> dict[str, Any]:
    """A run's shared fields, from a ``runs.list`` row or a ``run.show`` view."""
    counts = (
        {k: int(row[k]) for k in ("total", "succeeded", "failed", "pending")}
        if "total" in row
        else _counts(row.get("instances") or [])
    )
    data = {
        "run_id": row["id"],
        "task": row["task_name"],
        "kind": row["kind"],
        "version": row.get("version"),
        "status": row["status"],
        "created": when(row["created_at"]),
        "finished": when(row["ended_at"]),
        **counts,
    }
    if "schedule" in row:  # the schedule that started it (null: an administrator did)
        data["schedule"] = row["schedule"]
    return data


def is_job(view: dict[str, Any]) -> bool:
    return bool(view["kind"] == "server-job" or view["definition"].get("type") == "client-job")


def instance(i: dict[str, Any]) -> dict[str, Any]:
    """One computer's result of a task run."""
    return {
        "instance_id": i["id"],
        "computer": i["computer"],
        "status": i["status"],
        "return_code": i["return_code"],
        "output": i["output"],
        "reason": i["reason"] or None,
        "started": when(i["started_at"]),
        "finished": when(i["ended_at"]),
    }


def step(i: dict[str, Any]) -> dict[str, Any]:
    """One step of a job on one computer (``step`` is its id, ``outer/inner`` when nested)."""
    return {"step": i["step"], **instance(i)}


def by_time(i: dict[str, Any]) -> tuple[float, int]:
    """Rows in the order they ran (not started yet: last), then by id."""
    return (i["started_at"] or i["ended_at"] or float("inf"), i["id"])


def _children(view: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Each row's child rows (a client job's steps), in the order they ran; grouped once, as a
    scan per computer was quadratic."""
    out: dict[int, list[dict[str, Any]]] = {}
    for i in view["instances"]:
        if i["parent_id"] is not None:
            out.setdefault(i["parent_id"], []).append(i)
    for rows in out.values():
        rows.sort(key=by_time)
    return out


def run_computers(view: dict[str, Any]) -> list[dict[str, Any]]:
    """A job run per computer: the job's status there, its reason, every step in the order
    they ran (a server job's steps on that computer, or a client job's)."""
    tops = [i for i in view["instances"] if i["parent_id"] is None]
    children = _children(view)
    out: dict[str, dict[str, Any]] = {}
    if view["kind"] == "server-job":
        for i in sorted(tops, key=by_time):
            entry = out.setdefault(
                # A server job runs as one: a failed step handled by a condition does not fail it.
                i["computer"],
                {"computer": i["computer"], "status": view["status"], "reason": None, "steps": []},
            )
            entry["steps"].append(step(i))
            entry["steps"].extend(step(c) for c in children.get(i["id"], ()))
    else:
        for i in tops:
            out[i["computer"]] = {
                "computer": i["computer"],
                "status": i["status"],
                "reason": i["reason"] or None,
                "steps": [step(c) for c in children.get(i["id"], ())],
            }
    return [out[k] for k in sorted(out)]


def run_detail(view: dict[str, Any]) -> dict[str, Any]:
    """``runs show --json`` (and ``run --wait --json``, ``watch --json``): the shared fields,
    the definition that ran, and the results: ``instances`` for a task, ``computers`` (each
    with its ``steps``) for a job."""
    data = {**run(view), "definition": view["definition"]}
    if is_job(view):
        data["computers"] = run_computers(view)
    else:
        data["instances"] = [instance(i) for i in view["instances"]]
    return data


CSV_COLUMNS = (
    "run_id",
    "computer",
    "step",
    "instance_id",
    "status",
    "return_code",
    "started",
    "finished",
    "reason",
    "output",
)
"""``runs show --csv``: the JSON names of the same values; ``step`` is empty for a task's row
and for the row of a whole client job on a computer."""


def csv_rows(view: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per computer for a task; for a job, one per step on each computer (a client
    job's own row first, then its steps; a server job's steps in the order they ran)."""
    children = _children(view)
    tops = [i for i in view["instances"] if i["parent_id"] is None]
    ordered = sorted(tops, key=lambda i: (i["computer"], *by_time(i)))
    out: list[dict[str, Any]] = []
    for top in ordered:
        for i in (top, *children.get(top["id"], ())):
            out.append({"run_id": view["id"], **step(i)})
    return out


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is read as a formula by spreadsheets."""


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: a text that a spreadsheet would run as a formula (a script can
    print ``=HYPERLINK(...)``) gets a ``'`` in front, as OWASP advises against CSV injection;
    numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(view: dict[str, Any], stream: IO[str]) -> None:
    """The run's :func:`csv_rows` with a header line; every field is quoted as CSV needs (an
    output's lines, commas and quotes stay in their one field), formulas defused (:func:`csv_cell`)."""
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(view):
        writer.writerow({k: csv_cell(row[k]) for k in CSV_COLUMNS})


# -- a child NS's runs (issue 24) ------------------------------------------------------


def child_run(r: dict[str, Any]) -> dict[str, Any]:
    """A run on a child NS, from the summary it sent (``runs --child NAME --json``): the run
    fields of ``runs --json`` (its run id is the child's), and ``counts``, its computers per
    state."""
    counts = {str(k): int(v) for k, v in (r.get("counts") or {}).items()}
    ok = counts.get("succeeded", 0)
    ended = sum(n for state, n in counts.items() if state in TERMINAL)
    return {
        "run_id": r["run_id"],
        "task": r["name"],
        "kind": r["kind"],
        "status": r["status"],
        "created": when(r.get("started_at")),
        "finished": when(r.get("ended_at")),
        "total": sum(counts.values()),
        "succeeded": ok,
        "failed": ended - ok,
        "pending": sum(counts.values()) - ended,
        "counts": counts,
    }


def child_runs(data: dict[str, Any]) -> dict[str, Any]:
    """``runs --child NAME --json``: the child, whether it is linked now, when its summary was
    made (``at``) and its runs of this NS's items."""
    return {
        "child": data["child"],
        "connected": bool(data["connected"]),
        "at": when(data.get("at")),
        "runs": [child_run(r) for r in data["runs"]],
    }


def child_run_detail(view: dict[str, Any]) -> dict[str, Any]:
    """``runs --child NAME ID --json``: :func:`run_detail` of the child's run, and ``child``."""
    return {**run_detail(view), "child": view["child"]}


def child_started(data: dict[str, Any]) -> dict[str, Any]:
    """``run ITEM --child NAME --json``: the child's run id and what it started."""
    return {
        "child": data["child"],
        "run_id": data["run_id"],
        "task": data["task"],
        "kind": data["kind"],
        "targets": data["targets"],
        "no_agent": list(data.get("no_agent") or []),
    }


def child(r: dict[str, Any]) -> dict[str, Any]:
    """A child NS of ``children --json``: whether it is linked, the last change it acknowledged
    (``acked_seq``) and how long the oldest change it has not waits (``lag_s``), the names that
    clash with its own items, and its computers from its last summary (null before one)."""
    return {
        "name": r["name"],
        "ns_id": r.get("ns_id", ""),
        "connected": bool(r["connected"]),
        "acked_seq": int(r.get("acked_seq") or 0),
        "lag_s": float(r.get("lag_s") or 0.0),
        "clashes": [{"kind": c.get("kind"), "name": c.get("name")} for c in r.get("clashes") or []],
        "online": r.get("online"),
        "total": r.get("total"),
        "linked": when(r.get("linked_at")),
        "last_seen": when(r.get("last_seen")),
    }


def child_detail(r: dict[str, Any]) -> dict[str, Any]:
    """``children show NAME --json``: :func:`child`, the ids under it, and its last summary
    as it sent it (``at`` as ISO 8601; null before one)."""
    summary = r.get("summary")
    if isinstance(summary, dict):
        summary = {**summary, "at": when(summary.get("at"))}
    return {**child(r), "below": list(r.get("below") or []), "summary": summary}


# -- the fleet and trust ----------------------------------------------------------------


def computer(r: dict[str, Any]) -> dict[str, Any]:
    """A computer of ``computers`` (and ``computers add``)."""
    return {
        "computer_id": r["id"],
        "name": r["name"],
        "has_agent": bool(r["has_agent"]),
        "online": bool(r["online"]),
        "taskserver": r["taskserver"],
        "last_seen": when(r["last_seen"]),
        "os": r["os"],
        "agent_version": r["agent_version"],
        "addresses": r["addresses"],
    }


def taskserver(r: dict[str, Any]) -> dict[str, Any]:
    """A task server of ``taskservers`` (its key is in ``keys``, not here)."""
    return {
        "name": r["name"],
        "url": r["url"],
        "online": bool(r["online"]),
        "last_seen": when(r["last_seen"]),
        "tls_fingerprint": r.get("tls_fingerprint", ""),
        "computers": r["computers"],
    }


def key(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": r["role"],
        "name": r["name"],
        "state": r["state"],
        "fingerprint": r["fingerprint"],
        "address": r["address"],
        "created": when(r["created_at"]),
        "decided": when(r["decided_at"]),
    }


def token(r: dict[str, Any]) -> dict[str, Any]:
    """An enrolment token as listed, or as just created (then with the secret, shown once)."""
    data = {
        "token_id": r["id"],
        "role": r.get("role", "agent"),
        "uses_left": r["uses_left"] if "uses_left" in r else r["uses"],
        "expires": when(r["expires_at"]),
    }
    if "token" in r:
        data["token"] = r["token"]
    else:
        data.update(
            created=when(r["created_at"]),
            created_by=r["created_by"],
            revoked=when(r["revoked_at"]),
        )
    return data


def admin(r: dict[str, Any]) -> dict[str, Any]:
    """An admin as listed (``revoked``: when its token was revoked), or as just added (then with
    its token, shown once, and how many of its open sessions the new token ended)."""
    data = {"name": r["name"], "role": r["role"]}
    if "token" in r:
        data.update(token=r["token"], sessions_ended=r.get("sessions_ended", 0))
    else:
        data.update(created=when(r["created_at"]), revoked=when(r["revoked_at"]))
    return data


def audit_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "audit_id": r["id"],
        "at": when(r["at"]),
        "who": r["who"],
        "action": r["action"],
        "detail": r["detail"],
        "outcome": r["outcome"],
    }


def message(r: dict[str, Any]) -> dict[str, Any]:
    """A message of ``messages`` (and each one ``messages --watch --json`` prints)."""
    return {
        "message_id": r.get("id"),
        "at": when(r.get("at")),
        "severity": r["severity"],
        "text": r["text"],
        "source": r.get("source", ""),
    }


def log_entry(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "entry_id": r["id"],
        "at": when(r["at"]),
        "level": r["level"],
        "message": r["message"],
        "source": r["source"],
    }


# -- errors -----------------------------------------------------------------------------

_PROBLEM = re.compile(r"^\s+- (?P<path>[^:\n]+): (?P<problem>.+)$", re.MULTILINE)


def problems(message: str) -> list[dict[str, str]]:
    """The ``{path, problem}`` list of an invalid document, read from the NS's message (one
    ``  - path: problem`` line each, as :class:`protocol.errors.ValidationError` writes them)."""
    return [{"path": m["path"], "problem": m["problem"]} for m in _PROBLEM.finditer(message)]


def error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """``{"error": {"code", "message", "details"?}}``: what ``--json`` prints on stderr when a
    verb fails. An invalid document's details are its problems."""
    if details is None and code == "invalid_document":
        details = problems(message) or None
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def print_error(as_json: bool, code: str, message: str, details: Any = None) -> None:
    """Tell of a failure on stderr: with ``--json`` as one line of :func:`error`, so a script
    reads it as surely as the output; else as the usual ``taskfleet: message``."""
    if as_json:
        line = json.dumps(error(code, message, details), sort_keys=True, default=str)
        print(line, file=sys.stderr, flush=True)
    else:
        print(f"taskfleet: {message}", file=sys.stderr, flush=True)
