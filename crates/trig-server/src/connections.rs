//! Connections through the API: `/api/v1/tenants/{t}/connections[/{c}[/test]]`.
//!
//! The body is the config file's `[connections.NAME]` keys as JSON, the
//! secret itself in `"token"` or `"oauth": {"client_secret"}`; it is
//! validated by the config loader (same messages, by field), the secret is
//! split off and sealed (`secrets.rs`), and the rest is stored as JSON. A
//! secret is write-only: answers say whether one is set and since when. A
//! replace or change without a secret keeps the stored one. A config file's
//! connections are listed read-only.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use trig_config::{AuthConfig, ConnectionConfig, SecretRef, connection_from_json};
use trig_store::{ConnectionRecord, ConnectionWrite, TenantInfo};

use crate::Error;
use crate::api::{AppState, json_response, read_json};
use crate::auth::Principal;

/// A name in a path: what the config file's table names allow here.
pub(crate) fn resource_name(field: &str, s: &str) -> Result<String, Error> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(s.to_string())
    } else {
        Err(Error::Invalid {
            field: field.into(),
            message: format!("`{s}` is not a name: use 1 to 63 letters, digits, `-` or `_`, starting with a letter or digit"),
        })
    }
}

/// The tenant of a path, if the principal sees it.
pub(crate) async fn tenant_of(state: &AppState, who: &Principal, t: &str) -> Result<TenantInfo, Error> {
    who.sees(t)?;
    state.store.tenant_info(t).await.map_err(Error::from_store)?.ok_or_else(|| Error::NotFound { what: format!("tenant `{t}`") })
}

/// What a change is recorded as having been made by.
pub(crate) fn actor(who: &Principal) -> String {
    format!("token {} ({} of {})", who.token_id, who.role.as_str(), who.tenant_name)
}

/// Where a connection's sealed secret belongs: a ciphertext opens only there.
pub(crate) fn context(tenant: &str, connection: &str) -> String {
    format!("{tenant}/connections/{connection}")
}

/// Splits the secret off a body: the body without it, and the secret as JSON.
fn split_secret(body: &Value) -> (Value, Option<Value>) {
    let mut config = body.clone();
    let mut secret = Map::new();
    if let Some(o) = config.as_object_mut() {
        if let Some(t) = o.remove("token") {
            secret.insert("token".into(), t);
        }
        if let Some(Value::Object(oauth)) = o.get_mut("oauth")
            && let Some(s) = oauth.remove("client_secret")
        {
            secret.insert("client_secret".into(), s);
        }
    }
    (config, (!secret.is_empty()).then_some(Value::Object(secret)))
}

/// Puts a secret back into a body, where the body's auth wants it (a token
/// into `token`, a client secret into `oauth`); a secret of the other kind is dropped.
pub(crate) fn join_secret(config: &Value, secret: &Value) -> Value {
    let mut body = config.clone();
    if let Some(o) = body.as_object_mut() {
        if let Some(Value::Object(oauth)) = o.get_mut("oauth") {
            if let Some(s) = secret.get("client_secret") {
                oauth.entry("client_secret").or_insert(s.clone());
            }
        } else if let Some(t) = secret.get("token") {
            o.entry("token").or_insert(t.clone());
        }
    }
    body
}

pub(crate) fn invalid(errors: Vec<trig_config::ConfigError>) -> Error {
    let first = errors.into_iter().next();
    match first {
        Some(e) => Error::Invalid { field: e.key, message: e.message },
        None => Error::Invalid { field: "body".into(), message: "is not a connection".into() },
    }
}

/// The answer for a connection: its keys, never its secret.
fn view(r: &ConnectionRecord) -> Value {
    let mut v = r.config.clone();
    let auth = if r.config.get("oauth").is_some() { "oauth" } else { "token" };
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(r.name));
        o.insert("origin".into(), json!(r.origin));
        o.insert("read_only".into(), json!(r.origin == "config"));
        o.entry("auth").or_insert(json!(auth));
        if r.origin == "api" {
            o.insert(
                "secret".into(),
                json!({ "set": r.sealed_secret.is_some(), "changed_at": r.secret_changed_at.map(trig_store::time::rfc3339) }),
            );
        }
        o.insert("created_at".into(), json!(trig_store::time::rfc3339(r.created_at)));
        o.insert("updated_at".into(), json!(trig_store::time::rfc3339(r.updated_at)));
    }
    v
}

/// A config file's connection as stored for the list: its keys, and where its secret is read from.
pub fn config_file_json(c: &ConnectionConfig) -> Value {
    let from = |r: &SecretRef| match r {
        SecretRef::Env(v) => format!("the environment variable {v}"),
        SecretRef::File(p) => format!("the file {}", p.display()),
        SecretRef::Inline(_) => "the service".to_string(),
    };
    let (auth, secret_from, client_id) = match &c.auth {
        AuthConfig::Token(r) => ("token", from(r), None),
        AuthConfig::OAuth { client_id, client_secret } => ("oauth", from(client_secret), Some(client_id.clone())),
        AuthConfig::Profile { file, name } => ("profile", format!("profile [{name}] of {}", file.display()), None),
    };
    let mut v = json!({
        "workspace_url": c.workspace.base(),
        "http_path": c.http_path(),
        "default_catalog": c.default_catalog,
        "allow_hosts": c.allow_hosts.entries(),
        "auth": auth,
        "secret_from": secret_from,
    });
    if let Some(id) = client_id {
        v["oauth"] = json!({ "client_id": id });
    }
    v
}

pub(crate) async fn stored(state: &AppState, t: &TenantInfo, c: &str) -> Result<ConnectionRecord, Error> {
    state
        .store
        .connection(t.id, c)
        .await
        .map_err(Error::from_store)?
        .ok_or_else(|| Error::NotFound { what: format!("connection `{c}` of tenant `{}`", t.name) })
}

pub(crate) fn writable(r: &ConnectionRecord, state: &AppState) -> Result<(), Error> {
    if r.origin == "config" {
        let file = state.config.as_ref().map(|c| c.path.display().to_string()).unwrap_or_else(|| "the config file".into());
        return Err(Error::ReadOnly { what: format!("connection `{}`", r.name), file });
    }
    Ok(())
}

/// A stored connection's secret, opened (`null` when it has none).
pub(crate) fn stored_secret(state: &AppState, t: &TenantInfo, r: &ConnectionRecord) -> Result<Value, Error> {
    match &r.sealed_secret {
        Some(s) => Ok(serde_json::from_str(&state.keys.open(s, &context(&t.name, &r.name))?).unwrap_or(Value::Null)),
        None => Ok(Value::Null),
    }
}

/// The connection's settings, its secret opened: what a run or a test uses.
pub(crate) fn settings_of(state: &AppState, t: &TenantInfo, r: &ConnectionRecord) -> Result<ConnectionConfig, Error> {
    if r.origin == "config" {
        return state
            .config
            .as_ref()
            .and_then(|c| c.connections.get(&r.name))
            .cloned()
            .ok_or_else(|| Error::NotFound { what: format!("connection `{}` in the config file", r.name) });
    }
    let secret = match &r.sealed_secret {
        Some(s) => serde_json::from_str(&state.keys.open(s, &context(&t.name, &r.name))?).unwrap_or(Value::Null),
        None => Value::Null,
    };
    connection_from_json(&r.name, &join_secret(&r.config, &secret)).map_err(invalid)
}

/// Validates `body` (the secret kept from `old` when absent), seals, stores.
async fn write(
    state: &AppState,
    who: &Principal,
    t: &TenantInfo,
    c: &str,
    body: Value,
    old: Option<&ConnectionRecord>,
    action: &str,
) -> Result<Response, Error> {
    let (rec, created) = save(state, who, t, c, body, old, action).await?;
    Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &view(&rec)))
}

/// Validates `body` (the secret kept from `old` when absent), seals and
/// stores it; a changed connection un-pauses its pipelines. The stored
/// record, and whether it is new. (The API and the pages both save by it.)
pub(crate) async fn save(
    state: &AppState,
    who: &Principal,
    t: &TenantInfo,
    c: &str,
    body: Value,
    old: Option<&ConnectionRecord>,
    action: &str,
) -> Result<(ConnectionRecord, bool), Error> {
    if let Some(o) = old {
        writable(o, state)?;
    }
    let (config, mut secret) = split_secret(&body);
    let kept: Value = match old.and_then(|o| o.sealed_secret.as_ref()) {
        Some(s) => serde_json::from_str(&state.keys.open(s, &context(&t.name, c))?).unwrap_or(Value::Null),
        None => Value::Null,
    };
    // The stored secret sent again is no change.
    if secret.as_ref() == Some(&kept) {
        secret = None;
    }
    let full = join_secret(&body, secret.as_ref().unwrap_or(&kept));
    connection_from_json(c, &full).map_err(invalid)?;
    // Only what the validated auth uses is kept of a new secret.
    let sealed = match secret {
        Some(s) => Some(state.keys.seal(&s.to_string(), &context(&t.name, c))?),
        None => None,
    };
    let w = ConnectionWrite { origin: "api".into(), config, sealed_secret: sealed, actor: actor(who), action: action.into() };
    let (rec, created) = state.store.put_connection(t.id, c, w).await.map_err(Error::from_store)?;
    state.warehouses.forget(t.id);
    // A change of the connection may be the fix a paused pipeline waits for: its pipelines are un-paused.
    if !created {
        for p in state.store.pipeline_records(t.id).await.map_err(Error::from_store)? {
            let on_it = p.definition.as_ref().and_then(|d| d.get("connection")).and_then(Value::as_str) == Some(c);
            if on_it && p.paused_reason.is_some() {
                state
                    .store
                    .unpause(t.id, &p.name, &format!("{} (connection `{c}` changed)", actor(who)))
                    .await
                    .map_err(Error::from_store)?;
            }
        }
        state.wake.notify_one();
    }
    Ok((rec, created))
}

pub(crate) async fn list(State(state): State<AppState>, Path(t): Path<String>, who: Principal) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let all = state.store.connections(t.id).await.map_err(Error::from_store)?;
    Ok(json_response(StatusCode::OK, &json!({ "connections": all.iter().map(view).collect::<Vec<_>>() })))
}

pub(crate) async fn get(State(state): State<AppState>, Path((t, c)): Path<(String, String)>, who: Principal) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let c = resource_name("connection", &c)?;
    Ok(json_response(StatusCode::OK, &view(&stored(&state, &t, &c).await?)))
}

pub(crate) async fn put(
    State(state): State<AppState>,
    Path((t, c)): Path<(String, String)>,
    who: Principal,
    req: Request,
) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let c = resource_name("connection", &c)?;
    let body: Value = read_json(req).await?;
    let old = state.store.connection(t.id, &c).await.map_err(Error::from_store)?;
    if let Some(o) = &old {
        writable(o, &state)?;
    }
    write(&state, &who, &t, &c, body, old.as_ref(), "replaced").await
}

/// JSON merge patch (RFC 7396): a key set to `null` is removed.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    Path((t, c)): Path<(String, String)>,
    who: Principal,
    req: Request,
) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let c = resource_name("connection", &c)?;
    let change: Value = read_json(req).await?;
    if !change.is_object() {
        return Err(Error::Invalid { field: "body".into(), message: "must be a JSON object of the keys to change".into() });
    }
    let old = stored(&state, &t, &c).await?;
    writable(&old, &state)?;
    let mut body = old.config.clone();
    merge(&mut body, &change);
    write(&state, &who, &t, &c, body, Some(&old), "changed").await
}

pub(crate) async fn delete(State(state): State<AppState>, Path((t, c)): Path<(String, String)>, who: Principal) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let c = resource_name("connection", &c)?;
    let old = stored(&state, &t, &c).await?;
    writable(&old, &state)?;
    state.store.delete_connection(t.id, &c, &actor(&who)).await.map_err(Error::from_store)?;
    state.warehouses.forget(t.id);
    Ok(json_response(StatusCode::OK, &json!({ "deleted": c })))
}

/// Test connection: the checklist with fixes, and the catalogs.
pub(crate) async fn test(State(state): State<AppState>, Path((t, c)): Path<(String, String)>, who: Principal) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let c = resource_name("connection", &c)?;
    let rec = stored(&state, &t, &c).await?;
    // The settings as stored (a secret that does not open is named), then every pipeline's source on it.
    settings_of(&state, &t, &rec)?;
    let tc = crate::pipelines::tenant_config(&state, &t).await?;
    let input = tc.config.check_input(&c).map_err(|e| Error::Invalid { field: e.key, message: e.message })?;
    let report = databricks::check::test_connection(&input).await;
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&report).unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_split_off_and_joined_back_where_the_auth_wants_it() {
        let body = json!({"workspace_url": "https://x", "token": "dapi-1"});
        let (config, secret) = split_secret(&body);
        assert_eq!(config, json!({"workspace_url": "https://x"}));
        assert_eq!(join_secret(&config, secret.as_ref().unwrap()), body);
        let oauth = json!({"oauth": {"client_id": "id", "client_secret": "s"}});
        let (config, secret) = split_secret(&oauth);
        assert_eq!(config, json!({"oauth": {"client_id": "id"}}));
        assert_eq!(join_secret(&config, secret.as_ref().unwrap()), oauth);
        // A token kept from before does not join an OAuth body.
        assert_eq!(join_secret(&config, &json!({"token": "dapi-1"})), config);
    }

    #[test]
    fn a_merge_patch_changes_some_keys_and_null_removes_one() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut v, &json!({"a": null, "b": {"c": 4}, "e": 5}));
        assert_eq!(v, json!({"b": {"c": 4, "d": 3}, "e": 5}));
    }
}
