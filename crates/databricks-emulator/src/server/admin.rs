//! The admin API under `/emulator/v1/` (admin token only): rows, columns, grants, tokens, warehouses, faults, counters.

use super::*;

pub(super) fn admin_error(message: impl Into<String>) -> ApiError {
    ApiError::invalid_parameter(message)
}

pub(super) async fn admin_counters(State(emu): State<Emulator>, _a: Admin) -> Response {
    ok(emu.counters_json())
}

pub(super) async fn admin_statements(State(emu): State<Emulator>, _a: Admin) -> Response {
    ok(json!({"statements": emu.history_json()}))
}

pub(super) async fn admin_append_rows(
    State(emu): State<Emulator>,
    _a: Admin,
    Path(full): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let m = parse_json(&body)?;
    let Some(Value::Array(rows)) = m.get("rows") else {
        return Err(admin_error("Send {\"rows\": [{\"column\": value, ...}, ...]}."));
    };
    let n = emu.append_rows(&full, rows).await.map_err(admin_error)?;
    Ok(ok(json!({"appended": n})))
}

pub(super) async fn admin_delete_rows(
    State(emu): State<Emulator>,
    _a: Admin,
    Path(full): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let m = parse_json(&body)?;
    let (Some(Value::String(column)), Some(Value::String(value))) = (m.get("column"), m.get("equals")) else {
        return Err(admin_error("Send {\"column\": \"name\", \"equals\": \"value\"}."));
    };
    let n = emu.delete_rows(&full, column, value).await.map_err(admin_error)?;
    Ok(ok(json!({"deleted": n})))
}

pub(super) async fn admin_alter_column(
    State(emu): State<Emulator>,
    _a: Admin,
    Path(full): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let change: ColumnChange = serde_json::from_slice(&body).map_err(|e| {
        admin_error(format!(
            "{e}. Send {{\"action\": \"add\", \"name\": .., \"type\": ..}}, {{\"action\": \"rename\", \"from\": .., \"to\": ..}} or {{\"action\": \"drop\", \"name\": ..}}."
        ))
    })?;
    emu.alter_column(&full, &change).await.map_err(admin_error)?;
    Ok(ok(json!({})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantBody {
    principal: String,
    securable_type: String,
    full_name: String,
    privileges: Vec<String>,
}

pub(super) fn grant_body(emu: &Emulator, body: &Bytes) -> Result<(GrantBody, Securable), ApiError> {
    let g: GrantBody = serde_json::from_slice(body)
        .map_err(|e| admin_error(format!("{e}. Send {{\"principal\", \"securable_type\", \"full_name\", \"privileges\": [..]}}.")))?;
    let ws = emu.ws();
    let sec = securable(&ws, &g.securable_type, &g.full_name)?;
    if g.principal != "account users" && ws.principal(&g.principal).is_none() {
        return Err(admin_error(format!("principal '{}' does not exist", g.principal)));
    }
    Ok((g, sec))
}

pub(super) fn normalize_privilege(p: &str) -> Result<String, ApiError> {
    let p = p.to_ascii_uppercase().replace(' ', "_");
    if crate::fixture::PRIVILEGES.contains(&p.as_str()) {
        Ok(p)
    } else {
        Err(admin_error(format!("unknown privilege '{p}'; use one of {}", crate::fixture::PRIVILEGES.join(", "))))
    }
}

pub(super) async fn admin_grant(State(emu): State<Emulator>, _a: Admin, body: Bytes) -> Result<Response, ApiError> {
    let (g, sec) = grant_body(&emu, &body)?;
    let privs = g.privileges.iter().map(|p| normalize_privilege(p)).collect::<Result<Vec<_>, _>>()?;
    let mut ws = emu.ws_mut();
    for p in privs {
        let grant = crate::workspace::Grant { principal: g.principal.clone(), privilege: p, securable: sec.clone() };
        if !ws.grants.contains(&grant) {
            ws.grants.push(grant);
        }
    }
    Ok(ok(json!({})))
}

pub(super) async fn admin_revoke(State(emu): State<Emulator>, _a: Admin, body: Bytes) -> Result<Response, ApiError> {
    let (g, sec) = grant_body(&emu, &body)?;
    let privs = g.privileges.iter().map(|p| normalize_privilege(p)).collect::<Result<Vec<_>, _>>()?;
    let mut ws = emu.ws_mut();
    let before = ws.grants.len();
    ws.grants.retain(|x| !(x.principal == g.principal && x.securable == sec && privs.contains(&x.privilege)));
    let revoked = before - ws.grants.len();
    Ok(ok(json!({"revoked": revoked})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    principal: String,
    #[serde(default)]
    expires_in_secs: Option<i64>,
}

pub(super) async fn admin_create_token(State(emu): State<Emulator>, _a: Admin, body: Bytes) -> Result<Response, ApiError> {
    let t: NewToken =
        serde_json::from_slice(&body).map_err(|e| admin_error(format!("{e}. Send {{\"principal\", \"expires_in_secs\"?}}.")))?;
    let mut ws = emu.ws_mut();
    if ws.principal(&t.principal).is_none() {
        return Err(admin_error(format!("principal '{}' does not exist", t.principal)));
    }
    let value = format!("dapi{}", uuid::Uuid::new_v4().simple());
    let expires_at = t.expires_in_secs.map(|s| Utc::now() + chrono::Duration::seconds(s));
    ws.tokens.insert(value.clone(), Token { principal: t.principal, expires_at, oauth: false });
    Ok(ok(json!({"token": value, "expires_at": expires_at.map(|e| e.to_rfc3339())})))
}

pub(super) async fn admin_expire_token(State(emu): State<Emulator>, _a: Admin, Path(token): Path<String>) -> Result<Response, ApiError> {
    let mut ws = emu.ws_mut();
    let t = ws.tokens.get_mut(&token).ok_or_else(|| ApiError::not_found("RESOURCE_DOES_NOT_EXIST", "No such token."))?;
    t.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
    Ok(ok(json!({})))
}

/// Expires every OAuth access token issued so far (a revocation, or a clock
/// skew between client and server): clients must fetch a new one.
pub(super) async fn admin_expire_oauth(State(emu): State<Emulator>, _a: Admin) -> Response {
    let mut ws = emu.ws_mut();
    let mut n = 0;
    for t in ws.tokens.values_mut().filter(|t| t.oauth) {
        t.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        n += 1;
    }
    ok(json!({"expired": n}))
}

pub(super) async fn admin_rotate_token(State(emu): State<Emulator>, _a: Admin, Path(token): Path<String>) -> Result<Response, ApiError> {
    let mut ws = emu.ws_mut();
    let old = ws.tokens.remove(&token).ok_or_else(|| ApiError::not_found("RESOURCE_DOES_NOT_EXIST", "No such token."))?;
    let value = format!("dapi{}", uuid::Uuid::new_v4().simple());
    ws.tokens.insert(value.clone(), old);
    Ok(ok(json!({"token": value})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WarehouseChange {
    #[serde(default)]
    state: Option<WarehouseState>,
    #[serde(default)]
    auto_resume: Option<bool>,
    #[serde(default)]
    start_delay_ms: Option<u64>,
    #[serde(default)]
    stop_delay_ms: Option<u64>,
    #[serde(default)]
    auto_stop_secs: Option<u64>,
    /// `principal userName -> level`, or `null` to remove.
    #[serde(default)]
    permissions: Option<HashMap<String, Option<String>>>,
}

pub(super) async fn admin_set_warehouse(
    State(emu): State<Emulator>,
    _a: Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let c: WarehouseChange = serde_json::from_slice(&body).map_err(|e| {
        admin_error(format!("{e}. Send any of state, auto_resume, start_delay_ms, stop_delay_ms, auto_stop_secs, permissions."))
    })?;
    // Validate everything before changing anything: a bad request changes nothing.
    for (who, level) in c.permissions.iter().flatten() {
        if let Some(l) = level
            && !crate::fixture::WAREHOUSE_LEVELS.contains(&l.as_str())
        {
            return Err(admin_error(format!(
                "permission `{l}` for `{who}` must be one of {}",
                crate::fixture::WAREHOUSE_LEVELS.join(", ")
            )));
        }
    }
    let stopping = {
        let mut ws = emu.ws_mut();
        let w = ws
            .warehouses
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("Warehouse {id} does not exist.")))?;
        if let Some(v) = c.auto_resume {
            w.auto_resume = v;
        }
        if let Some(v) = c.start_delay_ms {
            w.start_delay_ms = v;
        }
        if let Some(v) = c.stop_delay_ms {
            w.stop_delay_ms = v;
        }
        if let Some(v) = c.auto_stop_secs {
            w.auto_stop_secs = v;
        }
        if let Some(perms) = c.permissions {
            for (who, level) in perms {
                match level {
                    Some(l) => {
                        w.acl.insert(who, l);
                    }
                    None => {
                        w.acl.remove(&who);
                    }
                }
            }
        }
        if let Some(s) = c.state {
            w.set_state(s, Utc::now());
        }
        matches!(c.state, Some(WarehouseState::Stopped | WarehouseState::Stopping | WarehouseState::Deleted))
    };
    if stopping {
        emu.cancel_running_on(&id);
    }
    let ws = emu.ws();
    Ok(ok(warehouse_json(&emu, &ws, &id)))
}

pub(super) async fn admin_faults(State(emu): State<Emulator>, _a: Admin) -> Response {
    ok(json!({"faults": emu.faults().rules}))
}

pub(super) async fn admin_add_fault(State(emu): State<Emulator>, _a: Admin, body: Bytes) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(&body).map_err(|_| ApiError::malformed_json())?;
    let rule = FaultRule::from_json(value).map_err(|e| {
        admin_error(format!(
            "{e}. Send {{\"kind\": \"status\"|\"latency\"|\"reset_body\"|\"expire_links\"|\"fail_statement\", ...,  \"path_prefix\"?, \"method\"?, \"times\"?}}."
        ))
    })?;
    emu.faults().rules.push(rule);
    Ok(ok(json!({})))
}

pub(super) async fn admin_clear_faults(State(emu): State<Emulator>, _a: Admin) -> Response {
    emu.faults().rules.clear();
    ok(json!({}))
}
