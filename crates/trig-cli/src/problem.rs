//! Problems that stop a command before it can do its work (a bad flag, a
//! bad config, an unreadable store), printed once: as `error:` and `fix:`
//! lines, or with `--json` as `{"ok": false, "errors": [{"key", "message",
//! "hint"}]}` on stdout, so a script always gets JSON.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

/// One thing to fix: where (a config key or a flag), what, and how.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { key: key.into(), message: message.into(), hint: None }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }
}

/// Every error of a config file, each with its key.
pub fn from_config(e: &trig_config::ConfigErrors) -> Vec<Problem> {
    e.errors.iter().map(|x| Problem::new(format!("{}: {}", e.path, x.key), x.message.clone())).collect()
}

/// A sync engine error as a problem: its config key when it has one.
pub fn from_sync(e: &trig_sync::Error) -> Problem {
    let key = match e {
        trig_sync::Error::Config { key, .. } | trig_sync::Error::Drift { key, .. } => key.clone(),
        trig_sync::Error::Store(trig_store::Error::LeaseHeld { .. } | trig_store::Error::LeaseLost { .. }) => "pipeline".into(),
        trig_sync::Error::Store(_) => "store.url".into(),
        trig_sync::Error::Databricks(d) => d.field().map(str::to_string).unwrap_or_else(|| e.kind().to_string()),
        trig_sync::Error::Cancelled => "run".into(),
    };
    let message = match e {
        trig_sync::Error::Config { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Problem { key, message, hint: e.hint() }
}

/// Prints the problems (as JSON on stdout with `json`, else on stderr) and
/// returns `code`.
pub fn report(json: bool, problems: &[Problem], code: ExitCode) -> ExitCode {
    if json {
        let body = serde_json::json!({ "ok": false, "errors": problems });
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer_pretty(&mut out, &body);
        let _ = writeln!(out);
    } else {
        for p in problems {
            eprintln!("error: {}: {}", p.key, p.message);
            if let Some(h) = &p.hint {
                eprintln!("fix: {h}");
            }
        }
    }
    code
}

/// Exit 2: a problem the user must fix.
pub fn user(json: bool, problems: &[Problem]) -> ExitCode {
    report(json, problems, ExitCode::from(2))
}
