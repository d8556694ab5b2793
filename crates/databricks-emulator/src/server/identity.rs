//! Identity: SCIM Me, host metadata, OIDC discovery and the OAuth machine-to-machine token endpoint.

use super::*;

pub(super) async fn scim_me(caller: Caller) -> Response {
    let p = &caller.principal;
    let mut m = Map::new();
    m.insert(
        "schemas".into(),
        json!(["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:extension:workspace:2.0:User"]),
    );
    m.insert("id".into(), json!(p.id));
    m.insert("userName".into(), json!(p.user_name));
    m.insert("displayName".into(), json!(p.display_name));
    m.insert("active".into(), json!(true));
    if p.kind == PrincipalKind::User {
        m.insert("emails".into(), json!([{"value": p.user_name, "type": "work", "primary": true}]));
    }
    let mut groups = vec![json!({"display": "users", "type": "direct", "value": "100", "$ref": "Groups/100"})];
    if p.admin {
        groups.push(json!({"display": "admins", "type": "direct", "value": "101", "$ref": "Groups/101"}));
    }
    m.insert("groups".into(), Value::Array(groups));
    m.insert("entitlements".into(), json!([{"value": "databricks-sql-access"}, {"value": "workspace-access"}]));
    ok(Value::Object(m))
}

/// `GET /api/2.0/token/list`: the caller's own live personal access tokens, with their expiry
/// (`expiry_time` in ms since the epoch, -1 when they never expire), as the Token API lists them.
pub(super) async fn list_tokens(State(emu): State<Emulator>, caller: Caller) -> Response {
    let now = Utc::now();
    let ws = emu.ws();
    let mut infos: Vec<(String, Value)> = ws
        .tokens
        .iter()
        .filter(|(_, t)| !t.oauth && t.principal == caller.principal.user_name && t.expires_at.is_none_or(|e| e > now))
        .map(|(value, t)| {
            // A stable id that is not the token: a digest of it.
            let id = format!("{:016x}", value.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3)));
            let info = json!({
                "token_id": id,
                "creation_time": 0,
                "expiry_time": t.expires_at.map(|e| e.timestamp_millis()).unwrap_or(-1),
                "comment": "",
            });
            (id, info)
        })
        .collect();
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    ok(json!({ "token_infos": infos.into_iter().map(|(_, v)| v).collect::<Vec<_>>() }))
}

pub(super) async fn host_metadata(State(emu): State<Emulator>) -> Response {
    let base = emu.base_url();
    ok(json!({"oidc_endpoint": format!("{base}/oidc"), "workspace_id": emu.ws().org_id, "account_id": ACCOUNT_ID, "cloud": "AWS"}))
}

pub(super) async fn oidc_discovery(State(emu): State<Emulator>) -> Response {
    let base = emu.base_url();
    ok(json!({
        "authorization_endpoint": format!("{base}/oidc/v1/authorize"),
        "token_endpoint": format!("{base}/oidc/v1/token"),
        "issuer": format!("{base}/oidc"),
        "jwks_uri": format!("{base}/oidc/jwks.json"),
        "scopes_supported": ["all-apis", "email", "offline_access", "openid", "profile", "sql"],
        "response_types_supported": ["code", "id_token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "request_uri_parameter_supported": false,
    }))
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (status, json!({"error": error, "error_description": description}).to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `POST /oidc/v1/token`: client credentials in HTTP Basic or the form.
pub(super) async fn oauth_token(State(emu): State<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_pairs(&body);
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "This emulator issues tokens only for grant_type=client_credentials (OAuth machine-to-machine).",
        );
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())));
    let creds = basic.or_else(|| Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone())));
    let Some((client_id, secret)) = creds else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed");
    };
    let principal = {
        let ws = emu.ws();
        ws.principal(&client_id)
            .filter(|p| p.kind == PrincipalKind::ServicePrincipal && p.oauth_secret.as_deref() == Some(secret.as_str()))
            .cloned()
    };
    let Some(p) = principal else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed");
    };
    let ttl = emu.config().oauth_token_ttl;
    let claims = json!({"sub": p.user_name, "exp": (Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default()).timestamp(), "jti": uuid::Uuid::new_v4().to_string()});
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"RS256","typ":"JWT","kid":"emulator"}"#),
        b64.encode(claims.to_string()),
        uuid::Uuid::new_v4().simple()
    );
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    emu.ws_mut().tokens.insert(token.clone(), Token { principal: p.user_name.clone(), expires_at: Some(expires_at), oauth: true });
    emu.inner.counters.oauth_tokens.fetch_add(1, Ordering::Relaxed);
    let scope = form.get("scope").cloned().unwrap_or_else(|| "all-apis".into());
    ok(json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl.as_secs(), "scope": scope}))
}

/// Decodes an `application/x-www-form-urlencoded` body.
pub(super) fn form_pairs(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = (b[i] == b'%' && i + 2 < b.len())
                .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
                .flatten();
            match (b[i], hex) {
                (b'+', _) => out.push(b' '),
                (_, Some(byte)) => {
                    out.push(byte);
                    i += 2;
                }
                (c, None) => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}
