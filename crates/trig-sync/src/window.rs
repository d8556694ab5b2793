//! Window arithmetic, free of I/O so it can be property-tested.
//!
//! A window is the half-open interval `(from, to]` of cursor values, in
//! microseconds since the epoch. An incremental run reads
//! `(cursor − lookback, now − settle]`; a long range is cut into windows of
//! at most `max_len` so each one can be checkpointed.

use trig_store::Micros;

/// `(from, to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Micros,
    pub to: Micros,
}

impl Window {
    pub fn contains(&self, t: Micros) -> bool {
        t > self.from && t <= self.to
    }
}

/// Cuts `(from, to]` into consecutive windows of at most `max_len`
/// (the last may be shorter). Empty when `to <= from`.
pub fn split(from: Micros, to: Micros, max_len: Micros) -> Vec<Window> {
    let max_len = max_len.max(1);
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let end = start.saturating_add(max_len).min(to);
        out.push(Window { from: start, to: end });
        start = end;
    }
    out
}

/// The next window's length: sized so it holds about `target` rows at the
/// density the last one had (`rows` in `len`), growing at most 8× at a time,
/// within `[min, max]`.
pub fn next_len(len: Micros, rows: u64, target: u64, min: Micros, max: Micros) -> Micros {
    let (min, max) = (min.max(1), max.max(min.max(1)));
    let len = len.clamp(min, max);
    let wanted = if rows == 0 { len.saturating_mul(8) } else { (len as i128 * target.max(1) as i128 / rows as i128) as i64 };
    wanted.min(len.saturating_mul(8)).clamp(min, max)
}

/// Where an incremental read starts: `cursor − lookback`, never before the epoch floor.
pub fn incremental_start(cursor: Micros, lookback: Micros) -> Micros {
    cursor.saturating_sub(lookback.max(0))
}

/// The newest cursor value a run may read: `now − settle`.
pub fn upper_bound(now: Micros, settle: Micros) -> Micros {
    now.saturating_sub(settle.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn windows_cover_the_range_exactly_once(from in -1_000_000_000i64..1_000_000_000, len in 0i64..5_000_000_000, max in 1i64..2_000_000_000) {
            let to = from + len;
            let ws = split(from, to, max);
            // Contiguous, each bounded, covering (from, to].
            let mut at = from;
            for w in &ws {
                prop_assert_eq!(w.from, at);
                prop_assert!(w.to > w.from);
                prop_assert!(w.to - w.from <= max);
                at = w.to;
            }
            prop_assert_eq!(at, if len > 0 { to } else { from });
            // Every instant in the range lies in exactly one window.
            for t in [from + 1, to, from + len / 2 + 1] {
                if t > from && t <= to {
                    prop_assert_eq!(ws.iter().filter(|w| w.contains(t)).count(), 1);
                }
            }
            prop_assert!(!ws.iter().any(|w| w.contains(from)));
        }

        #[test]
        fn the_lookback_reaches_every_late_row(cursor in 0i64..1_000_000_000_000, lookback in 0i64..100_000_000_000, age in 0i64..100_000_000_000) {
            // A row whose cursor value is `age` before the cursor is re-read
            // exactly when it is within the lookback.
            let start = incremental_start(cursor, lookback);
            let row = cursor - age;
            prop_assert_eq!(row > start, age < lookback);
        }
    }

    proptest! {
        #[test]
        fn window_lengths_adapt_within_bounds(len in 1i64..1_000_000_000_000, rows in 0u64..10_000_000, target in 1u64..1_000_000, min in 1i64..1_000_000, span in 0i64..1_000_000_000_000) {
            let max = min + span;
            let next = next_len(len, rows, target, min, max);
            prop_assert!(next >= min && next <= max);
            let len = len.clamp(min, max);
            if rows > target { prop_assert!(next <= len, "too many rows: never longer"); }
            if rows < target { prop_assert!(next >= len, "too few rows: never shorter"); }
            prop_assert!(next <= len.saturating_mul(8).max(min));
        }
    }

    #[test]
    fn empty_and_edges() {
        assert!(split(10, 10, 5).is_empty());
        assert!(split(10, 5, 5).is_empty());
        assert_eq!(split(0, 10, 4), vec![Window { from: 0, to: 4 }, Window { from: 4, to: 8 }, Window { from: 8, to: 10 }]);
        assert_eq!(upper_bound(100, 30), 70);
        assert_eq!(incremental_start(i64::MIN + 1, 10), i64::MIN);
    }
}
