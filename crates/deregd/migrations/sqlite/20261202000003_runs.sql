-- Runs as records: each label of jobs.run has one row, created by the first submit (with who
-- and from what), or by the dispatcher when it first claims a job of a label inserted by plain
-- SQL (source 'sql'). The state decides whether the run's jobs are claimed: only 'active' ones
-- are. A run is 'done' once none of its jobs is open.
CREATE TABLE runs (
    label            TEXT    PRIMARY KEY,
    created_at       INTEGER NOT NULL,
    created_by       TEXT,
    source           TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'active'
        CONSTRAINT state_unknown CHECK (state IN ('active', 'paused', 'cancelled', 'done')),
    state_reason     TEXT,
    state_changed_at INTEGER NOT NULL,
    -- The run's own abort_failure_share (deregd submit --abort-share); NULL: the configured one.
    abort_failure_share REAL
        CONSTRAINT abort_failure_share_range CHECK (abort_failure_share BETWEEN 0.0 AND 1.0)
);

-- The runs of jobs already queued.
INSERT INTO runs (label, created_at, source, state, state_changed_at)
    SELECT run, MIN(created_at), 'sql',
           CASE WHEN SUM(status IN ('pending', 'running')) > 0 THEN 'active' ELSE 'done' END,
           MAX(updated_at)
    FROM jobs GROUP BY run;
