//! Injected faults: what a real workspace does on a bad day (throttling,
//! outages, slow answers, dropped connections, links that expire early,
//! statements that fail). Configured through the admin API; each rule can
//! fire a limited number of times.

use serde::{Deserialize, Serialize};

use crate::error::SqlError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Answer with this HTTP status (429, 500, 502, 503, 504) instead of the real response.
    Status {
        status: u16,
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Delay the response.
    Latency { ms: u64 },
    /// Send this many bytes of an external-link body, then reset the connection.
    ResetBody { after_bytes: usize },
    /// External links issued from now on are already expired.
    ExpireLinks,
    /// Statements asking for EXTERNAL_LINKS are refused with 400, as in a
    /// workspace where support disabled that disposition (the body's exact
    /// text is not recorded; the client must fall back to INLINE).
    RefuseExternalLinks,
    /// Statements carrying `query_tags` are refused with 400
    /// INVALID_PARAMETER_VALUE, as by a Databricks-compatible service that
    /// does not know the field.
    RefuseQueryTags,
    /// Statements whose SQL contains `contains` (all when absent) fail with this class.
    FailStatement {
        #[serde(default)]
        contains: Option<String>,
        #[serde(default = "default_class")]
        error_class: String,
        #[serde(default = "default_message")]
        message: String,
        #[serde(default = "default_state")]
        sql_state: String,
    },
}

fn default_class() -> String {
    "INTERNAL_ERROR".into()
}
fn default_message() -> String {
    "Injected failure.".into()
}
fn default_state() -> String {
    "XX000".into()
}

/// One rule. Serialized flat: `{"kind": "status", "status": 429, "times": 1, ...}`.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRule {
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Only requests whose path starts with this (e.g. `/api/2.0/sql/statements`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Only this method (`GET`, `POST`, ...).
    #[serde(default)]
    pub method: Option<String>,
    /// How many times the rule fires; forever when absent.
    #[serde(default)]
    pub times: Option<u32>,
}

impl FaultRule {
    /// Parses a rule, refusing unknown members (serde cannot combine
    /// `flatten` with `deny_unknown_fields`, so the common members are taken
    /// off first and the rest must be exactly one kind).
    pub fn from_json(value: serde_json::Value) -> Result<FaultRule, String> {
        let serde_json::Value::Object(mut m) = value else {
            return Err("a fault rule is a JSON object".into());
        };
        let text = |m: &mut serde_json::Map<String, serde_json::Value>, k: &str| -> Result<Option<String>, String> {
            match m.remove(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("`{k}` must be a string")),
            }
        };
        let path_prefix = text(&mut m, "path_prefix")?;
        let method = text(&mut m, "method")?;
        let times = match m.remove("times") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(v.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0).ok_or("`times` must be a positive integer")?),
        };
        let kind: FaultKind = serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| e.to_string())?;
        Ok(FaultRule { kind, path_prefix, method, times })
    }
}

#[derive(Debug, Default)]
pub struct Faults {
    pub rules: Vec<FaultRule>,
}

/// What the HTTP layer must do to one request.
#[derive(Debug, Default)]
pub struct Effects {
    pub latency_ms: u64,
    pub status: Option<(u16, Option<u64>)>,
    pub reset_after: Option<usize>,
}

impl Faults {
    fn take(&mut self, pred: impl Fn(&FaultRule) -> bool) -> Option<FaultRule> {
        let i = self.rules.iter().position(pred)?;
        let rule = self.rules[i].clone();
        if let Some(t) = self.rules[i].times.as_mut() {
            *t = t.saturating_sub(1);
            if *t == 0 {
                self.rules.remove(i);
            }
        }
        Some(rule)
    }

    fn matches(r: &FaultRule, method: &str, path: &str) -> bool {
        r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p)) && r.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
    }

    /// The faults that apply to one HTTP request.
    pub fn for_request(&mut self, method: &str, path: &str) -> Effects {
        let mut fx = Effects::default();
        if let Some(r) = self.take(|r| matches!(r.kind, FaultKind::Latency { .. }) && Self::matches(r, method, path))
            && let FaultKind::Latency { ms } = r.kind
        {
            fx.latency_ms = ms;
        }
        if let Some(r) = self.take(|r| matches!(r.kind, FaultKind::Status { .. }) && Self::matches(r, method, path))
            && let FaultKind::Status { status, retry_after_secs } = r.kind
        {
            fx.status = Some((status, retry_after_secs));
        }
        if let Some(r) = self.take(|r| matches!(r.kind, FaultKind::ResetBody { .. }) && Self::matches(r, method, path))
            && let FaultKind::ResetBody { after_bytes } = r.kind
        {
            fx.reset_after = Some(after_bytes);
        }
        fx
    }

    /// Whether the next link issued should be born expired.
    pub fn expire_link(&mut self) -> bool {
        self.take(|r| matches!(r.kind, FaultKind::ExpireLinks)).is_some()
    }

    /// Whether a statement asking for EXTERNAL_LINKS must be refused.
    pub fn refuse_external_links(&mut self) -> bool {
        self.take(|r| matches!(r.kind, FaultKind::RefuseExternalLinks)).is_some()
    }

    /// Whether a statement that carries `query_tags` must be refused.
    pub fn refuse_query_tags(&mut self) -> bool {
        self.take(|r| matches!(r.kind, FaultKind::RefuseQueryTags)).is_some()
    }

    /// The injected failure for a statement, if a rule matches it.
    pub fn statement_failure(&mut self, sql: &str) -> Option<SqlError> {
        let r = self.take(|r| match &r.kind {
            FaultKind::FailStatement { contains, .. } => contains.as_deref().is_none_or(|c| sql.contains(c)),
            _ => false,
        })?;
        let FaultKind::FailStatement { error_class, message, sql_state, .. } = r.kind else { return None };
        Some(SqlError::class(&error_class, message, &sql_state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fire_a_limited_number_of_times() {
        let mut f = Faults::default();
        f.rules.push(FaultRule {
            kind: FaultKind::Status { status: 429, retry_after_secs: Some(1) },
            path_prefix: Some("/api/2.0/sql".into()),
            method: None,
            times: Some(2),
        });
        assert_eq!(f.for_request("GET", "/api/2.1/unity-catalog/catalogs").status, None);
        assert_eq!(f.for_request("GET", "/api/2.0/sql/statements/x").status, Some((429, Some(1))));
        assert_eq!(f.for_request("POST", "/api/2.0/sql/statements").status, Some((429, Some(1))));
        assert_eq!(f.for_request("POST", "/api/2.0/sql/statements").status, None);
    }
}
