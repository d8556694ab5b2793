//! A deterministic B2B SaaS dataset: organisations, people and product
//! events, with the awkward rows real pipelines meet (duplicates, late
//! arrivals, NULLs, future timestamps, unknown users, a zone-less column).
//!
//! Events are produced batch by batch ([`events`] is an iterator), so the
//! generator itself never holds more than one batch.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, MapBuilder, MapFieldNames, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use crate::types::{map_type, timestamp_type};

/// Sizes and the instant the data is anchored to (timestamps lie in the
/// 30 days before it; a few lie after it, on purpose).
#[derive(Debug, Clone, Copy)]
pub struct DatasetSpec {
    pub events: u64,
    pub seed: u64,
    pub anchor: DateTime<Utc>,
}

impl DatasetSpec {
    pub fn organisations(&self) -> u64 {
        (self.events / 1000).clamp(20, 20_000)
    }
    pub fn people(&self) -> u64 {
        self.organisations() * 8
    }
}

/// SplitMix64: small, fast, and the same on every machine.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const PLANS: &[&str] = &["free", "starter", "growth", "enterprise"];
const ROLES: &[&str] = &["admin", "member", "viewer", "owner", "billing"];
const PLATFORMS: &[&str] = &["web", "ios", "android", "api"];
const EVENTS: &[&str] = &[
    "page_viewed",
    "signed_in",
    "feature_used",
    "report_exported",
    "invite_sent",
    "project_created",
    "integration_connected",
    "billing_viewed",
];
const FIRST: &[&str] = &["Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Radia", "Edsger", "Frances", "Tim", "Margaret", "Dennis"];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Liskov",
    "Thompson",
    "Perlman",
    "Dijkstra",
    "Allen",
    "Berners-Lee",
    "Hamilton",
    "Ritchie",
];
const WORDS: &[&str] =
    &["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell", "cyberdyne", "soylent", "wonka", "massive"];

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn organisations_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("organisation_id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("domain", DataType::Utf8, true),
        Field::new("plan", DataType::Utf8, true),
        Field::new("arr", DataType::Decimal128(12, 2), true),
        Field::new("created_at", timestamp_type(), true),
        Field::new("updated_at", timestamp_type(), true),
    ]))
}

pub fn people_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("email", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("organisation_id", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
        Field::new("signup_date", DataType::Date32, true),
        Field::new("updated_at", timestamp_type(), true),
    ]))
}

pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, true),
        Field::new("event_name", DataType::Utf8, true),
        Field::new("event_ts", timestamp_type(), true),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("plan", DataType::Utf8, true),
        Field::new("platform", DataType::Utf8, true),
        Field::new("properties", map_type(DataType::Utf8, DataType::Utf8), true),
        Field::new("ingested_at", timestamp_type(), true),
        Field::new("event_ts_local", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("environment", DataType::Utf8, true),
    ]))
}

fn org_id(i: u64) -> String {
    format!("org_{i:05}")
}
fn org_name(i: u64) -> String {
    let w = WORDS[(i % WORDS.len() as u64) as usize];
    format!("{}{} {}", w[..1].to_uppercase(), &w[1..], i)
}
fn org_domain(i: u64) -> String {
    format!("{}{}.example.com", WORDS[(i % WORDS.len() as u64) as usize], i)
}
fn user_id(i: u64) -> String {
    format!("u_{i:06}")
}
fn person_email(spec: &DatasetSpec, i: u64) -> String {
    let org = i % spec.organisations();
    format!("{}.{}{}@{}", FIRST[(i % 12) as usize].to_lowercase(), LAST[((i / 12) % 12) as usize].to_lowercase(), i, org_domain(org))
}

pub fn organisations(spec: &DatasetSpec) -> RecordBatch {
    let mut rng = Rng(spec.seed ^ 0x0126);
    let n = spec.organisations();
    let (mut ids, mut names, mut domains, mut plans, mut arr, mut created, mut updated) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        ids.push(org_id(i));
        // One organisation in fifty has no name: a row a pipeline must quarantine.
        names.push(if i % 50 == 49 { None } else { Some(org_name(i)) });
        domains.push(Some(org_domain(i)));
        let plan = rng.pick(PLANS);
        plans.push(Some(plan.to_string()));
        arr.push(if plan == "free" { None } else { Some((rng.below(500_000) * 100 + rng.below(100)) as i128) });
        let c = spec.anchor - Duration::days(30 + rng.below(700) as i64);
        created.push(Some(micros(c)));
        updated.push(Some(micros(spec.anchor - Duration::minutes(rng.below(60 * 24 * 30) as i64))));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(names)),
        Arc::new(StringArray::from(domains)),
        Arc::new(StringArray::from(plans)),
        Arc::new(Decimal128Array::from(arr).with_precision_and_scale(12, 2).expect("valid decimal")),
        Arc::new(TimestampMicrosecondArray::from(created).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from(updated).with_timezone("UTC")),
    ];
    RecordBatch::try_new(organisations_schema(), cols).expect("columns match the organisations schema")
}

pub fn people(spec: &DatasetSpec) -> RecordBatch {
    let mut rng = Rng(spec.seed ^ 0x9e0b1e);
    let n = spec.people();
    let (mut ids, mut emails, mut names, mut orgs, mut roles, mut signup, mut updated) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let epoch_days =
        spec.anchor.date_naive().signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days() as i32;
    for i in 0..n {
        ids.push(user_id(i));
        // Some people have no email (pseudonymised pipelines), some no organisation.
        emails.push(if i % 40 == 39 { None } else { Some(person_email(spec, i)) });
        names.push(Some(format!("{} {}", FIRST[(i % 12) as usize], LAST[((i / 12) % 12) as usize])));
        orgs.push(if i % 60 == 59 { None } else { Some(org_id(i % spec.organisations())) });
        roles.push(Some(rng.pick(ROLES).to_string()));
        signup.push(Some(epoch_days - 30 - rng.below(700) as i32));
        updated.push(Some(micros(spec.anchor - Duration::minutes(rng.below(60 * 24 * 30) as i64))));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(emails)),
        Arc::new(StringArray::from(names)),
        Arc::new(StringArray::from(orgs)),
        Arc::new(StringArray::from(roles)),
        Arc::new(Date32Array::from(signup)),
        Arc::new(TimestampMicrosecondArray::from(updated).with_timezone("UTC")),
    ];
    RecordBatch::try_new(people_schema(), cols).expect("columns match the people schema")
}

/// Product events in batches of `batch_rows`. About 1% duplicate an earlier
/// event id, 2% arrive late (ingested hours after they happened), 1% belong
/// to users Trig has never seen, 0.5% have a NULL id, name, timestamp or user,
/// 0.1% are stamped in the future.
pub fn events(spec: DatasetSpec, batch_rows: usize) -> impl Iterator<Item = RecordBatch> {
    let mut rng = Rng(spec.seed ^ 0xe7e7);
    let mut next = 0u64;
    let window_us = 30 * 24 * 3600 * 1_000_000i64;
    let start = micros(spec.anchor) - window_us;
    let people = spec.people();
    std::iter::from_fn(move || {
        if next >= spec.events {
            return None;
        }
        let n = (spec.events - next).min(batch_rows as u64);
        let mut ids = StringBuilder::new();
        let mut names = StringBuilder::new();
        let mut ts: Vec<Option<i64>> = Vec::with_capacity(n as usize);
        let mut users = StringBuilder::new();
        let mut emails = StringBuilder::new();
        let mut plans = StringBuilder::new();
        let mut platforms = StringBuilder::new();
        let mut props = MapBuilder::new(
            Some(MapFieldNames { entry: "entries".into(), key: "key".into(), value: "value".into() }),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut ingested: Vec<Option<i64>> = Vec::with_capacity(n as usize);
        let mut local: Vec<Option<i64>> = Vec::with_capacity(n as usize);
        let mut envs = StringBuilder::new();
        for k in 0..n {
            let i = next + k;
            // Spread events evenly over the window, in order, with jitter.
            let base = start + (window_us / spec.events.max(1) as i64) * i as i64;
            let mut t = base + rng.below(60_000_000) as i64;
            let dup = i > 10 && rng.chance(10);
            let id_num = if dup { i - 1 - rng.below(10.min(i)) } else { i };
            if rng.chance(1) {
                t = micros(spec.anchor) + (1 + rng.below(30)) as i64 * 86_400_000_000;
            }
            let late = rng.chance(20);
            let ingest = if late { t + (2 + rng.below(10)) as i64 * 3_600_000_000 } else { t + rng.below(5_000_000) as i64 };
            let person = if rng.chance(10) { people + rng.below(1000) } else { rng.below(people) };
            let null_kind = if rng.chance(5) { rng.below(4) } else { 9 };
            if null_kind == 0 {
                ids.append_null()
            } else {
                ids.append_value(format!("evt_{id_num:010}"))
            }
            if null_kind == 1 {
                names.append_null()
            } else {
                names.append_value(EVENTS[(id_num % EVENTS.len() as u64) as usize])
            }
            ts.push(if null_kind == 2 { None } else { Some(t) });
            if null_kind == 3 {
                users.append_null()
            } else {
                users.append_value(user_id(person))
            }
            if person < people && person % 40 != 39 {
                emails.append_value(person_email(&spec, person))
            } else {
                emails.append_null()
            }
            plans.append_value(PLANS[(person % 4) as usize]);
            platforms.append_value(PLATFORMS[(id_num % 4) as usize]);
            props.keys().append_value("page");
            props.values().append_value(format!("/app/{}", id_num % 17));
            props.keys().append_value("session");
            props.values().append_value(format!("s{}", id_num / 7));
            props.append(true).expect("map entries are balanced");
            ingested.push(Some(ingest));
            local.push(if null_kind == 2 { None } else { Some(t + 3_600_000_000) });
            envs.append_value(if id_num % 97 == 0 { "staging" } else { "production" });
        }
        next += n;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(names.finish()),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(users.finish()),
            Arc::new(emails.finish()),
            Arc::new(plans.finish()),
            Arc::new(platforms.finish()),
            Arc::new(props.finish()),
            Arc::new(TimestampMicrosecondArray::from(ingested).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(local)),
            Arc::new(envs.finish()),
        ];
        Some(RecordBatch::try_new(events_schema(), cols).expect("columns match the events schema"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_streaming() {
        let spec = DatasetSpec { events: 2500, seed: 7, anchor: DateTime::from_timestamp(1_790_000_000, 0).unwrap() };
        let a: Vec<RecordBatch> = events(spec, 1000).collect();
        let b: Vec<RecordBatch> = events(spec, 1000).collect();
        assert_eq!(a.len(), 3);
        assert_eq!(a.iter().map(|b| b.num_rows()).sum::<usize>(), 2500);
        assert_eq!(a, b);
        assert_eq!(organisations(&spec), organisations(&spec));
        assert_eq!(people(&spec).num_rows() as u64, spec.people());
    }
}
