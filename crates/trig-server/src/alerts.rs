//! Alerts: a tenant's webhook (Slack-compatible JSON), fired once per
//! transition of a pipeline — it starts failing, it recovers, it is paused —
//! never once per retry. The transition is decided from the pipeline's state
//! before the run, read in the transaction that records the run's outcome,
//! so one process decides it, once.
//!
//! The webhook URL may hold a secret (Slack's do): it is sealed in the store,
//! shown only as its host, and checked by the workspace URL's SSRF rules
//! (https, no IP address or internal host, every resolved address public,
//! unless the operator allow-lists the host); the request goes to the
//! address that was checked, redirects are not followed, and delivery is
//! retried with backoff. A payload says what happened and what to do; it
//! never holds a secret.

use std::net::SocketAddr;
use std::time::Duration;

use databricks::{AllowHosts, WebhookUrl};
use serde_json::{Value, json};
use trig_store::TenantInfo;

use crate::Error;
use crate::api::AppState;

/// What happened to a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Failing,
    Recovered,
    Paused,
    /// A connection's access token expires within a week.
    TokenExpiring,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failing => "failing",
            Event::Recovered => "recovered",
            Event::Paused => "paused",
            Event::TokenExpiring => "token_expiring",
        }
    }
}

/// How soon before a token's expiry it is warned about.
pub const EXPIRY_WARNING: i64 = 7 * 86_400_000_000;

/// The soonest expiry (µs) among a principal's tokens, if it falls within the warning, after `now`.
pub fn expiring(tokens: &[databricks::AccessTokenInfo], now: i64) -> Option<i64> {
    tokens.iter().filter_map(|t| t.expiry_ms).map(|ms| ms * 1000).filter(|e| *e > now && *e - now <= EXPIRY_WARNING).min()
}

/// The webhook's body for a token about to expire.
pub fn expiry_payload(tenant: &TenantInfo, connection: &str, expiry: i64, now: i64) -> Value {
    let days = ((expiry - now) as f64 / 86_400_000_000.0).ceil() as i64;
    let when = trig_store::time::rfc3339(expiry);
    json!({
        "text": format!(
            "Trig · {} · an access token of connection `{connection}`'s principal expires in {days} day{} ({when}). \
             What to do: if it is the token this connection uses, create a new one for the service principal and update the connection \
             (or switch it to OAuth), before then.",
            tenant.display_name,
            if days == 1 { "" } else { "s" }
        ),
        "event": Event::TokenExpiring.as_str(),
        "tenant": tenant.name,
        "connection": connection,
        "expires_at": when,
    })
}

/// The transition a run's outcome makes, if any.
pub fn transition(failures_before: i64, was_paused: bool, succeeded: bool, paused_now: bool) -> Option<Event> {
    match (succeeded, failures_before > 0) {
        (true, true) => Some(Event::Recovered),
        (true, false) => None,
        (false, _) if paused_now && !was_paused => Some(Event::Paused),
        (false, false) => Some(Event::Failing),
        (false, true) => None,
    }
}

/// The webhook's body: Slack's `text`, and the same facts as fields.
pub fn payload(tenant: &TenantInfo, pipeline: &str, event: Event, error: Option<&Value>) -> Value {
    let message = error.and_then(|e| e["message"].as_str()).unwrap_or("");
    let hint = error.and_then(|e| e["hint"].as_str());
    let what = match event {
        Event::Failing => format!("started failing: {message}"),
        Event::Recovered => "recovered: its last run succeeded".to_string(),
        Event::Paused => format!("is paused after a day of failures only you can fix: {message}"),
        Event::TokenExpiring => "has a token about to expire".to_string(),
    };
    let todo = match (event, hint) {
        (Event::Recovered, _) => String::new(),
        (_, Some(h)) => format!(" What to do: {h}"),
        (Event::Paused, None) => " Fix the cause, then change the connection or resume the pipeline.".into(),
        (Event::Failing, None) => " Trig retries on its own; the pipeline's runs show each attempt.".into(),
        (Event::TokenExpiring, None) => String::new(),
    };
    json!({
        "text": format!("Trig · {} · pipeline `{pipeline}` {what}.{todo}", tenant.display_name),
        "event": event.as_str(),
        "tenant": tenant.name,
        "pipeline": pipeline,
        "error": error,
    })
}

/// Parses a webhook URL for `tenant`, under the SSRF rules.
pub fn parse(url: &str, allow: &AllowHosts) -> Result<WebhookUrl, Error> {
    WebhookUrl::parse(url, allow).map_err(|message| Error::Invalid { field: "webhook_url".into(), message })
}

/// Where a tenant's webhook is sealed.
pub(crate) fn context(tenant: &str) -> String {
    format!("{tenant}/webhook")
}

/// Posts `body` to the tenant's webhook, retrying with backoff; whether it was delivered.
pub async fn deliver(state: &AppState, tenant: &TenantInfo, body: &Value) -> bool {
    let Some(sealed) = &tenant.webhook else { return false };
    let url = match state.keys.open(sealed, &context(&tenant.name)).and_then(|u| parse(&u, &state.webhook_allow)) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(tenant = %tenant.name, error = %e, "the tenant's webhook cannot be used");
            return false;
        }
    };
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=4 {
        match post(&url, &state.webhook_allow, body).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(tenant = %tenant.name, webhook = %url.shown(), attempt, error = %e, "alert not delivered");
                if attempt < 4 {
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
            }
        }
    }
    false
}

async fn post(url: &WebhookUrl, allow: &AllowHosts, body: &Value) -> Result<(), String> {
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((url.host(), url.port())).await.map_err(|e| format!("{} does not resolve: {e}", url.host()))?.collect();
    url.check_resolved(&addrs.iter().map(|a| a.ip()).collect::<Vec<_>>(), allow)?;
    // The request goes to an address just checked, whatever the name resolves to next.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .resolve(url.host(), addrs[0])
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .post(url.expose())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        // reqwest's error names the URL; ours names only the host.
        .map_err(|e| format!("{}: {}", url.shown(), if e.is_timeout() { "timed out" } else { "the connection failed" }))?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("{} answered {}", url.shown(), resp.status())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_transition_never_per_retry() {
        assert_eq!(transition(0, false, false, false), Some(Event::Failing));
        assert_eq!(transition(1, false, false, false), None, "a retry that fails again says nothing");
        assert_eq!(transition(5, false, true, false), Some(Event::Recovered));
        assert_eq!(transition(0, false, true, false), None);
        assert_eq!(transition(96, false, false, true), Some(Event::Paused));
        assert_eq!(transition(97, true, false, true), None, "paused once");
    }

    #[test]
    fn a_payload_says_what_happened_and_what_to_do() {
        let t =
            TenantInfo { id: trig_store::TenantId(1), name: "acme".into(), display_name: "Acme Corp".into(), created_at: 0, webhook: None };
        let e = json!({"kind": "token_expired", "message": "the access token has expired", "hint": "create a new token and update the connection"});
        let p = payload(&t, "events", Event::Failing, Some(&e));
        assert_eq!(
            p["text"],
            "Trig · Acme Corp · pipeline `events` started failing: the access token has expired. What to do: create a new token and update the connection"
        );
        assert_eq!((p["event"].as_str(), p["tenant"].as_str()), (Some("failing"), Some("acme")));
        let r = payload(&t, "events", Event::Recovered, None);
        assert_eq!(r["text"], "Trig · Acme Corp · pipeline `events` recovered: its last run succeeded.");
    }
}
