//! The one retry policy: jittered exponential backoff, capped in attempts and
//! in total time, honouring `Retry-After`. Only what can succeed on a retry is
//! retried (throttling, unavailability, dropped connections); everything else
//! fails at once, so a bad token is reported in one round trip, not five.

use std::future::Future;
use std::time::{Duration, Instant};

/// What the caller's error says about retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fail now: retrying unchanged cannot help.
    Fail,
    /// Retry after the backoff, or after the server's `Retry-After` when it sent one.
    Retry { retry_after: Option<Duration> },
}

/// Backoff settings. The defaults suit the Databricks REST APIs: 0.5 s doubling
/// to 30 s, at most 8 attempts and 5 minutes in all (the SDKs' budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_attempts: 8,
            max_elapsed: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempt counts from 1), with
    /// jitter on the exponential part; a `Retry-After` from the server is the
    /// wait instead (capped by `max_delay`). `unit` is a random number in [0, 1).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let exp = self.initial_delay.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_delay);
        // Half fixed, half random: never zero, never synchronised across clients.
        let jittered = capped.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        match retry_after {
            Some(ra) => ra.min(self.max_delay),
            None => jittered,
        }
    }

    /// Runs `op` until it succeeds, `classify` says fail, or the budget is spent.
    /// Returns the last error and how many attempts were made on failure.
    pub async fn run<T, E, Fut>(&self, mut op: impl FnMut(u32) -> Fut, classify: impl Fn(&E) -> Verdict) -> Result<T, Exhausted<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut rng = Jitter::seeded();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Verdict::Retry { retry_after } = classify(&err) else {
                return Err(Exhausted { error: err, attempts: attempt, gave_up: false });
            };
            let wait = self.delay(attempt, retry_after, rng.unit());
            if attempt >= self.max_attempts || started.elapsed() + wait > self.max_elapsed {
                return Err(Exhausted { error: err, attempts: attempt, gave_up: true });
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// The error that ended a retried operation.
#[derive(Debug)]
pub struct Exhausted<E> {
    pub error: E,
    pub attempts: u32,
    /// True when the budget ran out on a retryable error; false when the error was final.
    pub gave_up: bool,
}

/// SplitMix64 seeded from the clock: jitter needs spread, not secrecy.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Jitter(nanos ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_grow_jittered_and_capped() {
        let p = RetryPolicy { initial_delay: Duration::from_millis(100), max_delay: Duration::from_secs(2), ..Default::default() };
        assert_eq!(p.delay(1, None, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(1, None, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(3, None, 1.0), Duration::from_millis(400));
        assert_eq!(p.delay(30, None, 1.0), Duration::from_secs(2));
        assert!(p.delay(30, None, 0.0) >= Duration::from_secs(1));
        // Retry-After is the wait, within the cap.
        assert_eq!(p.delay(1, Some(Duration::from_secs(1)), 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(1, Some(Duration::from_secs(60)), 0.0), Duration::from_secs(2));
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_attempts: 4,
            max_elapsed: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn retries_what_can_succeed_and_stops_at_the_cap() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, _> = fast()
            .run(
                |n| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { if n < 3 { Err("throttled") } else { Ok(n) } }
                },
                |_| Verdict::Retry { retry_after: None },
            )
            .await;
        assert_eq!(r.unwrap(), 3);
        let r: Result<(), _> = fast().run(|_| async { Err("unavailable") }, |_| Verdict::Retry { retry_after: None }).await;
        let e = r.unwrap_err();
        assert_eq!((e.attempts, e.gave_up), (4, true));
    }

    #[tokio::test]
    async fn final_errors_fail_at_once() {
        let r: Result<(), _> = fast().run(|_| async { Err("invalid token") }, |_| Verdict::Fail).await;
        let e = r.unwrap_err();
        assert_eq!((e.attempts, e.gave_up, e.error), (1, false, "invalid token"));
    }

    #[tokio::test]
    async fn the_time_budget_is_respected() {
        let p = RetryPolicy { max_elapsed: Duration::from_millis(0), ..fast() };
        let e =
            p.run(|_| async { Err::<(), _>("slow") }, |_| Verdict::Retry { retry_after: Some(Duration::from_secs(1)) }).await.unwrap_err();
        assert_eq!(e.attempts, 1);
    }
}
