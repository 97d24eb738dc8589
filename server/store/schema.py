"""The schema of the Notification Server's database: its migrations, in order.

``runtime.db.open_db`` applies the ones a database has not seen yet. Append new ones; never
edit one that has shipped.
"""

from __future__ import annotations

_MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE computers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        has_agent INTEGER NOT NULL DEFAULT 0,
        os TEXT NOT NULL DEFAULT '',
        agent_version TEXT NOT NULL DEFAULT '',
        addresses TEXT NOT NULL DEFAULT '[]',
        taskserver TEXT,
        online INTEGER NOT NULL DEFAULT 0,
        last_seen REAL,
        created_at REAL NOT NULL
    );
    CREATE TABLE taskservers (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        online INTEGER NOT NULL DEFAULT 0,
        last_seen REAL
    );
    CREATE TABLE tasks (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        kind TEXT NOT NULL,
        definition TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        task_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        definition TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        deadline REAL NOT NULL,
        ended_at REAL
    );
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        computer_id INTEGER,
        computer TEXT NOT NULL,
        route TEXT,
        status TEXT NOT NULL,
        dispatched INTEGER NOT NULL DEFAULT 0,
        return_code INTEGER,
        output TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        started_at REAL,
        ended_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX instances_run ON instances(run_id);
    CREATE INDEX instances_undispatched ON instances(route, dispatched, status);
    CREATE TABLE server_log (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT ''
    );
    """,
    # 2: jobs; steps of a run (each with its task and deadline); per-step instances
    """
    CREATE TABLE jobs (
        name TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        definition TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        step TEXT NOT NULL,
        task TEXT NOT NULL,
        deadline REAL NOT NULL,
        started_at REAL NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    INSERT INTO steps(run_id, step, task, deadline, started_at)
        SELECT id, '', definition, deadline, created_at FROM runs;
    ALTER TABLE runs ADD COLUMN targets TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE runs ADD COLUMN machine TEXT;
    ALTER TABLE instances ADD COLUMN step TEXT NOT NULL DEFAULT '';
    ALTER TABLE instances ADD COLUMN parent_id INTEGER REFERENCES instances(id);
    CREATE UNIQUE INDEX instances_parent_step ON instances(parent_id, step) WHERE parent_id IS NOT NULL;
    CREATE INDEX instances_run_step ON instances(run_id, step);
    """,
    # 3: trust: peer keys, admin tokens with roles, enrolment tokens, the audit trail, messages
    """
    CREATE TABLE keys (
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        public_key BLOB NOT NULL,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,
        address TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        decided_at REAL,
        PRIMARY KEY (role, name)
    );
    CREATE TABLE admins (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE enrol_tokens (
        id INTEGER PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        uses_left INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        severity TEXT NOT NULL,
        text TEXT NOT NULL,
        source TEXT NOT NULL
    );
    ALTER TABLE taskservers ADD COLUMN public_key BLOB;
    ALTER TABLE taskservers ADD COLUMN tls_fingerprint TEXT NOT NULL DEFAULT '';
    """,
    # 4: counting computers per TS at every registration must not scan the whole table
    """
    CREATE INDEX computers_taskserver ON computers(taskserver);
    """,
    # 5: basic inventory, with history
    """
    CREATE TABLE inventory (
        id INTEGER PRIMARY KEY,
        computer_id INTEGER NOT NULL REFERENCES computers(id),
        at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX inventory_computer ON inventory(computer_id, at);
    ALTER TABLE computers ADD COLUMN mac TEXT NOT NULL DEFAULT '';
    """,
    # 6: organizational groups, filters with cached membership, reports with snapshots
    """
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        parent_id INTEGER REFERENCES groups(id),
        created_at REAL NOT NULL
    );
    CREATE TABLE group_members (
        group_id INTEGER NOT NULL REFERENCES groups(id),
        computer_id INTEGER NOT NULL REFERENCES computers(id),
        PRIMARY KEY (group_id, computer_id)
    );
    CREATE TABLE filters (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        updated_at REAL NOT NULL,
        members_at REAL
    );
    CREATE TABLE filter_members (
        filter TEXT NOT NULL REFERENCES filters(name) ON DELETE CASCADE,
        computer_id INTEGER NOT NULL REFERENCES computers(id),
        PRIMARY KEY (filter, computer_id)
    );
    CREATE TABLE reports (
        name TEXT PRIMARY KEY,
        query TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL
    );
    CREATE TABLE report_snapshots (
        id INTEGER PRIMARY KEY,
        report TEXT NOT NULL,
        at REAL NOT NULL,
        run_id INTEGER,
        columns TEXT NOT NULL,
        rows TEXT NOT NULL
    );
    CREATE INDEX report_snapshots_at ON report_snapshots(at);
    """,
    # 7: items live in folders
    """
    CREATE TABLE folders (path TEXT PRIMARY KEY);
    INSERT INTO folders(path) VALUES ('/Jobs and Tasks'), ('/Reports'), ('/Policies'), ('/Filters');
    ALTER TABLE tasks ADD COLUMN folder TEXT NOT NULL DEFAULT '/Jobs and Tasks';
    ALTER TABLE jobs ADD COLUMN folder TEXT NOT NULL DEFAULT '/Jobs and Tasks';
    ALTER TABLE reports ADD COLUMN folder TEXT NOT NULL DEFAULT '/Reports';
    ALTER TABLE filters ADD COLUMN folder TEXT NOT NULL DEFAULT '/Filters';
    """,
    # 8: policies
    """
    CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        folder TEXT NOT NULL DEFAULT '/Policies',
        updated_at REAL NOT NULL
    );
    """,
    # 9: cheaper indexes on instances, the table every run writes 2-3 times per computer.
    # instances_run was a prefix of instances_run_step. The undispatched index held status, so
    # every result moved its entry; now it holds only what is still to be dispatched, in id
    # order. Moving a computer's work (reroute) finds it by computer_id.
    """
    DROP INDEX instances_run;
    DROP INDEX instances_undispatched;
    CREATE INDEX instances_undispatched ON instances(route) WHERE dispatched=0;
    CREATE INDEX instances_computer ON instances(computer_id);
    """,
    # 10: an enrolment token is for one role (tokens made before are agents' tokens) and can be
    # revoked; tickets of agents whose key was rejected or deleted are refused until they expire
    """
    ALTER TABLE enrol_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'agent';
    ALTER TABLE enrol_tokens ADD COLUMN revoked_at REAL;
    CREATE TABLE revoked_tickets (
        agent TEXT PRIMARY KEY,
        until INTEGER NOT NULL
    );
    """,
    # 11: the start of the NS that created each instance (its boot epoch, never 0 from now on):
    # part of the instance's id on the wire, so instances made after a backup was restored
    # never repeat an id the lost timeline gave out (rows made before keep 0: their plain ids)
    """
    ALTER TABLE instances ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    """,
    # 12: versions of tasks and jobs: every save is kept (the items saved before become version
    # 1), and each run records the version of the task or job it ran
    """
    CREATE TABLE definition_versions (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        definition TEXT NOT NULL,
        saved_at REAL NOT NULL,
        saved_by TEXT NOT NULL DEFAULT '',
        summary TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (kind, name, version)
    );
    ALTER TABLE tasks ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    INSERT INTO definition_versions(kind, name, version, definition, saved_at, summary)
        SELECT 'task', name, 1, definition, updated_at, 'saved before versions were kept' FROM tasks;
    INSERT INTO definition_versions(kind, name, version, definition, saved_at, summary)
        SELECT 'job', name, 1, definition, updated_at, 'saved before versions were kept' FROM jobs;
    ALTER TABLE runs ADD COLUMN version INTEGER;
    """,
    # 13: schedules on the NS; each firing recorded once per (schedule, time), so no time fires
    # twice, also across a restart; the schedule a run was started by; retention purges ended
    # runs by their end time
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        since REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE schedule_firings (
        schedule TEXT NOT NULL,
        due_at REAL NOT NULL,
        fired_at REAL NOT NULL,
        run_id INTEGER,
        outcome TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (schedule, due_at)
    );
    ALTER TABLE runs ADD COLUMN schedule TEXT;
    CREATE INDEX runs_ended ON runs(ended_at) WHERE status != 'running';
    """,
    # 14: the hierarchy (server/store/hierarchy.py). A parent's journal of changes to replicated
    # items (doc NULL: gone or no longer replicated), its children; a child's cursor per parent
    # and the parent's items it refused for a name of its own; where each item came from
    # ('' = this NS's own); groups flagged to replicate. The journal's key is called id (a
    # change's seq) so taskfleet migrate sets its PostgreSQL sequence like every other id
    """
    CREATE TABLE hier_journal (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        doc TEXT,
        at REAL NOT NULL
    );
    CREATE TABLE hier_children (
        name TEXT PRIMARY KEY,
        ns_id TEXT NOT NULL,
        connected INTEGER NOT NULL DEFAULT 0,
        acked_seq INTEGER NOT NULL DEFAULT 0,
        last_seen REAL,
        linked_at REAL,
        summary TEXT,
        clashes TEXT NOT NULL DEFAULT '[]',
        below TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE hier_cursor (
        parent TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE hier_clashes (
        parent TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (parent, kind, name)
    );
    ALTER TABLE tasks ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    ALTER TABLE policies ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    ALTER TABLE groups ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    ALTER TABLE filters ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    ALTER TABLE groups ADD COLUMN replicate INTEGER NOT NULL DEFAULT 0;
    """,
]
