-- Version 5: what the rows of one write share (the run that wrote them,
-- whether it was a backfill, when they were stored) is kept once, in a row of
-- event_batches, not in every event (as SQLite's version 7).

CREATE TABLE event_batches (
    tenant_id   BIGINT  NOT NULL,
    id          BIGINT  GENERATED ALWAYS AS IDENTITY,
    pipeline_id BIGINT  NOT NULL,
    run         BIGINT  NOT NULL,
    backfill    BOOLEAN NOT NULL,
    ingested_at BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- A version 4 store's events: one batch for each run, backfill and time of
-- storing they carry.
INSERT INTO event_batches (tenant_id, pipeline_id, run, backfill, ingested_at)
SELECT DISTINCT tenant_id, pipeline_id, run, backfill, ingested_at FROM events ORDER BY ingested_at, pipeline_id, run;
ALTER TABLE events RENAME TO v4_events;
ALTER TABLE v4_events RENAME CONSTRAINT events_pkey TO v4_events_pkey;

CREATE TABLE events (
    tenant_id   BIGINT NOT NULL,
    pipeline_id BIGINT NOT NULL,
    event_id    TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    ts          BIGINT NOT NULL,
    person_id   BIGINT NOT NULL,
    properties  TEXT   NOT NULL,
    batch       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, pipeline_id, event_id)
);
INSERT INTO events
SELECT e.tenant_id, e.pipeline_id, e.event_id, e.name, e.ts, e.person_id, e.properties, b.id
FROM v4_events e JOIN event_batches b
  ON b.tenant_id = e.tenant_id AND b.pipeline_id = e.pipeline_id AND b.run = e.run AND b.backfill = e.backfill
 AND b.ingested_at = e.ingested_at;
DROP TABLE v4_events;
