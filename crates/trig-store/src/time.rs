//! How the store's instants ([`crate::Micros`]) are written for people.

use crate::Micros;

/// RFC 3339 in UTC with microseconds (`2026-11-25T09:32:43.000000Z`); a value
/// outside chrono's range is written as its number.
pub fn rfc3339(us: Micros) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000) as u32;
    match chrono::DateTime::from_timestamp(secs, micros * 1000) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        None => us.to_string(),
    }
}
