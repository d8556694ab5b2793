//! Window arithmetic, free of I/O so it can be property-tested.
//!
//! A window is the half-open interval `(from, to]` of cursor values, in
//! microseconds since the epoch. An incremental run reads
//! `(cursor − lookback, now − settle]`; a long range is cut into windows
//! whose length follows the data's density, so each holds about the same
//! number of rows and can be checkpointed.

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

/// The next window's length: sized so it holds about `target` rows at the
/// density the last one had (`rows` in `len`), growing at most 8× at a time,
/// within `[min, max]`.
pub fn next_len(len: Micros, rows: u64, target: u64, min: Micros, max: Micros) -> Micros {
    let (min, max) = (min.max(1), max.max(min.max(1)));
    let len = len.clamp(min, max);
    let wanted = if rows == 0 { len.saturating_mul(8) } else { (len as i128 * target.max(1) as i128 / rows as i128) as i64 };
    wanted.min(len.saturating_mul(8)).clamp(min, max)
}

/// A first window's length, from a count: sized to hold about `target` of
/// the `rows` counted in `span` (at their average density), never longer
/// than the span itself, within `[min, max]`.
pub fn first_len(span: Micros, rows: u64, target: u64, min: Micros, max: Micros) -> Micros {
    let (min, max) = (min.max(1), max.max(min.max(1)));
    let span = span.max(0);
    let wanted = (i128::from(span) * i128::from(target.max(1)) / i128::from(rows.max(1))).min(i128::from(span));
    i64::try_from(wanted).unwrap_or(span).clamp(min, max)
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

    proptest! {
        #[test]
        fn a_first_window_holds_about_its_target_within_bounds(span in 0i64..1_000_000_000_000_000, rows in 1u64..100_000_000, target in 1u64..1_000_000, min in 1i64..1_000_000, wide in 0i64..1_000_000_000_000) {
            let max = min + wide;
            let len = first_len(span, rows, target, min, max);
            prop_assert!(len >= min && len <= max);
            prop_assert!(len <= span.max(min), "never longer than the span");
            // At the average density, the window holds at most the target (unless held up by the minimum).
            if len > min {
                prop_assert!(i128::from(len) * i128::from(rows) <= i128::from(span) * i128::from(target));
            }
        }
    }

    #[test]
    fn empty_and_edges() {
        assert!(Window { from: 0, to: 10 }.contains(10) && !Window { from: 0, to: 10 }.contains(0));
        assert_eq!(next_len(100, 0, 10, 1, 10_000), 800, "an empty window grows 8×");
        assert_eq!(next_len(100, 1000, 10, 5, 10_000), 5, "a dense one shrinks, not below the minimum");
        assert_eq!(upper_bound(100, 30), 70);
        assert_eq!(incremental_start(i64::MIN + 1, 10), i64::MIN);
    }
}
