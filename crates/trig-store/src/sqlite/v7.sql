-- Version 7: what the rows of one write share (the run that wrote them,
-- whether it was a backfill, when they were stored) is kept once, in a row of
-- event_batches, not in every event. An event is three integers shorter in
-- its b-tree, and "the rows this write stored" is `batch = its id`.

CREATE TABLE event_batches (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    pipeline_id INTEGER NOT NULL,
    run         INTEGER NOT NULL,
    backfill    INTEGER NOT NULL,
    ingested_at INTEGER NOT NULL
);

-- A version 6 store's events: one batch for each run, backfill and time of
-- storing they carry (a v6 write stamped its rows with a time no other write
-- of the process used).
CREATE INDEX v6_events_batch ON events (tenant_id, pipeline_id, run, backfill, ingested_at);
INSERT INTO event_batches (tenant_id, pipeline_id, run, backfill, ingested_at)
SELECT DISTINCT tenant_id, pipeline_id, run, backfill, ingested_at FROM events ORDER BY ingested_at, pipeline_id, run;
CREATE INDEX v6_batches_key ON event_batches (tenant_id, pipeline_id, run, backfill, ingested_at);
DROP INDEX v6_events_batch;
ALTER TABLE events RENAME TO v6_events;

CREATE TABLE events (
    tenant_id   INTEGER NOT NULL,
    pipeline_id INTEGER NOT NULL,
    event_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    person_id   INTEGER NOT NULL,
    properties  TEXT    NOT NULL,
    batch       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, pipeline_id, event_id)
) WITHOUT ROWID;
INSERT INTO events
SELECT e.tenant_id, e.pipeline_id, e.event_id, e.name, e.ts, e.person_id, e.properties, b.id
FROM v6_events e JOIN event_batches b
  ON b.tenant_id = e.tenant_id AND b.pipeline_id = e.pipeline_id AND b.run = e.run AND b.backfill = e.backfill
 AND b.ingested_at = e.ingested_at
ORDER BY e.tenant_id, e.pipeline_id, e.event_id;
DROP INDEX v6_batches_key;
DROP TABLE v6_events;
