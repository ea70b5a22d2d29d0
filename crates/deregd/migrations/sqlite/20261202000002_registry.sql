-- Runs taken from the vendor's registry, and calls of more than one action.

-- Successful calls per instance, per unix second and per action: every successful call of any
-- action adds one to the instance's billed TPS. Rows written before count as UnRegister.
CREATE TABLE tps_usage_by_action (
    instance_id TEXT    NOT NULL,
    second      INTEGER NOT NULL,
    action      TEXT    NOT NULL DEFAULT 'UnRegisterDeviceCredential',
    calls       INTEGER NOT NULL,
    PRIMARY KEY (instance_id, second, action)
) WITHOUT ROWID;
INSERT INTO tps_usage_by_action (instance_id, second, calls)
    SELECT instance_id, second, calls FROM tps_usage;
DROP TABLE tps_usage;
ALTER TABLE tps_usage_by_action RENAME TO tps_usage;

-- A group's listing while `deregd submit --group` takes it, keyed by the submission: its
-- ClientIds become jobs only once the whole group is listed (with offset paging, deleting
-- while listing would skip devices).
CREATE TABLE listings (
    token       TEXT    NOT NULL,
    instance_id TEXT    NOT NULL,
    group_id    TEXT    NOT NULL,
    client_id   TEXT    NOT NULL,
    listed_at   INTEGER NOT NULL,
    PRIMARY KEY (token, client_id)
) WITHOUT ROWID;

-- The groups a run was taken from, when, and how many credentials each listed.
CREATE TABLE run_groups (
    run         TEXT    NOT NULL,
    instance_id TEXT    NOT NULL,
    group_id    TEXT    NOT NULL,
    listed_at   INTEGER NOT NULL,
    listed      INTEGER NOT NULL,
    PRIMARY KEY (run, instance_id, group_id)
);

-- Each `deregd verify`: when, what it looked at (groups or a sample), and what it found.
CREATE TABLE verifications (
    id     INTEGER PRIMARY KEY,
    run    TEXT    NOT NULL,
    at     INTEGER NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('groups', 'sample')),
    -- The findings as JSON (counts per group, or the sample's counts).
    report TEXT    NOT NULL
);
CREATE INDEX verifications_run ON verifications (run, id);
