-- Every column of `jobs` an operator may write by hand holds its type, or the write is refused
-- naming the column (CHECK ... failed: next_attempt_at_not_integer). SQLite cannot add CHECKs
-- to a table, so the table is rebuilt; rows written before, with a value of the wrong type,
-- keep their job: a time or count that is not an integer becomes the default (a job due now,
-- no attempt spent), text that is a BLOB becomes its SQL literal.
CREATE TABLE jobs_typed (
    id              INTEGER PRIMARY KEY,
    instance_id     TEXT    NOT NULL
        CONSTRAINT instance_id_too_long CHECK (length(instance_id) <= 1024),
    client_id       TEXT    NOT NULL
        CONSTRAINT client_id_too_long CHECK (length(client_id) <= 1024),
    run             TEXT    NOT NULL DEFAULT ''
        CONSTRAINT run_not_text CHECK (typeof(run) = 'text')
        CONSTRAINT run_too_long CHECK (length(run) <= 256),
    status          TEXT    NOT NULL DEFAULT 'pending'
        CONSTRAINT status_unknown CHECK (status IN
            ('pending', 'running', 'succeeded', 'not_found', 'failed', 'rejected', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0
        CONSTRAINT attempts_not_integer CHECK (typeof(attempts) = 'integer')
        CONSTRAINT attempts_negative CHECK (attempts >= 0)
        CONSTRAINT attempts_too_large CHECK (attempts <= 1000000),
    next_attempt_at INTEGER NOT NULL DEFAULT 0
        CONSTRAINT next_attempt_at_not_integer CHECK (typeof(next_attempt_at) = 'integer'),
    lease_owner     TEXT
        CONSTRAINT lease_owner_not_text CHECK (typeof(lease_owner) IN ('text', 'null'))
        CONSTRAINT lease_owner_too_long CHECK (length(lease_owner) <= 256),
    lease_until     INTEGER
        CONSTRAINT lease_until_not_integer CHECK (typeof(lease_until) IN ('integer', 'null')),
    last_code       TEXT
        CONSTRAINT last_code_not_text CHECK (typeof(last_code) IN ('text', 'null'))
        CONSTRAINT last_code_too_long CHECK (length(last_code) <= 256),
    last_message    TEXT
        CONSTRAINT last_message_not_text CHECK (typeof(last_message) IN ('text', 'null'))
        CONSTRAINT last_message_too_long CHECK (length(last_message) <= 4096),
    request_id      TEXT
        CONSTRAINT request_id_not_text CHECK (typeof(request_id) IN ('text', 'null'))
        CONSTRAINT request_id_too_long CHECK (length(request_id) <= 256),
    created_at      INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
        CONSTRAINT created_at_not_integer CHECK (typeof(created_at) = 'integer'),
    updated_at      INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
        CONSTRAINT updated_at_not_integer CHECK (typeof(updated_at) = 'integer'),
    finished_at     INTEGER
        CONSTRAINT finished_at_not_integer CHECK (typeof(finished_at) IN ('integer', 'null'))
);

INSERT INTO jobs_typed (id, instance_id, client_id, run, status, attempts, next_attempt_at,
                        lease_owner, lease_until, last_code, last_message, request_id,
                        created_at, updated_at, finished_at)
SELECT id, instance_id, client_id,
       CASE typeof(run) WHEN 'text' THEN run ELSE substr(quote(run), 1, 256) END,
       status,
       CASE typeof(attempts) WHEN 'integer' THEN min(max(attempts, 0), 1000000) ELSE 0 END,
       CASE typeof(next_attempt_at) WHEN 'integer' THEN next_attempt_at ELSE 0 END,
       CASE typeof(lease_owner) WHEN 'text' THEN substr(lease_owner, 1, 256) END,
       CASE typeof(lease_until) WHEN 'integer' THEN lease_until END,
       CASE typeof(last_code) WHEN 'text' THEN substr(last_code, 1, 256)
           WHEN 'null' THEN NULL ELSE substr(quote(last_code), 1, 256) END,
       CASE typeof(last_message) WHEN 'text' THEN substr(last_message, 1, 4096)
           WHEN 'null' THEN NULL ELSE substr(quote(last_message), 1, 4096) END,
       CASE typeof(request_id) WHEN 'text' THEN substr(request_id, 1, 256)
           WHEN 'null' THEN NULL ELSE substr(quote(request_id), 1, 256) END,
       CASE typeof(created_at) WHEN 'integer' THEN created_at
           ELSE CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) END,
       CASE typeof(updated_at) WHEN 'integer' THEN updated_at
           ELSE CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) END,
       CASE typeof(finished_at) WHEN 'integer' THEN finished_at
           WHEN 'null' THEN NULL
           ELSE CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) END
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_typed RENAME TO jobs;

CREATE INDEX jobs_due ON jobs (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_run_status ON jobs (run, status);
CREATE INDEX jobs_pair_open ON jobs (instance_id, client_id) WHERE status IN ('pending', 'running');
