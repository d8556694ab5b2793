//! [`Tx`] on a SQLite write transaction: rows in and out, no decisions.
//! Every statement is prepared once per connection (`prepare_cached`).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use rusqlite::{OptionalExtension, Transaction, params};

use crate::rules::{
    LeaseRow, Lock, NewPerson, ParkedRow, PeopleEpochs, PersonRow, RecordWrite, Tx, first_of_each_id, json_list, now_micros,
};
use crate::{
    Error, EventRow, Holder, IdentityRule, Micros, PipelineId, PipelineKey, Quarantined, RunCounts, RunKey, Slot, SyncRun, TenantId,
};

fn person_row(r: &rusqlite::Row) -> rusqlite::Result<PersonRow> {
    Ok(PersonRow {
        id: r.get(0)?,
        external_id: r.get(1)?,
        email: r.get(2)?,
        name: r.get(3)?,
        organisation: r.get(4)?,
        attributes: r.get(5)?,
    })
}

/// Events per multi-row INSERT of a backfill (see `insert_events`).
const ROWS_PER_INSERT: usize = 64;
/// The values every row of the statement shares: tenant, pipeline, batch (`?1`–`?3`).
const SHARED_PARAMETERS: usize = 3;
/// Each row's own: event id, name, timestamp, person, properties.
const ROW_PARAMETERS: usize = 5;

/// `INSERT OR IGNORE INTO events … VALUES (…), (…), …` for ROWS_PER_INSERT rows.
static MULTI_ROW_INSERT: LazyLock<String> = LazyLock::new(|| {
    let rows: Vec<String> = (0..ROWS_PER_INSERT)
        .map(|k| {
            let a = SHARED_PARAMETERS + 1 + k * ROW_PARAMETERS;
            format!("(?1, ?2, ?{a}, ?{}, ?{}, ?{}, ?{}, ?3)", a + 1, a + 2, a + 3, a + 4)
        })
        .collect();
    format!(
        "INSERT OR IGNORE INTO events (tenant_id, pipeline_id, event_id, name, ts, person_id, properties, batch) VALUES {}",
        rows.join(", ")
    )
});

const PERSON: &str = "SELECT id, external_id, email, name, organisation_external_id, attributes FROM people";

impl Tx for Transaction<'_> {
    fn now(&mut self) -> Result<Micros, Error> {
        Ok(now_micros())
    }

    fn lease(&mut self, p: PipelineKey, _lock: Lock) -> Result<LeaseRow, Error> {
        // A SQLite write transaction holds the file's write lock: no lock per row is needed.
        self.prepare_cached(
            "SELECT name, fence, holder, holder_host, holder_pid, lease_since, lease_until FROM pipelines WHERE id = ?1 AND tenant_id = ?2",
        )?
        .query_row(params![p.pipeline.0, p.tenant.0], |r| {
            let holder = match (r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?, r.get::<_, Option<u32>>(4)?) {
                (Some(label), Some(host), Some(pid)) => Some(Holder { host, pid, label }),
                _ => None,
            };
            Ok(LeaseRow { name: r.get(0)?, fence: r.get(1)?, holder, since: r.get(5)?, until: r.get(6)? })
        })
        .optional()?
        .ok_or_else(|| Error::NotFound { what: format!("pipeline {} of tenant {}", p.pipeline.0, p.tenant.0) })
    }

    fn set_lease(
        &mut self,
        p: PipelineKey,
        fence: i64,
        holder: Option<&Holder>,
        since: Option<Micros>,
        until: Option<Micros>,
    ) -> Result<(), Error> {
        self.prepare_cached(
            "UPDATE pipelines SET fence = ?2, holder = ?3, holder_host = ?4, holder_pid = ?5, lease_since = ?6, lease_until = ?7 WHERE id = ?1",
        )?
        .execute(params![p.pipeline.0, fence, holder.map(|h| &h.label), holder.map(|h| &h.host), holder.map(|h| h.pid), since, until])?;
        Ok(())
    }

    fn interrupt_running(&mut self, p: PipelineKey, message: &str) -> Result<u64, Error> {
        Ok(self
            .prepare_cached(
                "UPDATE sync_runs SET status = 'interrupted', ended_at = COALESCE(last_commit_at, started_at),
                   error_kind = 'interrupted', error_message = ?2
                 WHERE pipeline_id = ?1 AND status = 'running'",
            )?
            .execute(params![p.pipeline.0, message])? as u64)
    }

    fn insert_run(&mut self, p: PipelineKey, run: &SyncRun) -> Result<RunKey, Error> {
        self.prepare_cached(
            "INSERT INTO sync_runs (run_id, tenant_id, pipeline_id, trigger, status, started_at, window_from, window_to, warehouse_state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            run.run_id,
            p.tenant.0,
            p.pipeline.0,
            run.trigger,
            run.status,
            run.started_at,
            run.window_from,
            run.window_to,
            run.warehouse_state
        ])?;
        Ok(RunKey(self.last_insert_rowid()))
    }

    fn update_run(&mut self, run: RunKey, r: &SyncRun) -> Result<(), Error> {
        let k = &r.counts;
        self.prepare_cached(
            "UPDATE sync_runs SET status = ?2, ended_at = ?3, window_from = ?4, window_to = ?5, statement_ids = ?6, warehouse_state = ?7,
               rows_read = ?8, inserted = ?9, updated = ?10, unchanged = ?11, deduplicated = ?12, parked = ?13, rematched = ?14,
               dropped = ?15, quarantined = ?16, late = ?17, people_created = ?18, bytes = ?19, error_kind = ?20, error_message = ?21,
               notes = ?22
             WHERE id = ?1",
        )?
        .execute(params![
            run.0,
            r.status,
            r.ended_at,
            r.window_from,
            r.window_to,
            json_list(&r.statement_ids),
            r.warehouse_state,
            k.rows_read as i64,
            k.inserted as i64,
            k.updated as i64,
            k.unchanged as i64,
            k.deduplicated as i64,
            k.parked as i64,
            k.rematched as i64,
            k.dropped as i64,
            k.quarantined as i64,
            k.late as i64,
            k.people_created as i64,
            k.bytes as i64,
            r.error_kind,
            r.error_message,
            json_list(&r.notes),
        ])?;
        Ok(())
    }

    fn add_to_run(&mut self, run: RunKey, c: &RunCounts, statement_ids: &[String], now: Micros) -> Result<(), Error> {
        let mut ids_text: Option<String> = None;
        if !statement_ids.is_empty() {
            let old: Option<String> =
                self.prepare_cached("SELECT statement_ids FROM sync_runs WHERE id = ?1")?.query_row([run.0], |r| r.get(0)).optional()?;
            let mut ids: Vec<String> = old.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
            ids.extend(statement_ids.iter().cloned());
            ids_text = Some(json_list(&ids));
        }
        self.prepare_cached(
            "UPDATE sync_runs SET rows_read = rows_read + ?2, inserted = inserted + ?3, updated = updated + ?4, unchanged = unchanged + ?5,
               deduplicated = deduplicated + ?6, parked = parked + ?7, rematched = rematched + ?8, dropped = dropped + ?9,
               quarantined = quarantined + ?10, late = late + ?11, people_created = people_created + ?12, bytes = bytes + ?13,
               statement_ids = COALESCE(?14, statement_ids), last_commit_at = ?15
             WHERE id = ?1",
        )?
        .execute(params![
            run.0,
            c.rows_read as i64,
            c.inserted as i64,
            c.updated as i64,
            c.unchanged as i64,
            c.deduplicated as i64,
            c.parked as i64,
            c.rematched as i64,
            c.dropped as i64,
            c.quarantined as i64,
            c.late as i64,
            c.people_created as i64,
            c.bytes as i64,
            ids_text,
            now,
        ])?;
        Ok(())
    }

    fn people_epochs(&mut self, t: TenantId) -> Result<PeopleEpochs, Error> {
        Ok(self
            .prepare_cached("SELECT people_epoch, people_added FROM tenants WHERE id = ?1")?
            .query_row([t.0], |r| Ok(PeopleEpochs { emails: r.get(0)?, added: r.get(1)? }))
            .optional()?
            .unwrap_or_default())
    }

    fn bump_people_epoch(&mut self, t: TenantId) -> Result<(), Error> {
        self.prepare_cached("UPDATE tenants SET people_epoch = people_epoch + 1 WHERE id = ?1")?.execute([t.0])?;
        Ok(())
    }

    fn bump_people_added(&mut self, t: TenantId) -> Result<i64, Error> {
        Ok(self
            .prepare_cached("UPDATE tenants SET people_added = people_added + 1 WHERE id = ?1 RETURNING people_added")?
            .query_row([t.0], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn people_by_external_id(&mut self, t: TenantId, keys: &[&str]) -> Result<Vec<PersonRow>, Error> {
        let mut s = self.prepare_cached(&format!("{PERSON} WHERE tenant_id = ?1 AND external_id = ?2"))?;
        let mut out = Vec::new();
        for k in keys {
            out.extend(s.query_row(params![t.0, k], person_row).optional()?);
        }
        Ok(out)
    }

    fn people_by_email(&mut self, t: TenantId, emails: &[&str]) -> Result<Vec<PersonRow>, Error> {
        let mut s = self.prepare_cached(&format!("{PERSON} WHERE tenant_id = ?1 AND email = ?2"))?;
        let mut out = Vec::new();
        for e in emails {
            out.extend(s.query_row(params![t.0, e], person_row).optional()?);
        }
        Ok(out)
    }

    fn insert_people(&mut self, t: TenantId, people: &[NewPerson], now: Micros) -> Result<Vec<Option<i64>>, Error> {
        let mut s = self.prepare_cached(
            "INSERT INTO people (tenant_id, external_id, email, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING",
        )?;
        let mut out = Vec::with_capacity(people.len());
        for p in people {
            let n = s.execute(params![t.0, p.external_id, p.email, now])?;
            out.push((n == 1).then(|| self.last_insert_rowid()));
        }
        Ok(out)
    }

    fn set_external_ids(&mut self, t: TenantId, claims: &[(i64, &str)], now: Micros) -> Result<(), Error> {
        let mut s = self.prepare_cached(
            "UPDATE people SET external_id = ?1, updated_at = ?2 WHERE id = ?3 AND tenant_id = ?4 AND external_id IS NULL",
        )?;
        for (id, ext) in claims {
            s.execute(params![ext, now, id, t.0])?;
        }
        Ok(())
    }

    fn write_people(&mut self, t: TenantId, rows: &[RecordWrite], now: Micros) -> Result<(), Error> {
        for r in rows {
            match r.id {
                Some(id) => self
                    .prepare_cached(
                        "UPDATE people SET external_id = ?1, name = ?2, email = ?3, organisation_external_id = ?4, attributes = ?5,
                         updated_at = ?6 WHERE id = ?7 AND tenant_id = ?8",
                    )?
                    .execute(params![r.external_id, r.name, r.email, r.link, r.attributes, now, id, t.0])?,
                None => self
                    .prepare_cached(
                        "INSERT INTO people (tenant_id, external_id, email, name, organisation_external_id, attributes, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                    )?
                    .execute(params![t.0, r.external_id, r.email, r.name, r.link, r.attributes, now])?,
            };
        }
        Ok(())
    }

    fn organisations_by_external_id(&mut self, t: TenantId, keys: &[&str]) -> Result<Vec<(i64, String, String)>, Error> {
        let mut s =
            self.prepare_cached("SELECT id, external_id, attributes FROM organisations WHERE tenant_id = ?1 AND external_id = ?2")?;
        let mut out = Vec::new();
        for k in keys {
            out.extend(s.query_row(params![t.0, k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?);
        }
        Ok(out)
    }

    fn write_organisations(&mut self, t: TenantId, rows: &[RecordWrite], now: Micros) -> Result<(), Error> {
        for r in rows {
            match r.id {
                Some(id) => self
                    .prepare_cached(
                        "UPDATE organisations SET name = ?1, domain = ?2, attributes = ?3, updated_at = ?4 WHERE id = ?5 AND tenant_id = ?6",
                    )?
                    .execute(params![r.name, r.link, r.attributes, now, id, t.0])?,
                None => self
                    .prepare_cached(
                        "INSERT INTO organisations (tenant_id, external_id, name, domain, attributes, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    )?
                    .execute(params![t.0, r.external_id, r.name, r.link, r.attributes, now])?,
            };
        }
        Ok(())
    }

    fn record_hashes(&mut self, p: PipelineKey, keys: &[&str]) -> Result<HashMap<String, String>, Error> {
        let mut s = self.prepare_cached("SELECT hash FROM record_hashes WHERE pipeline_id = ?1 AND external_id = ?2")?;
        let mut out = HashMap::new();
        for k in keys {
            if let Some(h) = s.query_row(params![p.pipeline.0, k], |r| r.get::<_, String>(0)).optional()? {
                out.insert(k.to_string(), h);
            }
        }
        Ok(out)
    }

    fn put_record_hashes(&mut self, p: PipelineKey, rows: &[(&str, &str)]) -> Result<(), Error> {
        let mut s = self.prepare_cached(
            "INSERT INTO record_hashes (pipeline_id, external_id, hash) VALUES (?1, ?2, ?3)
             ON CONFLICT (pipeline_id, external_id) DO UPDATE SET hash = excluded.hash",
        )?;
        for (k, h) in rows {
            s.execute(params![p.pipeline.0, k, h])?;
        }
        Ok(())
    }

    fn insert_events(
        &mut self,
        p: PipelineKey,
        run: RunKey,
        backfill: bool,
        now: Micros,
        rows: &[(&EventRow, i64)],
    ) -> Result<Vec<bool>, Error> {
        let mut new = vec![false; rows.len()];
        if rows.is_empty() {
            return Ok(new);
        }
        // What the rows share is stored once: the batch (see v7.sql).
        self.prepare_cached("INSERT INTO event_batches (tenant_id, pipeline_id, run, backfill, ingested_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![p.tenant.0, p.pipeline.0, run.0, backfill, now])?;
        let batch = self.last_insert_rowid();
        // A backfill's ids are nearly all new: its rows go in ROWS_PER_INSERT
        // at a time by one multi-row `INSERT OR IGNORE`, which costs SQLite
        // about a fifth less per row than a statement per row (measured on
        // 1M rows of this shape). Ignoring, not aborting, matters as much: a
        // statement that may abort after some of its rows makes SQLite keep
        // a statement journal (a copy of every page it changes, in a temporary
        // file), which cost a fifth of the store's thread in a 1M-row backfill.
        // The statement says how many rows it stored: all of them or none is
        // the usual answer; for a chunk in between, a row is new if it carries
        // this call's batch. The batch's own repeats are left out first: only
        // the first of an id may be new. (An incremental window re-reads its
        // lookback, so it goes row by row.)
        let mut one_by_one: Vec<usize> = Vec::new();
        let mut some_new: Vec<usize> = Vec::new();
        if backfill {
            let firsts: Vec<usize> = first_of_each_id(rows).into_iter().enumerate().filter_map(|(i, first)| first.then_some(i)).collect();
            let mut chunks = firsts.chunks_exact(ROWS_PER_INSERT);
            let mut s = self.prepare_cached(&MULTI_ROW_INSERT)?;
            for chunk in &mut chunks {
                s.raw_bind_parameter(1, p.tenant.0)?;
                s.raw_bind_parameter(2, p.pipeline.0)?;
                s.raw_bind_parameter(3, batch)?;
                for (k, &i) in chunk.iter().enumerate() {
                    let (r, person) = rows[i];
                    let at = SHARED_PARAMETERS + 1 + k * ROW_PARAMETERS;
                    s.raw_bind_parameter(at, &r.event_id)?;
                    s.raw_bind_parameter(at + 1, &r.name)?;
                    s.raw_bind_parameter(at + 2, r.ts)?;
                    s.raw_bind_parameter(at + 3, person)?;
                    s.raw_bind_parameter(at + 4, &r.properties)?;
                }
                match s.raw_execute()? {
                    0 => {}
                    n if n == chunk.len() => chunk.iter().for_each(|&i| new[i] = true),
                    _ => some_new.extend_from_slice(chunk),
                }
            }
            one_by_one.extend_from_slice(chunks.remainder());
        } else {
            one_by_one.extend(0..rows.len());
        }
        if !some_new.is_empty() {
            let mut s = self.prepare_cached("SELECT batch = ?4 FROM events WHERE tenant_id = ?1 AND pipeline_id = ?2 AND event_id = ?3")?;
            for i in some_new {
                new[i] =
                    s.query_row(params![p.tenant.0, p.pipeline.0, rows[i].0.event_id, batch], |r| r.get(0)).optional()?.unwrap_or(false);
            }
        }
        let mut s = self.prepare_cached(
            "INSERT INTO events (tenant_id, pipeline_id, event_id, name, ts, person_id, properties, batch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        )?;
        for i in one_by_one {
            let (r, person) = rows[i];
            new[i] = s.execute(params![p.tenant.0, p.pipeline.0, r.event_id, r.name, r.ts, person, r.properties, batch])? == 1;
        }
        if !new.contains(&true) {
            // Every row was stored before: no batch to remember.
            self.prepare_cached("DELETE FROM event_batches WHERE id = ?1")?.execute(params![batch])?;
        }
        Ok(new)
    }

    fn stored_event_ids(&mut self, p: PipelineKey, ids: &[&str]) -> Result<HashSet<String>, Error> {
        let mut s = self.prepare_cached("SELECT 1 FROM events WHERE tenant_id = ?1 AND pipeline_id = ?2 AND event_id = ?3")?;
        let mut out = HashSet::new();
        for id in ids {
            if s.exists(params![p.tenant.0, p.pipeline.0, id])? {
                out.insert(id.to_string());
            }
        }
        Ok(out)
    }

    fn park(
        &mut self,
        p: PipelineKey,
        run: RunKey,
        backfill: bool,
        rule: IdentityRule,
        now: Micros,
        rows: &[&EventRow],
    ) -> Result<Vec<bool>, Error> {
        let mut s = self.prepare_cached(
            "INSERT INTO parked_events (tenant_id, pipeline_id, event_id, name, ts, key_kind, user_key, email, properties, backfill, parked_at, run)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT DO NOTHING",
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let n = s.execute(params![
                p.tenant.0,
                p.pipeline.0,
                r.event_id,
                r.name,
                r.ts,
                rule.as_str(),
                r.user_key,
                r.email,
                r.properties,
                backfill,
                now,
                run.0
            ])?;
            out.push(n == 1);
        }
        Ok(out)
    }

    fn parked_ids(&mut self, p: PipelineKey, max: usize) -> Result<Option<Vec<String>>, Error> {
        let ids: Vec<String> = self
            .prepare_cached("SELECT event_id FROM parked_events WHERE tenant_id = ?1 AND pipeline_id = ?2 LIMIT ?3")?
            .query_map(params![p.tenant.0, p.pipeline.0, max as i64 + 1], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok((ids.len() <= max).then_some(ids))
    }

    fn unpark(&mut self, p: PipelineKey, ids: &[&str]) -> Result<u64, Error> {
        let mut s = self.prepare_cached("DELETE FROM parked_events WHERE pipeline_id = ?1 AND event_id = ?2 AND tenant_id = ?3")?;
        let mut n = 0;
        for id in ids {
            n += s.execute(params![p.pipeline.0, id, p.tenant.0])? as u64;
        }
        Ok(n)
    }

    fn parked(&mut self, t: TenantId, only: Option<PipelineId>) -> Result<Vec<ParkedRow>, Error> {
        let mut s = self.prepare_cached(
            "SELECT id, key_kind, user_key, email FROM parked_events WHERE tenant_id = ?1 AND (?2 IS NULL OR pipeline_id = ?2) ORDER BY id",
        )?;
        let rows = s.query_map(params![t.0, only.map(|p| p.0)], |r| {
            let kind: String = r.get(1)?;
            Ok(ParkedRow {
                id: r.get(0)?,
                key_kind: if kind == IdentityRule::Email.as_str() { IdentityRule::Email } else { IdentityRule::ExternalId },
                user_key: r.get(2)?,
                email: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn move_parked(&mut self, t: TenantId, moves: &[(i64, i64)], now: Micros) -> Result<u64, Error> {
        // One batch for each pipeline, run and backfill the moved events came from.
        let mut batches: HashMap<(i64, i64, bool), i64> = HashMap::new();
        let mut n = 0;
        for (parked, person) in moves {
            let Some(from) = self
                .prepare_cached("SELECT pipeline_id, run, backfill FROM parked_events WHERE id = ?1 AND tenant_id = ?2")?
                .query_row(params![parked, t.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?
            else {
                continue;
            };
            let batch = match batches.get(&from) {
                Some(batch) => *batch,
                None => {
                    self.prepare_cached(
                        "INSERT INTO event_batches (tenant_id, pipeline_id, run, backfill, ingested_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![t.0, from.0, from.1, from.2, now])?;
                    let batch = self.last_insert_rowid();
                    batches.insert(from, batch);
                    batch
                }
            };
            self.prepare_cached(
                "INSERT INTO events (tenant_id, pipeline_id, event_id, name, ts, person_id, properties, batch)
                 SELECT tenant_id, pipeline_id, event_id, name, ts, ?1, properties, ?2 FROM parked_events
                 WHERE id = ?3 AND tenant_id = ?4 ON CONFLICT DO NOTHING",
            )?
            .execute(params![person, batch, parked, t.0])?;
            n += self.prepare_cached("DELETE FROM parked_events WHERE id = ?1 AND tenant_id = ?2")?.execute(params![parked, t.0])? as u64;
        }
        Ok(n)
    }

    fn expire_parked(&mut self, p: PipelineKey, before: Micros) -> Result<u64, Error> {
        Ok(self
            .prepare_cached("DELETE FROM parked_events WHERE pipeline_id = ?1 AND parked_at < ?2")?
            .execute(params![p.pipeline.0, before])? as u64)
    }

    fn insert_quarantine(&mut self, p: PipelineKey, run: RunKey, now: Micros, rows: &[(&Quarantined, String)]) -> Result<u64, Error> {
        let mut s = self.prepare_cached(
            "INSERT INTO quarantine (tenant_id, pipeline_id, run, key, reason, row, row_hash, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT DO NOTHING",
        )?;
        let mut n = 0;
        for (q, hash) in rows {
            n += s.execute(params![p.tenant.0, p.pipeline.0, run.0, q.key, q.reason, q.row, hash, now])? as u64;
        }
        Ok(n)
    }

    fn set_cursor(&mut self, p: PipelineKey, slot: Slot, value: Option<Micros>, now: Micros) -> Result<(), Error> {
        match value {
            Some(v) => self
                .prepare_cached(
                    "INSERT INTO cursors (pipeline_id, slot, value, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (pipeline_id, slot) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )?
                .execute(params![p.pipeline.0, slot.as_str(), v, now])?,
            None => self
                .prepare_cached("DELETE FROM cursors WHERE pipeline_id = ?1 AND slot = ?2")?
                .execute(params![p.pipeline.0, slot.as_str()])?,
        };
        Ok(())
    }
}
