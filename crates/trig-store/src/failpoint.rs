//! The failpoint both stores share (tests only, the `failpoints` feature): it
//! fires inside `write_events` after the rows are written and before the
//! commit, on the `nth` call (1-based), to prove that a crash at that instant
//! loses and duplicates nothing. `TRIG_FAILPOINT=events_before_commit:N`
//! arms it to abort the process (what a kill does) from a child process.

use std::sync::{Arc, Mutex};

/// What a failpoint does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// Return an error (the transaction rolls back).
    Error,
    /// Abort the process, as a kill would.
    Abort,
}

/// One store's failpoint; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Failpoint(Arc<Mutex<Option<Armed>>>);

#[derive(Debug)]
struct Armed {
    nth: u64,
    action: FailAction,
    calls: u64,
}

impl Failpoint {
    /// Armed from `TRIG_FAILPOINT`, or disarmed.
    pub(crate) fn from_env() -> Failpoint {
        let armed = std::env::var("TRIG_FAILPOINT").ok().and_then(|v| {
            let nth = v.strip_prefix("events_before_commit:")?.parse().ok()?;
            Some(Armed { nth, action: FailAction::Abort, calls: 0 })
        });
        Failpoint(Arc::new(Mutex::new(armed)))
    }

    pub(crate) fn arm(&self, nth: u64, action: FailAction) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Armed { nth, action, calls: 0 });
    }

    /// Counts a call; the action when this is the armed one (then disarmed).
    pub(crate) fn fire(&self) -> Option<FailAction> {
        let mut armed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let a = armed.as_mut()?;
        a.calls += 1;
        if a.calls == a.nth {
            let action = a.action;
            *armed = None;
            return Some(action);
        }
        None
    }

    /// Acts on what [`Failpoint::fire`] returned, inside the transaction before its commit.
    pub(crate) fn act(fired: Option<FailAction>) -> Result<(), crate::Error> {
        match fired {
            // The rows are written, the commit has not happened: a kill here must lose nothing.
            Some(FailAction::Abort) => std::process::abort(),
            Some(FailAction::Error) => Err(crate::Error::Failpoint("events_before_commit".into())),
            None => Ok(()),
        }
    }
}
