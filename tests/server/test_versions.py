"""Versions of saved tasks and jobs in the NS store: the migration makes what was saved before
version 1; later saves keep every version; a run records the version it ran."""

from __future__ import annotations

import json
import sqlite3

from server.store import _MIGRATIONS, NewInstance, Store

VERSIONS = next(n for n, m in enumerate(_MIGRATIONS) if "definition_versions" in m)


async def test_items_saved_before_versions_become_version_1(tmp_path):
    """A database from before versions were kept is migrated: each task and job becomes
    version 1 with its document and save time, and the next save is version 2 with who saved
    it and what changed; a save that changes nothing adds no version."""
    path = tmp_path / "server.db"
    db = sqlite3.connect(path)
    db.executescript("\n".join(_MIGRATIONS[:VERSIONS]) + f"\nPRAGMA user_version={VERSIONS};")
    task = {"name": "t", "type": "run-script", "kind": "client", "timeout_s": 5, "params": {}}
    job = {"name": "j", "type": "client-job", "description": "", "steps": [{"task": "t"}]}
    db.execute(
        "INSERT INTO tasks(name, type, kind, definition, created_at, updated_at)"
        " VALUES ('t', 'run-script', 'client', ?, 1.0, 2.0)",
        (json.dumps(task),),
    )
    db.execute(
        "INSERT INTO jobs(name, type, definition, created_at, updated_at)"
        " VALUES ('j', 'client-job', ?, 1.0, 3.0)",
        (json.dumps(job),),
    )
    db.commit()
    db.close()
    store = await Store.open(str(path))
    try:
        assert (await store.saved("task", "t")) == {
            "version": 1,
            "definition": task,
            "saved_at": 2.0,
            "saved_by": "",
            "summary": "saved before versions were kept",
        }
        assert (await store.saved("job", "j"))["version"] == 1
        assert (await store.save_task_version(task, "alice"))["version"] == 1  # unchanged
        changed = {**task, "timeout_s": 9, "params": {"script": "x"}}
        assert await store.save_task_version(changed, "alice") == {
            "replaced": True,
            "version": 2,
            "changed": True,
        }
        history = await store.history("task", "t")
        assert [(h["version"], h["saved_by"], h["summary"]) for h in history] == [
            (1, "", "saved before versions were kept"),
            (2, "alice", "changed params.script, timeout_s"),
        ]
        assert (await store.saved("task", "t", 1))["definition"] == task
        run_id = await store.create_run(changed, [NewInstance(None, "pc", None)], 1e12)
        assert (await store.run(run_id))["version"] == 2
        # Deleted, its versions stay for the runs that used them; saved again, it goes on.
        assert await store.delete_definition("task", "t")
        assert await store.saved("task", "t") is None
        assert (await store.saved("task", "t", 2))["definition"] == changed
        assert (await store.save_task_version(task, "bob"))["version"] == 3
    finally:
        await store.close()
