-- The jobs table is the submission interface: operators INSERT (instance_id, client_id[, run]).
-- Times are unix milliseconds (UTC). The defaults use julianday() so that any sqlite3 shell,
-- old or new, can insert with the minimal statement.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    instance_id     TEXT    NOT NULL
        CONSTRAINT instance_id_too_long CHECK (length(instance_id) <= 1024),
    client_id       TEXT    NOT NULL
        CONSTRAINT client_id_too_long CHECK (length(client_id) <= 1024),
    run             TEXT    NOT NULL DEFAULT ''
        CONSTRAINT run_too_long CHECK (length(run) <= 256),
    status          TEXT    NOT NULL DEFAULT 'pending'
        CONSTRAINT status_unknown CHECK (status IN
            ('pending', 'running', 'succeeded', 'not_found', 'failed', 'rejected', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0
        CONSTRAINT attempts_negative CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_code       TEXT,
    last_message    TEXT,
    request_id      TEXT,
    created_at      INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    updated_at      INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    finished_at     INTEGER
);

-- The claim predicate: pending jobs due now, oldest schedule first.
CREATE INDEX jobs_due ON jobs (next_attempt_at, id) WHERE status = 'pending';
-- Lease rescue.
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE status = 'running';
-- Per-run status counts and cancel/requeue.
CREATE INDEX jobs_run_status ON jobs (run, status);
-- Duplicate detection on submit (same pair still pending or running).
CREATE INDEX jobs_pair_open ON jobs (instance_id, client_id) WHERE status IN ('pending', 'running');

-- Successful (HTTP 2xx) calls per instance per unix second: what deregd added to the
-- instance's billed TPS.
CREATE TABLE tps_usage (
    instance_id TEXT    NOT NULL,
    second      INTEGER NOT NULL,
    calls       INTEGER NOT NULL,
    PRIMARY KEY (instance_id, second)
) WITHOUT ROWID;

-- Which process dispatches from this database (one at a time).
CREATE TABLE dispatcher (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    owner       TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    host        TEXT    NOT NULL,
    heartbeat   INTEGER NOT NULL,
    paused      TEXT,
    rate        REAL
);
