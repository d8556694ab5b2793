-- Version 3: every row belongs to a tenant (a Trig customer account); a
-- pipeline is known by an integer id, and holds its run's lease (holder,
-- until, fence). Events are one b-tree clustered on their dedup key. A
-- version 1 or 2 store's rows become tenant `default`'s, in the same
-- transaction as this script.

DROP INDEX people_organisation;
DROP INDEX events_person_ts;
DROP INDEX parked_events_key;
DROP INDEX parked_events_email;
DROP INDEX parked_events_parked_at;
DROP INDEX sync_runs_pipeline;
ALTER TABLE organisations RENAME TO v2_organisations;
ALTER TABLE people RENAME TO v2_people;
ALTER TABLE events RENAME TO v2_events;
ALTER TABLE parked_events RENAME TO v2_parked_events;
ALTER TABLE quarantine RENAME TO v2_quarantine;
ALTER TABLE record_hashes RENAME TO v2_record_hashes;
ALTER TABLE cursors RENAME TO v2_cursors;
ALTER TABLE sync_runs RENAME TO v2_sync_runs;

CREATE TABLE tenants (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    -- moved whenever a person's email changes (see rules.rs, PeopleCache)
    people_epoch INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);
INSERT INTO tenants (id, name, created_at) VALUES (1, 'default', CAST(unixepoch('subsec') * 1000000 AS INTEGER));

CREATE TABLE pipelines (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants (id),
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    -- the lease: every claim takes the next fence; a write with an older one writes nothing
    fence       INTEGER NOT NULL DEFAULT 0,
    holder      TEXT,
    holder_host TEXT,
    holder_pid  INTEGER,
    lease_since INTEGER,
    lease_until INTEGER,
    UNIQUE (tenant_id, name)
);
INSERT INTO pipelines (tenant_id, name, created_at)
SELECT 1, name, CAST(unixepoch('subsec') * 1000000 AS INTEGER) FROM (
    SELECT pipeline AS name FROM v2_cursors UNION SELECT pipeline FROM v2_sync_runs UNION SELECT pipeline FROM v2_events
    UNION SELECT pipeline FROM v2_parked_events UNION SELECT pipeline FROM v2_quarantine UNION SELECT pipeline FROM v2_record_hashes
) ORDER BY name;

CREATE TABLE organisations (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    external_id TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    domain      TEXT,
    -- {"<pipeline>": {"attribute": value, ...}}: values grouped by source
    attributes  TEXT    NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, external_id)
);
INSERT INTO organisations SELECT id, 1, external_id, name, domain, attributes, created_at, updated_at FROM v2_organisations;

CREATE TABLE people (
    id                       INTEGER PRIMARY KEY,
    tenant_id                INTEGER NOT NULL,
    external_id              TEXT,
    email                    TEXT,
    name                     TEXT,
    organisation_external_id TEXT,
    attributes               TEXT    NOT NULL DEFAULT '{}',
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    UNIQUE (tenant_id, external_id),
    UNIQUE (tenant_id, email)
);
CREATE INDEX people_organisation ON people (tenant_id, organisation_external_id);
INSERT INTO people SELECT id, 1, external_id, email, name, organisation_external_id, attributes, created_at, updated_at FROM v2_people;

CREATE TABLE sync_runs (
    id              INTEGER PRIMARY KEY,
    run_id          TEXT    NOT NULL UNIQUE,
    tenant_id       INTEGER NOT NULL,
    pipeline_id     INTEGER NOT NULL REFERENCES pipelines (id),
    trigger         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    ended_at        INTEGER,
    last_commit_at  INTEGER,
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
    error_message   TEXT,
    notes           TEXT    NOT NULL DEFAULT '[]'
);
CREATE INDEX sync_runs_pipeline ON sync_runs (pipeline_id, started_at);
CREATE INDEX sync_runs_tenant ON sync_runs (tenant_id, started_at);
INSERT INTO sync_runs
SELECT r.id, r.run_id, 1, p.id, r.trigger, r.status, r.started_at, r.ended_at, r.last_commit_at, r.window_from, r.window_to,
       r.statement_ids, r.warehouse_state, r.rows_read, r.inserted, r.updated, r.unchanged, r.deduplicated, r.parked, r.rematched,
       r.dropped, r.quarantined, r.late, r.people_created, r.bytes, r.error_kind, r.error_message, r.notes
FROM v2_sync_runs r JOIN pipelines p ON p.tenant_id = 1 AND p.name = r.pipeline;

-- One b-tree per event: clustered on the dedup key; the run by its integer id.
CREATE TABLE events (
    tenant_id   INTEGER NOT NULL,
    pipeline_id INTEGER NOT NULL,
    event_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    person_id   INTEGER NOT NULL,
    properties  TEXT    NOT NULL,
    backfill    INTEGER NOT NULL,
    ingested_at INTEGER NOT NULL,
    run         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, pipeline_id, event_id)
) WITHOUT ROWID;
INSERT INTO events
SELECT 1, p.id, e.event_id, e.name, e.ts, e.person_id, e.properties, e.backfill, e.ingested_at, COALESCE(r.id, 0)
FROM v2_events e JOIN pipelines p ON p.tenant_id = 1 AND p.name = e.pipeline LEFT JOIN sync_runs r ON r.run_id = e.run_id;

-- Events that matched no person yet: re-matched when the person appears,
-- dropped (and counted) after the retention.
CREATE TABLE parked_events (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    pipeline_id INTEGER NOT NULL,
    event_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    key_kind    TEXT    NOT NULL, -- external_id | email
    user_key    TEXT    NOT NULL,
    email       TEXT,
    properties  TEXT    NOT NULL,
    backfill    INTEGER NOT NULL,
    parked_at   INTEGER NOT NULL,
    run         INTEGER NOT NULL,
    UNIQUE (pipeline_id, event_id)
);
CREATE INDEX parked_events_tenant ON parked_events (tenant_id, pipeline_id);
CREATE INDEX parked_events_parked_at ON parked_events (pipeline_id, parked_at);
INSERT INTO parked_events
SELECT e.id, 1, p.id, e.event_id, e.name, e.ts, e.key_kind, e.user_key, e.email, e.properties, e.backfill, e.parked_at, COALESCE(r.id, 0)
FROM v2_parked_events e JOIN pipelines p ON p.tenant_id = 1 AND p.name = e.pipeline LEFT JOIN sync_runs r ON r.run_id = e.run_id;

-- Rows that could not be stored. The same row with the same reason is kept once.
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    pipeline_id INTEGER NOT NULL,
    run         INTEGER NOT NULL,
    key         TEXT,
    reason      TEXT    NOT NULL,
    row         TEXT    NOT NULL,
    row_hash    TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    UNIQUE (pipeline_id, row_hash, reason)
);
CREATE INDEX quarantine_tenant ON quarantine (tenant_id, id);
INSERT INTO quarantine
SELECT q.id, 1, p.id, COALESCE(r.id, 0), q.key, q.reason, q.row, q.row_hash, q.at
FROM v2_quarantine q JOIN pipelines p ON p.tenant_id = 1 AND p.name = q.pipeline LEFT JOIN sync_runs r ON r.run_id = q.run_id;

CREATE TABLE record_hashes (
    pipeline_id INTEGER NOT NULL,
    external_id TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    PRIMARY KEY (pipeline_id, external_id)
) WITHOUT ROWID;
INSERT INTO record_hashes SELECT p.id, h.external_id, h.hash FROM v2_record_hashes h JOIN pipelines p ON p.tenant_id = 1 AND p.name = h.pipeline;

CREATE TABLE cursors (
    pipeline_id INTEGER NOT NULL,
    slot        TEXT    NOT NULL,
    value       INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (pipeline_id, slot)
) WITHOUT ROWID;
INSERT INTO cursors SELECT p.id, c.slot, c.value, c.updated_at FROM v2_cursors c JOIN pipelines p ON p.tenant_id = 1 AND p.name = c.pipeline;

DROP TABLE v2_events;
DROP TABLE v2_parked_events;
DROP TABLE v2_quarantine;
DROP TABLE v2_record_hashes;
DROP TABLE v2_cursors;
DROP TABLE v2_sync_runs;
DROP TABLE v2_people;
DROP TABLE v2_organisations;
