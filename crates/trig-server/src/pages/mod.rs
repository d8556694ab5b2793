//! The pages (issue #13): Settings → Integrations → Databricks for a
//! customer's admin, run history, and the representative's mapping editor.
//!
//! Server-rendered by askama (templates in `templates/`, checked against
//! their structs at compile time and HTML-escaped by default); every page
//! works without JavaScript: a form posts and the answer redirects (303) or
//! re-renders with the problem beside its field. No page carries a script.
//! Every answer has a Content-Security-Policy without inline scripts or
//! styles, `frame-ancestors 'none'` and `X-Frame-Options: DENY`.
//!
//! | module | pages |
//! |---|---|
//! | `session` | sign-in, sessions, login links, CSRF, the posted-form extractor |
//! | `settings` | `/settings/integrations/databricks`: connections, Test connection, pipeline status, warehouse cost |
//! | `history` | `…/pipelines/{p}`: status, the timeline of runs and changes, the chart, quarantine samples |
//! | `mapping` | `…/pipelines/{p}/mapping` (representatives): pickers, fields, Preview, Save, Sync now, Full refresh |
//! | `chart` | the inline SVG of rows and durations per run |

mod chart;
mod history;
mod mapping;
pub mod session;
mod settings;

use askama::Template;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use trig_store::Micros;

use crate::api::AppState;
use crate::auth::{Role, token_hash};
use session::{LOGIN_COOKIE, Posted, Session};

/// Where the pages begin.
pub const HOME: &str = "/settings/integrations/databricks";

/// The one stylesheet.
const CSS: &str = include_str!("../../assets/trig.css");

/// The pages' routes (merged into the API's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(HOME) }))
        .route("/assets/trig.css", get(stylesheet))
        .route("/login", get(login_page).post(login))
        .route("/login/link/{code}", get(login_link))
        .route("/logout", post(logout))
        .route("/tenants", get(tenants_page).post(choose_tenant))
        .route(HOME, get(settings::page))
        .route("/settings/integrations/databricks/connection", post(settings::submit))
        .route("/settings/integrations/databricks/pipelines", post(mapping::create))
        .route("/settings/integrations/databricks/pipelines/{p}", get(history::page))
        .route("/settings/integrations/databricks/pipelines/{p}/mapping", get(mapping::page).post(mapping::submit))
        .route("/settings/integrations/databricks/pipelines/{p}/sync", post(mapping::sync))
        .route(
            "/settings/integrations/databricks/pipelines/{p}/full-refresh",
            get(mapping::confirm_full_refresh).post(mapping::full_refresh),
        )
}

/// What every page around its content needs: who is signed in and the CSRF token of its forms.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub tenant: String,
    pub tenant_display: String,
    pub role: &'static str,
    pub representative: bool,
    pub csrf: String,
}

impl Chrome {
    pub fn of(s: &Session, tenant_display: &str) -> Chrome {
        Chrome {
            tenant: s.tenant.as_ref().map(|t| t.1.clone()).unwrap_or_default(),
            tenant_display: tenant_display.to_string(),
            role: match s.principal.role {
                Role::Admin => "Customer admin",
                Role::Representative => "Trig representative",
            },
            representative: s.is_representative(),
            csrf: s.csrf.clone(),
        }
    }
}

/// A time for people: `2026-12-02 14:05 UTC`.
pub fn when(t: Micros) -> String {
    chrono::DateTime::from_timestamp_micros(t).map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| t.to_string())
}

/// A date for people: `2026-12-02`.
pub fn date(t: Micros) -> String {
    chrono::DateTime::from_timestamp_micros(t).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_else(|| t.to_string())
}

/// A duration for people: `850 ms`, `12.4 s`, `3 min 5 s`.
pub fn took(micros: Micros) -> String {
    let ms = micros / 1000;
    match ms {
        ..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// A rendered page with the pages' headers.
pub fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::error!("a page failed to render: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "This page failed to render.")
                .into_response()
        }
    }
}

/// The headers every answer carries: no scripts but our own files, no
/// framing, no sniffing, no referrer (links may hold a login code), no caching of pages.
pub async fn security_headers(req: Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html")) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub chrome: Option<Chrome>,
    pub title: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Why a page could not be shown, as a page.
#[derive(Debug)]
pub enum PageError {
    /// Not signed in, or the session ended (why, when known).
    SignIn { reason: Option<String> },
    /// A form without this session's CSRF token.
    Csrf,
    /// A representative's page asked for by a customer admin.
    Forbidden { what: String, chrome: Option<Chrome> },
    /// Anything the API would answer: shown with its status.
    Api(crate::Error),
    /// Any other problem, with the page's chrome.
    WithChrome(Box<(crate::Error, Chrome)>),
}

impl PageError {
    /// `e`, shown inside the page's chrome.
    pub fn with(e: crate::Error, chrome: Chrome) -> PageError {
        PageError::WithChrome(Box::new((e, chrome)))
    }
}

impl From<crate::Error> for PageError {
    fn from(e: crate::Error) -> PageError {
        PageError::Api(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = |chrome, status, title: &str, message: String, hint: Option<String>| {
            html(status, &MessagePage { chrome, title: title.into(), message, hint })
        };
        match self {
            PageError::SignIn { reason } => match login_form(reason, None, StatusCode::UNAUTHORIZED) {
                Ok(r) => r,
                Err(e) => PageError::Api(e).into_response(),
            },
            PageError::Csrf => page(
                None,
                StatusCode::FORBIDDEN,
                "This form could not be accepted",
                "The form was sent without this session's security token: it was opened before you signed in again, or it came from another site.".into(),
                Some("Go back, reload the page and submit it again. Nothing was changed.".into()),
            ),
            PageError::Forbidden { what, chrome } => page(
                chrome,
                StatusCode::FORBIDDEN,
                "Only a Trig representative can open this",
                format!("{what} is set up by your Trig representative."),
                Some("Ask them to change the mapping; you can see every run and its figures on the pipeline's page.".into()),
            ),
            PageError::Api(e) => {
                let status = e.status();
                page(None, status, title_of(status), e.to_string(), e.hint())
            }
            PageError::WithChrome(b) => {
                let (e, chrome) = *b;
                let status = e.status();
                page(Some(chrome), status, title_of(status), e.to_string(), e.hint())
            }
        }
    }
}

fn title_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "That did not work",
        StatusCode::CONFLICT => "Cannot change this here",
        StatusCode::PAYLOAD_TOO_LARGE => "Too much at once",
        _ => "Something went wrong",
    }
}

/// The page for an unknown path: a way home.
pub fn not_found_page() -> Response {
    html(
        StatusCode::NOT_FOUND,
        &MessagePage {
            chrome: None,
            title: "Not found".into(),
            message: "There is no page at this address.".into(),
            hint: Some("The Databricks integration's settings are the place to start.".into()),
        },
    )
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=300")], CSS).into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Option<Chrome>,
    csrf: String,
    message: Option<String>,
    error: Option<String>,
}

/// The sign-in form with a fresh double-submit token.
fn login_form(message: Option<String>, error: Option<String>, status: StatusCode) -> Result<Response, crate::Error> {
    let csrf = session::random_secret()?;
    let mut res = html(status, &LoginPage { chrome: None, csrf: csrf.clone(), message, error });
    // Secure or not, it only pairs the form with this browser; the session cookie says Secure on https.
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(LOGIN_COOKIE, &csrf, 3600, false)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}

#[derive(Deserialize)]
struct LoginQuery {
    signed_out: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Result<Response, PageError> {
    let message = q.signed_out.map(|_| "You are signed out.".to_string());
    Ok(login_form(message, None, StatusCode::OK)?)
}

async fn login(State(state): State<AppState>, req: Request) -> Result<Response, PageError> {
    let https = session::is_https(req.headers());
    let paired = session::cookie(req.headers(), LOGIN_COOKIE).map(str::to_string);
    let (_, form) = session::read_form(req).await?;
    if paired.as_deref().is_none_or(|c| !session::constant_eq(c, form.get("csrf"))) {
        return Ok(login_form(
            None,
            Some("The sign-in form expired or came from another page; it is fresh now: enter your token again.".into()),
            StatusCode::FORBIDDEN,
        )?);
    }
    let token = form.get("token");
    if token.is_empty() {
        return Ok(login_form(
            None,
            Some("API token: enter the token you were given (it starts with trig_).".into()),
            StatusCode::BAD_REQUEST,
        )?);
    }
    let found = if token.starts_with("trig_") && token.len() <= 100 {
        state.store.token_by_hash(&token_hash(token)).await.map_err(crate::Error::from_store)?
    } else {
        None
    };
    let Some(t) = found else {
        return Ok(login_form(
            None,
            Some("API token: this is not a live token (mistyped, revoked, or not a Trig token). Ask for a new one with `trig-databricks tokens create`.".into()),
            StatusCode::UNAUTHORIZED,
        )?);
    };
    signed_in(&state, &t, https).await
}

async fn signed_in(state: &AppState, t: &trig_store::TokenInfo, https: bool) -> Result<Response, PageError> {
    let cookie = session::start(state, t, https).await?;
    let mut res = Redirect::to(HOME).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(LOGIN_COOKIE, "", 0, https)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}

async fn login_link(
    State(state): State<AppState>,
    axum::extract::Path(code): axum::extract::Path<String>,
    req: Request,
) -> Result<Response, PageError> {
    let https = session::is_https(req.headers());
    let t = if code.len() <= 100 {
        state.store.redeem_login_link(&token_hash(&code), state.clock.now()).await.map_err(crate::Error::from_store)?
    } else {
        None
    };
    match t {
        Some(t) => signed_in(&state, &t, https).await,
        None => Ok(login_form(
            None,
            Some("This login link was used already or has expired (links work once, within a day). Sign in with your API token, or print a new link.".into()),
            StatusCode::UNAUTHORIZED,
        )?),
    }
}

async fn logout(State(state): State<AppState>, posted: Posted) -> Result<Response, PageError> {
    state.store.end_web_session(&posted.session.hash).await.map_err(crate::Error::from_store)?;
    let mut res = Redirect::to("/login?signed_out=1").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::COOKIE, "", 0, false)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}

#[derive(Template)]
#[template(path = "tenants.html")]
struct TenantsPage {
    chrome: Option<Chrome>,
    tenants: Vec<trig_store::TenantInfo>,
}

/// The session's tenant, with the chrome of its pages.
pub async fn tenant_of(state: &AppState, s: &Session) -> Result<(trig_store::TenantInfo, Chrome), PageError> {
    let Some((_, name)) = &s.tenant else {
        return Err(PageError::Api(crate::Error::NotFound { what: "a tenant for this session (choose one under Switch tenant)".into() }));
    };
    let t = crate::connections::tenant_of(state, &s.principal, name).await?;
    let chrome = Chrome::of(s, &t.display_name);
    Ok((t, chrome))
}

async fn tenants_page(State(state): State<AppState>, s: Session) -> Result<Response, PageError> {
    let (_, chrome) = tenant_of(&state, &s).await?;
    if !s.is_representative() {
        return Err(PageError::Forbidden { what: "Choosing another tenant".into(), chrome: Some(chrome) });
    }
    let tenants = state.store.tenants().await.map_err(crate::Error::from_store)?;
    Ok(html(StatusCode::OK, &TenantsPage { chrome: Some(chrome), tenants }))
}

async fn choose_tenant(State(state): State<AppState>, posted: Posted) -> Result<Response, PageError> {
    let s = &posted.session;
    let (_, chrome) = tenant_of(&state, s).await?;
    if !s.is_representative() {
        return Err(PageError::Forbidden { what: "Choosing another tenant".into(), chrome: Some(chrome) });
    }
    let name = posted.form.get("tenant");
    let t = crate::connections::tenant_of(&state, &s.principal, name).await.map_err(|e| PageError::with(e, chrome))?;
    state.store.set_web_session_tenant(&s.hash, t.id).await.map_err(crate::Error::from_store)?;
    Ok(Redirect::to(HOME).into_response())
}
