-- Version 1 of the SQLite store. Times are microseconds since the Unix
-- epoch, UTC. JSON is stored as text.

CREATE TABLE organisations (
    id          INTEGER PRIMARY KEY,
    external_id TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    domain      TEXT,
    -- {"<pipeline>": {"attribute": value, ...}}: values grouped by source
    attributes  TEXT    NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE people (
    id                       INTEGER PRIMARY KEY,
    external_id              TEXT UNIQUE,
    email                    TEXT UNIQUE,
    name                     TEXT,
    organisation_external_id TEXT,
    attributes               TEXT    NOT NULL DEFAULT '{}',
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL
);
CREATE INDEX people_organisation ON people (organisation_external_id);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    pipeline    TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    person_id   INTEGER NOT NULL REFERENCES people (id),
    properties  TEXT    NOT NULL,
    backfill    INTEGER NOT NULL,
    ingested_at INTEGER NOT NULL,
    run_id      TEXT    NOT NULL,
    UNIQUE (pipeline, event_id)
);
CREATE INDEX events_person_ts ON events (person_id, ts);

-- Events that matched no person yet: re-matched when the person appears,
-- dropped (and counted) after the retention.
CREATE TABLE parked_events (
    id         INTEGER PRIMARY KEY,
    pipeline   TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    ts         INTEGER NOT NULL,
    key_kind   TEXT    NOT NULL, -- external_id | email
    user_key   TEXT    NOT NULL,
    email      TEXT,
    properties TEXT    NOT NULL,
    backfill   INTEGER NOT NULL,
    parked_at  INTEGER NOT NULL,
    run_id     TEXT    NOT NULL,
    UNIQUE (pipeline, event_id)
);
CREATE INDEX parked_events_key ON parked_events (key_kind, user_key);
CREATE INDEX parked_events_email ON parked_events (email);
CREATE INDEX parked_events_parked_at ON parked_events (parked_at);

-- Rows that could not be stored. The same row with the same reason is kept once.
CREATE TABLE quarantine (
    id       INTEGER PRIMARY KEY,
    pipeline TEXT    NOT NULL,
    run_id   TEXT    NOT NULL,
    key      TEXT,
    reason   TEXT    NOT NULL,
    row      TEXT    NOT NULL,
    row_hash TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    UNIQUE (pipeline, row_hash, reason)
);

CREATE TABLE record_hashes (
    pipeline    TEXT NOT NULL,
    external_id TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (pipeline, external_id)
) WITHOUT ROWID;

CREATE TABLE cursors (
    pipeline   TEXT    NOT NULL,
    slot       TEXT    NOT NULL,
    value      INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, slot)
) WITHOUT ROWID;

CREATE TABLE sync_runs (
    id              INTEGER PRIMARY KEY,
    run_id          TEXT    NOT NULL UNIQUE,
    pipeline        TEXT    NOT NULL,
    trigger         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    ended_at        INTEGER,
    window_from     INTEGER,
    window_to       INTEGER,
    statement_ids   TEXT    NOT NULL DEFAULT '[]',
    warehouse_state TEXT,
    rows_read       INTEGER NOT NULL DEFAULT 0,
    inserted        INTEGER NOT NULL DEFAULT 0,
    updated         INTEGER NOT NULL DEFAULT 0,
    unchanged       INTEGER NOT NULL DEFAULT 0,
    deduplicated    INTEGER NOT NULL DEFAULT 0,
    parked          INTEGER NOT NULL DEFAULT 0,
    rematched       INTEGER NOT NULL DEFAULT 0,
    dropped         INTEGER NOT NULL DEFAULT 0,
    quarantined     INTEGER NOT NULL DEFAULT 0,
    late            INTEGER NOT NULL DEFAULT 0,
    people_created  INTEGER NOT NULL DEFAULT 0,
    bytes           INTEGER NOT NULL DEFAULT 0,
    error_kind      TEXT,
    error_message   TEXT
);
CREATE INDEX sync_runs_pipeline ON sync_runs (pipeline, started_at);
