//! The people and organisations pipelines (trig-notes, decisions 3–6): id
//! and name always; include/exclude; NULL clears; a vanished row never
//! deletes; with `updated_at` an incremental read, without it a full read
//! diffed against stored hashes so unchanged records are not rewritten.

use arrow_array::RecordBatch as ArrowBatch;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use trig_config::{AttributesSpec, Zone};
use trig_store::{Checkpoint, Entity, Quarantined, RecordBatch, RecordRow, RunCounts, Slot, SyncRun};

use crate::pump::{self, Sink, Txn};
use crate::query::{self, Query, Select};
use crate::values::{Col, json_at, map_batch, normalise_email, row_json};
use crate::window::{Window, incremental_start, upper_bound};
use crate::{Ctx, DryRun, Error, Trigger, micros, now_micros};

struct Layout {
    columns: Vec<String>,
    id: usize,
    name: usize,
    email: Option<usize>,
    link: Option<usize>,
    attributes: Vec<(String, usize)>,
}

fn wanted(spec: &AttributesSpec) -> Vec<(String, String)> {
    let mut w = vec![("id".to_string(), spec.id.clone()), ("name".into(), spec.name.clone())];
    w.extend(spec.email.clone().map(|c| ("email".into(), c)));
    w.extend(spec.organisation_id.clone().map(|c| ("organisation_id".into(), c)));
    w.extend(spec.domain.clone().map(|c| ("domain".into(), c)));
    w.extend(spec.include.iter().map(|c| ("include".into(), c.clone())));
    w.extend(spec.updated_at.clone().map(|c| ("updated_at".into(), c)));
    w
}

/// The projection: the mapped columns, then the attributes (the include
/// list, or every other source column), minus the exclude list.
fn layout(spec: &AttributesSpec, source_columns: &[String]) -> Layout {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let link_col = spec.organisation_id.as_ref().or(spec.domain.as_ref());
    let mut columns: Vec<String> = vec![spec.id.clone(), spec.name.clone()];
    columns.extend(spec.email.clone());
    columns.extend(link_col.cloned());
    let fixed: Vec<String> = columns.iter().cloned().chain(spec.updated_at.clone()).collect();
    let candidates: Vec<String> = if spec.include.is_empty() { source_columns.to_vec() } else { spec.include.clone() };
    let mut attributes = Vec::new();
    for c in candidates {
        if fixed.iter().any(|f| eq(f, &c)) || spec.exclude.iter().any(|x| eq(x, &c)) || columns.iter().any(|x| eq(x, &c)) {
            continue;
        }
        attributes.push((c.clone(), columns.len()));
        columns.push(c);
    }
    let at = |c: &String| columns.iter().position(|x| x == c).expect("projected");
    Layout { id: 0, name: 1, email: spec.email.as_ref().map(at), link: link_col.map(at), attributes, columns: columns.clone() }
}

fn hash(parts: &Value) -> String {
    Sha256::digest(parts.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

struct Mapper<'a> {
    spec: &'a AttributesSpec,
    layout: &'a Layout,
    zone: Zone,
}

impl Mapper<'_> {
    fn row(&self, cols: &[Col<'_>], i: usize) -> Result<RecordRow, (Option<String>, String)> {
        let (l, s) = (self.layout, self.spec);
        let id = match cols[l.id].text(i) {
            Ok(Some(v)) if !v.trim().is_empty() => v.trim().to_string(),
            Ok(_) => return Err((None, format!("id (`{}`) is NULL or empty; id and name are required", s.id))),
            Err(e) => return Err((None, format!("id (`{}`): {e}", s.id))),
        };
        let name = match cols[l.name].text(i) {
            Ok(Some(v)) if !v.trim().is_empty() => v.trim().to_string(),
            Ok(_) => return Err((Some(id), format!("name (`{}`) is NULL or empty; id and name are required", s.name))),
            Err(e) => return Err((Some(id), format!("name (`{}`): {e}", s.name))),
        };
        let email = match l.email {
            Some(e) => match cols[e].text(i).ok().flatten() {
                Some(v) if !v.trim().is_empty() => {
                    Some(normalise_email(&v).ok_or_else(|| (Some(id.clone()), format!("email `{v}` is not an email address")))?)
                }
                _ => None,
            },
            None => None,
        };
        let link = match l.link {
            Some(k) => cols[k].text(i).ok().flatten().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()),
            None => None,
        };
        // NULL clears: absent from the group, which replaces the stored one.
        let mut attrs = Map::new();
        for (name, idx) in &l.attributes {
            let v = json_at(cols[*idx].array, i, Some(&self.zone));
            if !v.is_null() {
                attrs.insert(name.clone(), v);
            }
        }
        let attributes = Value::Object(attrs);
        let h = hash(&json!([id, name, email, link, attributes]));
        Ok(RecordRow { external_id: id, name, email, link, attributes: attributes.to_string(), hash: h })
    }

    fn map(&self, batch: &ArrowBatch) -> (Vec<RecordRow>, Vec<Quarantined>) {
        map_batch(batch, &self.layout.columns, &self.zone, |cols, i| self.row(cols, i))
    }
}

/// What to read: with `updated_at` and a previous sync, the recently changed rows; else everything.
async fn select(ctx: &Ctx<'_>, spec: &AttributesSpec, layout: &Layout, trigger: Trigger) -> Result<(Query, i64), Error> {
    let upper = upper_bound(now_micros(), micros(ctx.options.settle));
    let prev = ctx.store.cursor(ctx.key, Slot::Live).await?;
    let window = match (&spec.updated_at, prev, trigger) {
        (Some(col), Some(p), Trigger::Schedule | Trigger::Manual) => {
            Some((col.as_str(), Window { from: incremental_start(p, micros(spec.lookback)), to: upper }))
        }
        (Some(col), _, Trigger::Replay { from, to }) => Some((col.as_str(), Window { from, to })),
        _ => None,
    };
    let q = query::build(&Select { table: &ctx.table, columns: &layout.columns, filter: None, window, include_null_cursor: false });
    Ok((q, upper.max(prev.unwrap_or(i64::MIN))))
}

fn utc() -> Zone {
    Zone::Fixed(chrono::FixedOffset::east_opt(0).expect("UTC"))
}

struct RecordsSink<'a> {
    ctx: &'a Ctx<'a>,
    mapper: Mapper<'a>,
    entity: Entity,
}

impl Sink for RecordsSink<'_> {
    type Row = RecordRow;
    fn map(&self, batch: &ArrowBatch) -> (Vec<RecordRow>, Vec<Quarantined>) {
        self.mapper.map(batch)
    }
    async fn write(&self, txn: Txn<RecordRow>) -> Result<RunCounts, Error> {
        let batch = RecordBatch {
            fence: self.ctx.fence,
            run: self.ctx.run,
            entity: self.entity,
            rows: txn.rows,
            quarantine: txn.quarantine,
            checkpoints: txn.checkpoints,
            progress: txn.progress,
        };
        Ok(self.ctx.store.write_records(batch).await?.into())
    }
}

pub(crate) async fn run(ctx: &Ctx<'_>, spec: &AttributesSpec, trigger: Trigger, run: &mut SyncRun) -> Result<(), Error> {
    let source_columns = ctx.preflight(&wanted(spec)).await?;
    let layout = layout(spec, &source_columns);
    let (q, live) = select(ctx, spec, &layout, trigger).await?;
    if let Some(p) = q.parameters.first() {
        run.window_from = p.value.as_deref().and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok()).map(|t| t.timestamp_micros());
    }
    run.window_to = Some(live);
    let entity = spec.kind;
    let sink = RecordsSink { ctx, mapper: Mapper { spec, layout: &layout, zone: utc() }, entity };
    let checkpoints =
        if matches!(trigger, Trigger::Replay { .. }) { Vec::new() } else { vec![Checkpoint { slot: Slot::Live, value: Some(live) }] };
    pump::pump(ctx, &sink, &mut pump::Once(Some(pump::Step { query: q, checkpoints, window: None })), run).await?;
    if entity == Entity::People {
        // People appeared: events parked for them can land now.
        run.counts.rematched += ctx.store.rematch_parked(ctx.fence, ctx.run, false).await?;
    }
    Ok(())
}

pub(crate) async fn dry_run(ctx: &Ctx<'_>, spec: &AttributesSpec, trigger: Trigger, limit: u64) -> Result<DryRun, Error> {
    let source_columns = ctx.preflight(&wanted(spec)).await?;
    let layout = layout(spec, &source_columns);
    let (q, _) = select(ctx, spec, &layout, trigger).await?;
    let batches = ctx.query(&q, Some(limit)).await?.collect_batches().await?;
    let mapper = Mapper { spec, layout: &layout, zone: utc() };
    let mut rows = Vec::new();
    for b in &batches {
        let cols: Vec<Col<'_>> = b.columns().iter().map(Col::new).collect();
        for i in 0..b.num_rows() {
            rows.push(match mapper.row(&cols, i) {
                Ok(r) => json!({
                    "id": r.external_id,
                    "name": r.name,
                    "email": r.email,
                    (if spec.kind == Entity::People { "organisation_id" } else { "domain" }): r.link,
                    "attributes": serde_json::from_str::<Value>(&r.attributes).unwrap_or(Value::Null),
                }),
                Err((_, reason)) => json!({
                    "quarantined": reason,
                    "row": row_json(&layout.columns, b.columns(), i, &mapper.zone),
                }),
            });
        }
    }
    Ok(DryRun { sql: q.sql, parameters: q.parameters, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(include: &[&str], exclude: &[&str]) -> AttributesSpec {
        AttributesSpec {
            kind: Entity::People,
            id: "user_id".into(),
            name: "name".into(),
            email: Some("email".into()),
            organisation_id: Some("organisation_id".into()),
            domain: None,
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            updated_at: Some("updated_at".into()),
            lookback: std::time::Duration::from_secs(3600),
        }
    }

    #[test]
    fn include_and_exclude_shape_the_projection() {
        let source: Vec<String> = ["user_id", "email", "name", "organisation_id", "role", "signup_date", "updated_at", "internal_notes"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let all = layout(&spec(&[], &["internal_notes"]), &source);
        assert_eq!(all.columns, ["user_id", "name", "email", "organisation_id", "role", "signup_date"]);
        assert_eq!(all.attributes.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(), ["role", "signup_date"]);
        let some = layout(&spec(&["role"], &[]), &source);
        assert_eq!(some.columns, ["user_id", "name", "email", "organisation_id", "role"]);
    }
}
