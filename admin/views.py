"""How runs look to people (tables, live progress) and to scripts (``--json``).

A plain run has one instance per target. A client-job run has one instance per target (the
job on that computer) with one child row per step. A server-job run has one instance per
step and target (a client job inside it adds child rows under each of those).
"""

from __future__ import annotations

import sys
from typing import Any

from admin.client import AdminClient
from admin.output import iso, table

TERMINAL = ("succeeded", "failed", "timed_out", "stopped")


def is_job(run: dict[str, Any]) -> bool:
    return bool(run["kind"] == "server-job" or run["definition"].get("type") == "client-job")


def _step_json(i: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": i["step"],
        "status": i["status"],
        "return_code": i["return_code"],
        "output": i["output"],
        "reason": i["reason"] or None,
        "started": iso(i["started_at"]),
        "finished": iso(i["ended_at"]),
    }


def _instance_json(i: dict[str, Any]) -> dict[str, Any]:
    return {
        "computer": i["computer"],
        "instance_id": i["id"],
        "status": i["status"],
        "return_code": i["return_code"],
        "output": i["output"],
        "reason": i["reason"],
        "started": iso(i["started_at"]),
        "finished": iso(i["ended_at"]),
    }


def _order(run: dict[str, Any]) -> dict[str, int]:
    return {s["step"]: n for n, s in enumerate(run.get("steps", []))}


def _by_time(i: dict[str, Any]) -> tuple[float, int]:
    return (i["started_at"] or i["ended_at"] or float("inf"), i["id"])


def computers_json(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Per computer: the job's status there and every step result, in the order they ran."""
    tops = [i for i in run["instances"] if i["parent_id"] is None]
    children = [i for i in run["instances"] if i["parent_id"] is not None]
    out: dict[str, dict[str, Any]] = {}
    if run["kind"] == "server-job":
        for i in sorted(tops, key=_by_time):
            entry = out.setdefault(i["computer"], {"computer": i["computer"], "steps": []})
            entry["steps"].append(_step_json(i))
            for child in sorted((c for c in children if c["parent_id"] == i["id"]), key=_by_time):
                entry["steps"].append(_step_json(child))
        for entry in out.values():
            # A server job runs as one: a failed step handled by a condition does not fail it.
            entry["status"] = run["status"]
    else:
        for i in tops:
            steps = sorted((c for c in children if c["parent_id"] == i["id"]), key=_by_time)
            out[i["computer"]] = {
                "computer": i["computer"],
                "status": i["status"],
                "reason": i["reason"] or None,
                "steps": [_step_json(c) for c in steps],
            }
    return [out[k] for k in sorted(out)]


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` form of a run."""
    data: dict[str, Any] = {
        "run_id": run["id"],
        "task": run["task_name"],
        "kind": run["kind"]
        if run["kind"] == "server-job"
        else run["definition"].get("type", run["kind"]),
        "status": run["status"],
        "created": iso(run["created_at"]),
        "ended": iso(run["ended_at"]),
    }
    if is_job(run):
        data["computers"] = computers_json(run)
    else:
        data["instances"] = [_instance_json(i) for i in run["instances"]]
    return data


def _row(i: dict[str, Any]) -> dict[str, Any]:
    duration = (
        f"{i['ended_at'] - i['started_at']:.2f}s" if i["started_at"] and i["ended_at"] else "-"
    )
    out = (i["output"] or "").strip().splitlines()
    return {
        "computer": i["computer"],
        "step": i.get("step") or "",
        "status": i["status"],
        "rc": i["return_code"],
        "time": duration,
        "detail": i["reason"] or (out[0] if out else ""),
    }


def print_run(run: dict[str, Any]) -> None:
    """A run as a table: one row per computer, or per step and computer for jobs."""
    what = "job" if is_job(run) else "task"
    kind = (
        run["kind"] if run["kind"] == "server-job" else run["definition"].get("type", run["kind"])
    )
    print(f"run {run['id']}: {what} {run['task_name']} ({kind}), status {run['status']}")
    columns = [
        ("computer", "computer"),
        ("status", "status"),
        ("rc", "rc"),
        ("time", "time"),
        ("detail", "output / reason"),
    ]
    if not is_job(run):
        print(table([_row(i) for i in run["instances"]], columns))
        return
    rows: list[dict[str, Any]] = []
    if run["kind"] == "server-job":
        order = _order(run)
        ordered = sorted(
            run["instances"],
            key=lambda i: (order.get(i["step"].split("/")[0], 1 << 30), i["step"], i["computer"]),
        )
        rows = [_row(i) for i in ordered]
        print(table(rows, [("step", "step"), *columns]))
        return
    tops = sorted(
        (i for i in run["instances"] if i["parent_id"] is None), key=lambda i: i["computer"]
    )
    for top in tops:
        rows.append({**_row(top), "step": "(job)"})
        steps = sorted((c for c in run["instances"] if c["parent_id"] == top["id"]), key=_by_time)
        rows.extend({**_row(c), "computer": ""} for c in steps)
    print(table(rows, [("computer", "computer"), ("step", "step"), *columns[1:]]))


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def progress(rows: dict[int, dict[str, Any]], server_job: bool, client_job: bool) -> list[str]:
    """Progress lines: one bar for a task; one bar per step for server jobs; a row per computer for client jobs."""
    tops = [r for r in rows.values() if r["parent_id"] is None]
    if server_job:
        steps: dict[str, list[str]] = {}
        for r in sorted(tops, key=lambda r: r["id"]):
            steps.setdefault(r["step"], []).append(r["status"])
        return [
            f"step {step}: {_bar(sum(s in TERMINAL for s in st), len(st))} "
            f"{sum(s in TERMINAL for s in st)}/{len(st)} done, {sum(s == 'succeeded' for s in st)} succeeded"
            for step, st in steps.items()
        ]
    if client_job:
        lines = []
        for top in sorted(tops, key=lambda r: r["computer"]):
            kids = [r for r in rows.values() if r["parent_id"] == top["id"]]
            current = max(kids, key=lambda r: r["id"]) if kids else None
            where = f"{current['step']} {current['status']}" if current else "-"
            lines.append(f"{top['computer']}: {top['status']} (step {where})")
        return lines
    states = [r["status"] for r in tops]
    done = sum(s in TERMINAL for s in states)
    ok = sum(s == "succeeded" for s in states)
    running = sum(s == "running" for s in states)
    return [
        f"{_bar(done, len(states))} {done}/{len(states)} done, {ok} succeeded, {done - ok} not, {running} running"
    ]


async def follow(c: AdminClient, run_id: int, *, quiet: bool) -> dict[str, Any]:
    """Watch a run to its end, printing live progress unless ``quiet``; return the final run."""
    tty = sys.stdout.isatty()
    rows: dict[int, dict[str, Any]] = {}
    last: list[str] = []
    final: dict[str, Any] = {}
    server_job = client_job = False
    async for kind, data in c.watch(run_id):
        if kind in ("snapshot", "run"):
            server_job = data["kind"] == "server-job"
            client_job = data["definition"].get("type") == "client-job"
            rows = {i["id"]: dict(i) for i in data["instances"]}
            if kind == "run":
                final = data
        elif kind == "instance":
            row = rows.setdefault(
                data["instance_id"],
                {
                    "id": data["instance_id"],
                    "parent_id": data.get("parent_id"),
                    "step": data.get("step", ""),
                    "computer": data["computer"],
                },
            )
            row["status"] = data["state"]
        lines = progress(rows, server_job, client_job)
        if quiet or lines == last:
            continue
        if tty and len(lines) == 1 and len(last) <= 1:
            print("\r" + lines[0], end="", flush=True)
        else:
            changed = [ln for ln in lines if ln not in last]
            print(("\n" if tty and len(last) == 1 else "") + "\n".join(changed), flush=True)
        last = lines
    if not quiet and tty:
        print()
    return final
