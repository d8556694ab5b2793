-- Version 4: the service's records.
ALTER TABLE tenants ADD COLUMN display_name TEXT;
-- the tenant's alert webhook, sealed by the service's key (its URL may hold a secret)
ALTER TABLE tenants ADD COLUMN webhook TEXT;

-- A pipeline's definition and its schedule, for `serve`. The row stays when a
-- pipeline is deleted (its events, runs and cursors keep its id); a deleted
-- pipeline has no definition and is not scheduled.
-- definition: the config file's [pipelines.NAME] keys as JSON; origin: 'api' or 'config'.
ALTER TABLE pipelines ADD COLUMN definition TEXT;
ALTER TABLE pipelines ADD COLUMN origin TEXT;
ALTER TABLE pipelines ADD COLUMN defined_at INTEGER;
-- when the scheduler runs it next; a requested run ('sync', 'full_refresh') goes first
ALTER TABLE pipelines ADD COLUMN next_run_at INTEGER;
ALTER TABLE pipelines ADD COLUMN requested TEXT;
-- the run id the request was answered with; the run takes it
ALTER TABLE pipelines ADD COLUMN requested_run_id TEXT;
-- failures in a row since the last success, since when, and the last error as JSON {kind, message, hint}
ALTER TABLE pipelines ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipelines ADD COLUMN failing_since INTEGER;
ALTER TABLE pipelines ADD COLUMN last_error TEXT;
ALTER TABLE pipelines ADD COLUMN paused_reason TEXT;
ALTER TABLE pipelines ADD COLUMN paused_at INTEGER;
CREATE INDEX pipelines_due ON pipelines (next_run_at) WHERE definition IS NOT NULL;

-- API tokens of `serve`: only a token's SHA-256 is kept; the token is shown once, when it is made.
CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id),
    role       TEXT    NOT NULL CHECK (role IN ('admin', 'representative')),
    hash       TEXT    NOT NULL UNIQUE,
    label      TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- A tenant's connections as the service keeps them: the keys as JSON without
-- the secret, and the secret sealed by the service's key (never in clear).
-- A config file's connections are listed here too (origin 'config', read-only,
-- their secret stays where the file says).
CREATE TABLE connections (
    id                INTEGER PRIMARY KEY,
    tenant_id         INTEGER NOT NULL REFERENCES tenants (id),
    name              TEXT NOT NULL,
    origin            TEXT NOT NULL CHECK (origin IN ('api', 'config')),
    config            TEXT NOT NULL,
    secret            TEXT,
    secret_changed_at INTEGER,
    -- the token expiry an alert was sent for (once per expiry, across processes)
    expiry_warned     INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

-- Every change of a connection or pipeline: who, when, before and after (JSON, no secret).
CREATE TABLE config_changes (
    id        INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants (id),
    subject   TEXT NOT NULL CHECK (subject IN ('connection', 'pipeline')),
    name      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    at        INTEGER NOT NULL,
    action    TEXT NOT NULL CHECK (action IN ('created', 'replaced', 'changed', 'deleted', 'secret_rotated')),
    before    TEXT,
    after     TEXT,
    -- e.g. "the secret changed": what the JSON cannot show
    note      TEXT
);
CREATE INDEX config_changes_by_subject ON config_changes (tenant_id, subject, name, id);

-- Slots of Trig's runs on one SQL warehouse, shared by every process: a run
-- holds one (like a lease, until it ends or its time runs out), so at most
-- as many runs as slots reach a warehouse at once, whatever the processes.
CREATE TABLE warehouse_slots (
    warehouse TEXT NOT NULL,
    slot      INTEGER NOT NULL,
    holder    TEXT,
    until     INTEGER,
    PRIMARY KEY (warehouse, slot)
);
