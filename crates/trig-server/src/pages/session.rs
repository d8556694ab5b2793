//! Signing in to the pages: sessions, one-time login links, CSRF.
//!
//! A session is a random cookie value; the store keeps its SHA-256 only
//! (like an API token), with the token it signed in with and its expiry, so
//! revoking the token or signing out ends it everywhere, in every process.
//! The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` when the
//! page was reached over https.
//!
//! CSRF: every form carries a token derived from the session's secret
//! (`SHA-256("trig-csrf" ‖ cookie)`), so it needs no storage and a page of
//! another site can neither read nor forge it; [`Posted`] checks it before a
//! handler sees the form. The sign-in form, before any session, carries a
//! double-submit pair (a cookie and the same value in the form).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use trig_store::{Micros, TenantId, TokenInfo, WebSession};

use super::PageError;
use crate::api::AppState;
use crate::auth::{Principal, Role, token_hash};

/// The session cookie's name.
pub const COOKIE: &str = "trig_session";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "trig_login";
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Micros = 8 * 3600 * 1_000_000;
/// How long a login link printed by the CLI stays usable (once).
pub const LINK_TTL: Micros = 24 * 3600 * 1_000_000;
/// The largest form the pages read.
pub const FORM_LIMIT: usize = 256 * 1024;

/// A random secret for a cookie or a link.
pub fn random_secret() -> Result<String, crate::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| crate::Error::Key { what: "for a session".into(), problem: format!("has no randomness: {e}") })?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The CSRF token of a session's secret.
pub fn csrf_of(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"trig-csrf\0");
    h.update(secret.as_bytes());
    h.finalize().iter().take(24).map(|b| format!("{b:02x}")).collect()
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 100)
}

/// Whether the page was reached over https (directly or through a proxy that says so).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: `max_age` seconds, or 0 to remove it.
pub fn set_cookie(name: &str, value: &str, max_age: i64, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// A live session: who signed in, the tenant they work on, and the CSRF token of its forms.
#[derive(Debug, Clone)]
pub struct Session {
    /// The store's key for it (the cookie's hash).
    pub hash: String,
    pub principal: Principal,
    /// The tenant the pages show: an admin's own; the one a representative chose.
    pub tenant: Option<(TenantId, String)>,
    pub csrf: String,
    pub expires_at: Micros,
}

impl Session {
    pub fn is_representative(&self) -> bool {
        self.principal.role == Role::Representative
    }
}

fn principal_of(t: &TokenInfo) -> Result<Principal, PageError> {
    let role = Role::parse(&t.role).map_err(|_| PageError::SignIn { reason: None })?;
    Ok(Principal { token_id: t.id, tenant: t.tenant, tenant_name: t.tenant_name.clone(), role })
}

/// The session of a request, if it has a live one; why not, otherwise.
pub async fn of_request(state: &AppState, headers: &HeaderMap) -> Result<Session, PageError> {
    let secret = cookie(headers, COOKIE).ok_or(PageError::SignIn { reason: None })?;
    let hash = token_hash(secret);
    let s: WebSession = state
        .store
        .web_session(&hash)
        .await
        .map_err(|e| PageError::Api(crate::Error::from_store(e)))?
        .ok_or(PageError::SignIn { reason: Some("You were signed out (or your API token was revoked). Sign in again.".into()) })?;
    if s.expires_at <= state.clock.now() {
        let _ = state.store.end_web_session(&hash).await;
        return Err(PageError::SignIn {
            reason: Some(format!(
                "Your session expired at {} (sessions last {} hours). Sign in again; nothing you saved is lost.",
                super::when(s.expires_at),
                SESSION_TTL / 3_600_000_000
            )),
        });
    }
    let principal = principal_of(&s.token)?;
    let tenant = match principal.role {
        Role::Admin => Some((principal.tenant, principal.tenant_name.clone())),
        Role::Representative => s.tenant.clone(),
    };
    Ok(Session { hash, principal, tenant, csrf: csrf_of(secret), expires_at: s.expires_at })
}

impl FromRequestParts<AppState> for Session {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, PageError> {
        of_request(state, &parts.headers).await
    }
}

/// Starts a session for a token: the cookie to set.
pub async fn start(state: &AppState, token: &TokenInfo, https: bool) -> Result<String, PageError> {
    let secret = random_secret()?;
    let now = state.clock.now();
    // An admin works on their tenant; a representative chooses one (their own tenant to begin with).
    let tenant = Some(token.tenant);
    state
        .store
        .create_web_session(&token_hash(&secret), "session", token.id, tenant, now, now + SESSION_TTL)
        .await
        .map_err(|e| PageError::Api(crate::Error::from_store(e)))?;
    Ok(set_cookie(COOKIE, &secret, SESSION_TTL / 1_000_000, https))
}

/// A one-time login link for a token: the path to open (`/login/link/CODE`),
/// good once within [`LINK_TTL`]. The store keeps only the code's hash; the
/// CLI (`tokens link`, `demo --serve`) prints the link.
pub async fn login_link(store: &dyn trig_store::Store, token_id: i64, now: Micros) -> Result<String, crate::Error> {
    let code = random_secret()?;
    store.create_web_session(&token_hash(&code), "link", token_id, None, now, now + LINK_TTL).await.map_err(crate::Error::from_store)?;
    Ok(format!("/login/link/{code}"))
}

/// A posted form, read only after its session and CSRF token check out.
#[derive(Debug)]
pub struct Posted {
    pub session: Session,
    pub form: Form,
}

/// A form's fields, in order (a key may repeat: a multi-select).
#[derive(Debug, Default, Clone)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(bytes: &[u8]) -> Form {
        Form(form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    /// A field's value, trimmed; "" when absent.
    pub fn get(&self, key: &str) -> &str {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim()).unwrap_or("")
    }

    /// A field's value, trimmed; `None` when absent or empty.
    pub fn opt(&self, key: &str) -> Option<String> {
        Some(self.get(key)).filter(|v| !v.is_empty()).map(str::to_string)
    }

    /// Every value of a repeated field, trimmed, the empty ones left out.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
    }
}

/// Reads a form body (up to [`FORM_LIMIT`]).
pub async fn read_form(req: Request) -> Result<(Parts, Form), PageError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| PageError::Api(crate::Error::TooLarge { limit: FORM_LIMIT }))?;
    Ok((parts, Form::parse(&bytes)))
}

impl FromRequest<AppState> for Posted {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &AppState) -> Result<Posted, PageError> {
        // The session first: a stranger's body is never read.
        let session = of_request(state, req.headers()).await?;
        let (_, form) = read_form(req).await?;
        if !constant_eq(form.get("csrf"), &session.csrf) {
            return Err(PageError::Csrf);
        }
        Ok(Posted { session, form })
    }
}

/// Compares without stopping at the first difference.
pub fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_and_set_strict_and_http_only() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; trig_session=abc".parse().unwrap());
        h.append(header::COOKIE, "trig_login=xyz".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
        let c = set_cookie(COOKIE, "abc", 60, false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age=60") && !c.contains("Secure"), "{c}");
        assert!(set_cookie(COOKIE, "abc", 60, true).ends_with("; Secure"));
    }

    #[test]
    fn a_csrf_token_is_the_sessions_own_and_reveals_nothing_of_it() {
        let (a, b) = (random_secret().unwrap(), random_secret().unwrap());
        assert_ne!(csrf_of(&a), csrf_of(&b));
        assert_eq!(csrf_of(&a), csrf_of(&a));
        assert_ne!(csrf_of(&a), token_hash(&a)[..48], "not the stored hash");
        assert!(constant_eq("abc", "abc") && !constant_eq("abc", "abd") && !constant_eq("abc", "ab"));
    }

    #[test]
    fn a_form_keeps_repeated_fields_and_trims() {
        let f = Form::parse(b"a=+x+&b=1&b=&b=2&c=%3Cscript%3E");
        assert_eq!((f.get("a"), f.get("zz"), f.opt("zz")), ("x", "", None));
        assert_eq!(f.all("b"), vec!["1", "2"]);
        assert_eq!(f.get("c"), "<script>");
    }
}
