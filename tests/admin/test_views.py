"""Live progress and run tables as an administrator sees them (``admin/views.py``)."""

from __future__ import annotations

from admin.views import PER_COMPUTER_LINES, Progress, _bar, print_run


def run_view(kind: str, task_type: str, instances: list[dict]) -> dict:
    return {
        "id": 7,
        "task_name": "t",
        "kind": kind,
        "status": "running",
        "definition": {"type": task_type},
        "instances": instances,
    }


def row(iid: int, computer: str, status: str, step: str = "", parent: int | None = None) -> dict:
    return {
        "id": iid,
        "parent_id": parent,
        "step": step,
        "computer": computer,
        "status": status,
        "return_code": None,
        "output": "",
        "reason": "",
        "started_at": None,
        "ended_at": None,
    }


def change(iid: int, computer: str, state: str, step: str = "", parent: int | None = None):
    return {
        "instance_id": iid,
        "parent_id": parent,
        "step": step,
        "computer": computer,
        "state": state,
    }


def test_a_task_bar_counts_each_instance_by_its_latest_state():
    p = Progress(run_view("task", "noop", [row(i, f"pc-{i}", "pending") for i in (1, 2, 3)]))
    p.change(change(1, "pc-1", "running"))
    assert p.lines() == [f"{_bar(0, 3)} 0/3 done, 0 succeeded, 0 not, 1 running"]
    p.change(change(1, "pc-1", "succeeded"))
    p.change(change(2, "pc-2", "failed"))
    assert p.lines() == [f"{_bar(2, 3)} 2/3 done, 1 succeeded, 1 not, 0 running"]


def test_a_server_job_has_a_bar_per_step_in_the_order_the_steps_began():
    p = Progress(run_view("server-job", "server-job", [row(1, "a", "succeeded", "s1")]))
    p.change(change(2, "b", "succeeded", "s1"))
    p.change(change(4, "b", "running", "s2"))  # the second step's rows appear as they move
    p.change(change(3, "a", "failed", "s2"))
    assert p.lines() == [
        f"step s1: {_bar(2, 2)} 2/2 done, 2 succeeded",
        f"step s2: {_bar(1, 2)} 1/2 done, 0 succeeded",
    ]


def test_a_small_client_job_shows_each_computer_at_its_latest_step():
    p = Progress(
        run_view(
            "task",
            "client-job",
            [
                row(1, "b-pc", "running"),
                row(2, "a-pc", "running"),
                row(10, "b-pc", "succeeded", "s1", parent=1),
            ],
        )
    )
    p.change(change(11, "b-pc", "running", "s2", parent=1))
    p.change(change(10, "b-pc", "succeeded", "s1", parent=1))  # an older step: not the latest
    assert p.lines() == ["a-pc: running (step -)", "b-pc: running (step s2 running)"]


def test_a_large_client_job_shows_totals_not_a_line_per_computer():
    n = PER_COMPUTER_LINES + 1
    p = Progress(run_view("task", "client-job", [row(i, f"pc-{i}", "running") for i in range(n)]))
    p.change(change(0, "pc-0", "succeeded"))
    assert p.lines() == [f"{_bar(1, n)} 1/{n} done, 1 succeeded, 0 not, {n - 1} running"]


def test_a_client_job_table_puts_each_step_under_its_own_computer(capsys):
    run = run_view(
        "task",
        "client-job",
        [
            row(1, "b-pc", "succeeded"),
            row(2, "a-pc", "failed"),
            row(10, "b-pc", "succeeded", "s-of-b", parent=1),
            row(11, "a-pc", "failed", "s-of-a", parent=2),
        ],
    )
    print_run(run)
    lines = capsys.readouterr().out.splitlines()
    body = [ln.split() for ln in lines[2:]]
    assert [ln[:2] for ln in body] == [
        ["a-pc", "(job)"],
        ["s-of-a", "failed"],
        ["b-pc", "(job)"],
        ["s-of-b", "succeeded"],
    ], lines
