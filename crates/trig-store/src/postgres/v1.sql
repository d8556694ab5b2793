-- Version 1 of the PostgreSQL store: the SQLite store's version 3, in PostgreSQL's types.
-- Times are microseconds since the Unix epoch, UTC. JSON is stored as text (as SQLite keeps it), so both stores hold the same rows.

CREATE TABLE tenants (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    -- moved whenever a person's email changes (see rules.rs, PeopleCache)
    people_epoch BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL
);

CREATE TABLE pipelines (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id),
    name        TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,
    -- the lease: every claim takes the next fence, and a write with an older one writes nothing
    fence       BIGINT NOT NULL DEFAULT 0,
    holder      TEXT,
    holder_host TEXT,
    holder_pid  BIGINT,
    lease_since BIGINT,
    lease_until BIGINT,
    UNIQUE (tenant_id, name)
);

CREATE TABLE organisations (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   BIGINT NOT NULL,
    external_id TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    domain      TEXT,
    -- {"<pipeline>": {"attribute": value, ...}}: values grouped by source
    attributes  TEXT    NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, external_id)
);

CREATE TABLE people (
    id                       BIGSERIAL PRIMARY KEY,
    tenant_id                BIGINT NOT NULL,
    external_id              TEXT,
    email                    TEXT,
    name                     TEXT,
    organisation_external_id TEXT,
    attributes               TEXT    NOT NULL DEFAULT '{}',
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL,
    UNIQUE (tenant_id, external_id),
    UNIQUE (tenant_id, email)
);

CREATE INDEX people_organisation ON people (tenant_id, organisation_external_id);

CREATE TABLE sync_runs (
    id              BIGSERIAL PRIMARY KEY,
    run_id          TEXT    NOT NULL UNIQUE,
    tenant_id       BIGINT NOT NULL,
    pipeline_id     BIGINT NOT NULL REFERENCES pipelines (id),
    trigger         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    started_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    last_commit_at  BIGINT,
    window_from     BIGINT,
    window_to       BIGINT,
    statement_ids   TEXT    NOT NULL DEFAULT '[]',
    warehouse_state TEXT,
    rows_read       BIGINT NOT NULL DEFAULT 0,
    inserted        BIGINT NOT NULL DEFAULT 0,
    updated         BIGINT NOT NULL DEFAULT 0,
    unchanged       BIGINT NOT NULL DEFAULT 0,
    deduplicated    BIGINT NOT NULL DEFAULT 0,
    parked          BIGINT NOT NULL DEFAULT 0,
    rematched       BIGINT NOT NULL DEFAULT 0,
    dropped         BIGINT NOT NULL DEFAULT 0,
    quarantined     BIGINT NOT NULL DEFAULT 0,
    late            BIGINT NOT NULL DEFAULT 0,
    people_created  BIGINT NOT NULL DEFAULT 0,
    bytes           BIGINT NOT NULL DEFAULT 0,
    error_kind      TEXT,
    error_message   TEXT,
    notes           TEXT    NOT NULL DEFAULT '[]'
);

CREATE INDEX sync_runs_pipeline ON sync_runs (pipeline_id, started_at);

CREATE INDEX sync_runs_tenant ON sync_runs (tenant_id, started_at);

CREATE TABLE events (
    tenant_id   BIGINT NOT NULL,
    pipeline_id BIGINT NOT NULL,
    event_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    ts          BIGINT NOT NULL,
    person_id   BIGINT NOT NULL,
    properties  TEXT    NOT NULL,
    backfill    BOOLEAN NOT NULL,
    ingested_at BIGINT NOT NULL,
    run         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, pipeline_id, event_id)
);

CREATE TABLE parked_events (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   BIGINT NOT NULL,
    pipeline_id BIGINT NOT NULL,
    event_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    ts          BIGINT NOT NULL,
    key_kind    TEXT    NOT NULL, -- external_id | email
    user_key    TEXT    NOT NULL,
    email       TEXT,
    properties  TEXT    NOT NULL,
    backfill    BOOLEAN NOT NULL,
    parked_at   BIGINT NOT NULL,
    run         BIGINT NOT NULL,
    UNIQUE (pipeline_id, event_id)
);

CREATE INDEX parked_events_tenant ON parked_events (tenant_id, pipeline_id);

CREATE INDEX parked_events_parked_at ON parked_events (pipeline_id, parked_at);

CREATE TABLE quarantine (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   BIGINT NOT NULL,
    pipeline_id BIGINT NOT NULL,
    run         BIGINT NOT NULL,
    key         TEXT,
    reason      TEXT    NOT NULL,
    row         TEXT    NOT NULL,
    row_hash    TEXT    NOT NULL,
    at          BIGINT NOT NULL,
    UNIQUE (pipeline_id, row_hash, reason)
);

CREATE INDEX quarantine_tenant ON quarantine (tenant_id, id);

CREATE TABLE record_hashes (
    pipeline_id BIGINT NOT NULL,
    external_id TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    PRIMARY KEY (pipeline_id, external_id)
);

CREATE TABLE cursors (
    pipeline_id BIGINT NOT NULL,
    slot        TEXT    NOT NULL,
    value       BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (pipeline_id, slot)
);

CREATE TABLE trig_schema (version INTEGER NOT NULL);
