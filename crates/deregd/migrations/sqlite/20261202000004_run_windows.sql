-- A run's own maintenance windows (deregd submit --window, deregd schedule): a JSON array of
-- specs like "Mon-Fri 01:00-06:00", read in worker.timezone. NULL: worker.windows applies.
ALTER TABLE runs ADD COLUMN windows TEXT
    CONSTRAINT windows_json_array CHECK (windows IS NULL OR (json_valid(windows) AND json_type(windows) = 'array'));
