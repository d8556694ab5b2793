//! The order of one run's event writes when two are in flight (see
//! `Store::write_events`): each call takes a number when it is made; call
//! `n` starts its first half once call `n − 1`'s first half is done, and its
//! second half (the fence check, parking, the run record, the commit) once
//! call `n − 1` has committed. A call that fails, or is dropped before it
//! ran, fails the calls made while it was pending: none of them writes
//! anything. A run's entry lives while it has calls pending.
//!
//! The first wait is asynchronous and holds nothing (no pooled connection:
//! a call waiting for its turn never keeps a connection from the call it
//! waits for); the second is a blocking wait on the connection's thread,
//! where the call's transaction is open.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::{Error, RunKey};

/// One run's calls.
#[derive(Debug, Default)]
struct Turns {
    /// Calls made (the next call's number).
    called: u64,
    /// Calls whose first half is done, in order.
    firsts: u64,
    /// Calls committed, in order.
    commits: u64,
    /// Calls finished, committed or not.
    finished: u64,
    failed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Order {
    runs: Mutex<HashMap<RunKey, Turns>>,
    /// For the blocking waits.
    changed: Condvar,
    /// For the asynchronous waits.
    notify: tokio::sync::Notify,
}

/// A call's place in its run's order. Dropped unfinished, it fails the calls made while it was pending.
pub(crate) struct Ticket {
    order: Arc<Order>,
    run: RunKey,
    n: u64,
    finished: bool,
}

fn earlier_failed() -> Error {
    Error::Database("an earlier batch of this run was not written, so this one was not either".into())
}

impl Order {
    fn runs(&self) -> MutexGuard<'_, HashMap<RunKey, Turns>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changed.notify_all();
        self.notify.notify_waiters();
    }

    /// Takes the next place in `run`'s order.
    pub(crate) fn call(self: &Arc<Order>, run: RunKey) -> Ticket {
        let mut runs = self.runs();
        let turns = runs.entry(run).or_default();
        let n = turns.called;
        turns.called += 1;
        Ticket { order: self.clone(), run, n, finished: false }
    }
}

/// The first key of a run's transaction-scoped advisory locks (the second
/// is the call's place). Run ids are unique in a database; past 2³² runs two
/// may share a key, which only makes one wait for the other.
pub(crate) fn lock_key(run: RunKey) -> i32 {
    run.0 as i32
}

impl Ticket {
    /// The call's place in its run's order (wrapping past 2³¹ calls, for the advisory lock only).
    pub(crate) fn place(&self) -> i32 {
        self.n as i32
    }

    /// Whether this call's turn has come (`Ok(true)`), not yet (`Ok(false)`), or an earlier call failed (`Err`).
    fn ready(&self, turns: Option<&Turns>, of: fn(&Turns) -> u64) -> Result<bool, Error> {
        match turns {
            Some(t) if t.failed => Err(earlier_failed()),
            Some(t) => Ok(of(t) == self.n),
            None => Err(Error::Database("a store write lost its place in its run's order (a bug)".into())),
        }
    }

    /// Waits, holding nothing, until every earlier call's first half is done.
    pub(crate) async fn first_turn(&self) -> Result<(), Error> {
        loop {
            let notified = self.order.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ready(self.order.runs().get(&self.run), |t| t.firsts)? {
                return Ok(());
            }
            notified.await;
        }
    }

    /// This call's first half is done: the next call may start its own.
    pub(crate) fn first_done(&self) {
        if let Some(t) = self.order.runs().get_mut(&self.run) {
            t.firsts = t.firsts.max(self.n + 1);
        }
        self.order.changed();
    }

    /// Blocks until every earlier call has committed.
    pub(crate) fn second_turn(&self) -> Result<(), Error> {
        let mut runs = self.order.runs();
        while !self.ready(runs.get(&self.run), |t| t.commits)? {
            runs = self.order.changed.wait(runs).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// This call ends: committed (`true`) or not.
    pub(crate) fn finish(mut self, committed: bool) {
        self.end(committed);
    }

    fn end(&mut self, committed: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        let mut runs = self.order.runs();
        if let Some(t) = runs.get_mut(&self.run) {
            t.finished += 1;
            t.firsts = t.firsts.max(self.n + 1);
            if committed {
                t.commits = self.n + 1;
            } else {
                t.failed = true;
            }
            // None pending: the run's next call starts afresh.
            if t.finished == t.called {
                runs.remove(&self.run);
            }
        }
        drop(runs);
        self.order.changed();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.end(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_take_turns_in_the_order_made_and_a_failure_fails_the_later_ones() {
        let order = Arc::new(Order::default());
        let run = RunKey(7);
        let (a, b, c) = (order.call(run), order.call(run), order.call(run));
        // b's first half waits for a's.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), b.first_turn()).await;
        assert!(waiting.is_err(), "b started before a's first half");
        a.first_turn().await.unwrap();
        a.first_done();
        b.first_turn().await.unwrap();
        b.first_done();
        // b's second half waits for a's commit.
        let second = std::thread::spawn(move || {
            let r = b.second_turn();
            b.finish(r.is_ok());
            r.is_ok()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!second.is_finished(), "b went on before a committed");
        a.finish(true);
        assert!(second.join().unwrap(), "b goes on once a committed");
        // c fails with d pending behind it: d fails without waiting.
        let d = order.call(run);
        c.first_turn().await.unwrap();
        drop(c);
        assert!(d.first_turn().await.is_err());
        assert!(d.second_turn().is_err());
        drop(d);
        // Nothing pending: the run's entry is gone, and its next call starts afresh.
        assert!(order.runs().is_empty(), "{:?}", order.runs());
        let e = order.call(run);
        e.first_turn().await.unwrap();
        e.first_done();
        e.second_turn().unwrap();
        // Another run is not held up by this one's pending call.
        let other = order.call(RunKey(8));
        other.first_turn().await.unwrap();
        other.finish(true);
        e.finish(true);
        assert!(order.runs().is_empty(), "{:?}", order.runs());
    }
}
