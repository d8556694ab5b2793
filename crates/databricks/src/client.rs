//! The HTTP client: connection settings, authentication, and one `send` that
//! every REST call goes through (auth header, retry policy, classification).
//!
//! Outbound safety lives here too: redirects are never followed, every host
//! name is resolved through a resolver that refuses internal addresses unless
//! the allow-list names the host, and external links are checked the same way
//! before they are downloaded (and get no `Authorization` header).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{RestError, retry_after};
use crate::error::Error;
use crate::retry::{RetryPolicy, Verdict};
use crate::secret::Secret;
use crate::settings::{AllowHosts, WarehouseId, WorkspaceUrl, is_internal_addr};

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A service principal's token or a personal access token.
    Token(Secret),
    /// OAuth machine-to-machine: a service principal's client id and secret.
    OAuth { client_id: String, client_secret: Secret },
}

impl Credentials {
    pub fn describe(&self) -> &'static str {
        match self {
            Credentials::Token(_) => "access token",
            Credentials::OAuth { .. } => "OAuth client credentials",
        }
    }
}

/// Everything needed to reach one workspace, validated.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub workspace: WorkspaceUrl,
    pub warehouse: WarehouseId,
    pub credentials: Credentials,
    pub default_catalog: Option<String>,
    pub allow_hosts: AllowHosts,
}

impl ConnectionSettings {
    /// Settings from parts already parsed (a loaded config file).
    pub fn new(
        workspace: WorkspaceUrl,
        warehouse: WarehouseId,
        credentials: Credentials,
        default_catalog: Option<String>,
        allow_hosts: AllowHosts,
    ) -> Result<ConnectionSettings, Error> {
        check_credentials(&credentials)?;
        Ok(ConnectionSettings { workspace, warehouse, credentials, default_catalog, allow_hosts })
    }

    /// Parses what the connect form holds; the first problem is returned.
    pub fn parse(
        workspace_url: &str,
        http_path: &str,
        credentials: Credentials,
        default_catalog: Option<&str>,
        allow_hosts: &[String],
    ) -> Result<ConnectionSettings, Error> {
        let allow = AllowHosts::parse(allow_hosts).map_err(|reason| Error::InvalidSetting { field: "allow_hosts", reason })?;
        let workspace = WorkspaceUrl::parse(workspace_url, &allow)?;
        let warehouse = WarehouseId::from_http_path(http_path)?;
        check_credentials(&credentials)?;
        let default_catalog = default_catalog.map(str::trim).filter(|c| !c.is_empty()).map(str::to_string);
        Ok(ConnectionSettings { workspace, warehouse, credentials, default_catalog, allow_hosts: allow })
    }
}

pub(crate) fn check_credentials(c: &Credentials) -> Result<(), Error> {
    match c {
        Credentials::Token(t) if t.is_empty() => Err(Error::InvalidSetting {
            field: "token",
            reason: "the access token is empty; paste the token or name the variable that holds it".into(),
        }),
        Credentials::Token(t) if t.expose().trim().contains(char::is_whitespace) || t.expose().starts_with("Bearer ") => {
            Err(Error::InvalidSetting {
                field: "token",
                reason: "the token contains spaces; paste only the token itself (dapi…), without `Bearer`".into(),
            })
        }
        Credentials::OAuth { client_id, .. } if client_id.trim().is_empty() => {
            Err(Error::InvalidSetting { field: "oauth.client_id", reason: "the OAuth client id is empty".into() })
        }
        Credentials::OAuth { client_secret, .. } if client_secret.is_empty() => {
            Err(Error::InvalidSetting { field: "oauth.client_secret", reason: "the OAuth client secret is empty".into() })
        }
        _ => Ok(()),
    }
}

/// Tunables; the defaults suit production.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub retry: RetryPolicy,
    /// Timeout of one REST request (not of a statement).
    pub request_timeout: Duration,
    /// Timeout of one external-link download.
    pub download_timeout: Duration,
    pub connect_timeout: Duration,
    /// Refresh an OAuth token this long before it expires.
    pub token_refresh_margin: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(60),
            download_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            token_refresh_margin: Duration::from_secs(40),
        }
    }
}

/// A client for one workspace and warehouse. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub http: reqwest::Client,
    pub base: String,
    pub settings: ConnectionSettings,
    pub options: ClientOptions,
    auth: Auth,
    /// The principal's user name (an application id for a service
    /// principal), once known; used to write GRANT statements.
    pub principal: OnceLock<String>,
    /// The workspace refused `query_tags`; statements go without them.
    pub query_tags_refused: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("workspace", &self.inner.base).field("warehouse", &self.inner.settings.warehouse).finish()
    }
}

struct Auth {
    credentials: Credentials,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

struct CachedToken {
    token: Secret,
    expires: Instant,
}

/// One failed attempt, before the retry policy decides.
#[derive(Debug)]
pub(crate) enum Failure {
    Transport { connect: bool, reason: String },
    Rest(RestError),
    Final(Error),
}

impl Failure {
    pub fn verdict(&self) -> Verdict {
        match self {
            Failure::Transport { .. } => Verdict::Retry { retry_after: None },
            Failure::Rest(e) if matches!(e.status, 429 | 502 | 503 | 504) => Verdict::Retry { retry_after: e.retry_after },
            _ => Verdict::Fail,
        }
    }

    /// A statement submit is retried only when it started nothing: the
    /// connection never opened, or the workspace refused it (429, 503) or its
    /// gateway found no backend (502). A timeout, an answer lost after the
    /// request was sent, or a gateway timeout (504) may hide a statement that
    /// is already running, so it fails (as transient: the next run tries
    /// again) rather than run twice on the customer's warehouse.
    pub fn submit_verdict(&self) -> Verdict {
        match self {
            Failure::Transport { connect: true, .. } => Verdict::Retry { retry_after: None },
            Failure::Rest(e) if matches!(e.status, 429 | 502 | 503) => Verdict::Retry { retry_after: e.retry_after },
            _ => Verdict::Fail,
        }
    }
}

impl Client {
    pub fn new(settings: ConnectionSettings) -> Result<Client, Error> {
        Client::with_options(settings, ClientOptions::default())
    }

    pub fn with_options(settings: ConnectionSettings, options: ClientOptions) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver { allow: settings.allow_hosts.clone() }))
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("trig-databricks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Protocol { detail: format!("cannot build the HTTP client: {e}") })?;
        let base = settings.workspace.base();
        let auth = Auth { credentials: settings.credentials.clone(), cached: tokio::sync::Mutex::new(None) };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                settings,
                options,
                auth,
                principal: OnceLock::new(),
                query_tags_refused: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Whether two handles are one client (one token cache, one connection pool).
    pub fn is_same(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn settings(&self) -> &ConnectionSettings {
        &self.inner.settings
    }
    pub fn warehouse_id(&self) -> &str {
        self.inner.settings.warehouse.as_str()
    }
    /// The principal's name once [`Client::me`] has been called.
    pub fn principal(&self) -> Option<&str> {
        self.inner.principal.get().map(String::as_str)
    }

    pub(crate) fn classify(&self, f: Failure, attempts: u32) -> Error {
        match f {
            Failure::Final(e) => e,
            Failure::Transport { connect: true, reason } => Error::Unreachable { url: self.inner.base.clone(), reason },
            Failure::Transport { connect: false, reason } => {
                Error::Unavailable { detail: format!("the connection failed {attempts} times; last: {reason}") }
            }
            Failure::Rest(e) => e.classify(self.warehouse_id(), self.principal(), attempts),
        }
    }

    /// A GET or POST to the workspace REST API, retried per the policy,
    /// answered as JSON.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, Error> {
        let bytes = self.call_bytes(method, path, query, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol { detail: format!("{path}: {e}") })
    }

    pub(crate) async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Bytes, Error> {
        let url = format!("{}{}", self.inner.base, path);
        let policy = self.inner.options.retry;
        let out = policy.run(|_| self.attempt(method.clone(), &url, query, body), Failure::verdict).await;
        out.map_err(|ex| self.classify(ex.error, ex.attempts))
    }

    /// A POST that starts a statement, retried per [`Failure::submit_verdict`].
    pub(crate) async fn call_submit<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, Error> {
        let url = format!("{}{}", self.inner.base, path);
        let policy = self.inner.options.retry;
        let out = policy.run(|_| self.attempt(Method::POST, &url, &[], Some(body)), Failure::submit_verdict).await;
        let bytes = out.map_err(|ex| match ex.error {
            Failure::Transport { connect: false, reason } => Error::Unavailable {
                detail: format!(
                    "the answer to a statement submit was lost ({reason}); it was not sent again, so that it cannot run twice on the warehouse"
                ),
            },
            Failure::Rest(e) if e.status == 504 => Error::Unavailable {
                detail: format!(
                    "a gateway answered HTTP {} to a statement submit; it was not sent again, so that it cannot run twice on the warehouse",
                    e.status
                ),
            },
            other => self.classify(other, ex.attempts),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol { detail: format!("{path}: {e}") })
    }

    /// One attempt, including the single re-authentication an OAuth client
    /// gets when its token is refused.
    async fn attempt(&self, method: Method, url: &str, query: &[(&str, String)], body: Option<&Value>) -> Result<Bytes, Failure> {
        let mut reauthenticated = false;
        loop {
            let token = self.bearer().await.map_err(Failure::Final)?;
            let mut req =
                self.inner.http.request(method.clone(), url).bearer_auth(token.expose()).timeout(self.inner.options.request_timeout);
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            if status.is_redirection() {
                let to = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                return Err(Failure::Final(redirect_error(&to, self)));
            }
            let ra = retry_after(resp.headers());
            let bytes = resp.bytes().await.map_err(transport)?;
            if status.is_success() {
                return Ok(bytes);
            }
            let err = RestError::parse(status.as_u16(), ra, &bytes);
            if err.is_bad_credential() && matches!(self.inner.auth.credentials, Credentials::OAuth { .. }) && !reauthenticated {
                tracing::info!("the OAuth token was refused; fetching a new one and retrying once");
                self.invalidate(&token).await;
                reauthenticated = true;
                continue;
            }
            return Err(Failure::Rest(err));
        }
    }

    /// The bearer token to send: the static token, or a cached OAuth token
    /// refreshed shortly before it expires.
    pub(crate) async fn bearer(&self) -> Result<Secret, Error> {
        let (client_id, client_secret) = match &self.inner.auth.credentials {
            Credentials::Token(t) => return Ok(t.clone()),
            Credentials::OAuth { client_id, client_secret } => (client_id, client_secret),
        };
        let mut cached = self.inner.auth.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() + self.inner.options.token_refresh_margin < c.expires
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch_oauth_token(client_id, client_secret).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn invalidate(&self, refused: &Secret) {
        let mut cached = self.inner.auth.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == refused) {
            *cached = None;
        }
    }

    async fn token_endpoint(&self) -> String {
        // Discovery, but only an endpoint on the workspace itself is trusted.
        let default = format!("{}/oidc/v1/token", self.inner.base);
        let url = format!("{}/oidc/.well-known/oauth-authorization-server", self.inner.base);
        let Ok(resp) = self.inner.http.get(&url).timeout(self.inner.options.request_timeout).send().await else { return default };
        let Ok(doc) = resp.json::<Value>().await else { return default };
        match doc.get("token_endpoint").and_then(Value::as_str).and_then(|t| reqwest::Url::parse(t).ok()) {
            Some(u) if u.host_str() == Some(self.inner.settings.workspace.host()) && u.port() == self.inner.settings.workspace.port() => {
                u.to_string()
            }
            _ => default,
        }
    }

    async fn fetch_oauth_token(&self, client_id: &str, client_secret: &Secret) -> Result<CachedToken, Error> {
        let endpoint = self.token_endpoint().await;
        let policy = self.inner.options.retry;
        let attempt = || async {
            let resp = self
                .inner
                .http
                .post(&endpoint)
                .basic_auth(client_id, Some(client_secret.expose()))
                .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
                .timeout(self.inner.options.request_timeout)
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status();
            let ra = retry_after(resp.headers());
            let bytes = resp.bytes().await.map_err(transport)?;
            if !status.is_success() {
                let e = RestError::parse(status.as_u16(), ra, &bytes);
                if matches!(status.as_u16(), 400 | 401 | 403) {
                    return Err(Failure::Final(Error::TokenInvalid {
                        detail: format!("the OAuth client `{client_id}` was refused by the token endpoint ({})", e.message),
                    }));
                }
                return Err(Failure::Rest(e));
            }
            let doc: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Failure::Final(Error::Protocol { detail: format!("token endpoint answered non-JSON: {e}") }))?;
            let token = doc.get("access_token").and_then(Value::as_str);
            let kind = doc.get("token_type").and_then(Value::as_str).unwrap_or("Bearer");
            let expires_in = doc.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
            match token {
                Some(t) if kind.eq_ignore_ascii_case("bearer") => {
                    Ok(CachedToken { token: Secret::new(t), expires: Instant::now() + Duration::from_secs(expires_in) })
                }
                _ => Err(Failure::Final(Error::Protocol { detail: "the token endpoint's answer has no Bearer access_token".into() })),
            }
        };
        policy.run(|_| attempt(), Failure::verdict).await.map_err(|ex| self.classify(ex.error, ex.attempts))
    }

    /// Downloads an external link: no Authorization header, only the
    /// headers the link asks for; the URL is checked like the workspace's.
    pub(crate) async fn download(&self, url: &str, headers: Option<&std::collections::BTreeMap<String, String>>) -> Result<Bytes, Failure> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Failure::Final(Error::Protocol { detail: format!("bad external link: {e}") }))?;
        check_link(&parsed, &self.inner.settings.allow_hosts).map_err(Failure::Final)?;
        let mut req = self.inner.http.get(parsed).timeout(self.inner.options.download_timeout);
        for (k, v) in headers.into_iter().flatten() {
            if !k.eq_ignore_ascii_case("authorization") {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let ra = retry_after(resp.headers());
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(Failure::Rest(RestError::parse(status.as_u16(), ra, &bytes)));
        }
        resp.bytes().await.map_err(transport)
    }
}

fn transport(e: reqwest::Error) -> Failure {
    let connect = e.is_connect();
    let timeout = e.is_timeout();
    // The URL is left out (a link's query string is a credential); the
    // source chain holds the OS reason.
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        reason = format!("{reason}: {s}");
        src = s.source();
    }
    if timeout {
        reason = format!("timed out ({reason})");
    }
    Failure::Transport { connect, reason }
}

fn redirect_error(location: &str, client: &Client) -> Error {
    if location.contains("private-link-validation-error") {
        return Error::Unreachable {
            url: client.inner.base.clone(),
            reason: "the workspace only accepts private-link traffic and this network is not on it; run Trig inside the private network or ask your admin to allow it".into(),
        };
    }
    Error::InvalidUrl {
        input: client.inner.base.clone(),
        reason: format!("the server redirects elsewhere ({location}); this is not a workspace API address. Use the workspace URL itself"),
    }
}

/// A link must be https (unless its host is allow-listed) and an IP literal
/// must not be internal (unless allow-listed); names are checked when they resolve.
fn check_link(url: &reqwest::Url, allow: &AllowHosts) -> Result<(), Error> {
    let host = url.host_str().unwrap_or_default();
    if allow.names_host(host) {
        return Ok(());
    }
    let refused = |reason: &str| Error::Protocol { detail: format!("refused to download a result link to {host}: {reason}") };
    if url.scheme() != "https" {
        return Err(refused("it is not https"));
    }
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>()
        && is_internal_addr(&ip)
    {
        return Err(refused("it is an internal address"));
    }
    Ok(())
}

/// Resolves names with the system resolver and refuses internal addresses
/// for any host the allow-list does not name (so a public name pointed at
/// 169.254.169.254 or 10.x is stopped at connect time, redirects or not).
struct GuardedResolver {
    allow: AllowHosts,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allow.names_host(name.as_str());
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allowed && let Some(bad) = addrs.iter().find(|a| is_internal_addr(&a.ip())) {
                let msg = format!(
                    "{host} resolves to the internal address {}, which is refused; list the host in allow_hosts if this is intended",
                    bad.ip()
                );
                return Err(msg.into());
            }
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_to_internal_or_plain_http_hosts_are_refused() {
        let none = AllowHosts::default();
        let ok = reqwest::Url::parse("https://bucket.s3.amazonaws.com/x?sig=1").unwrap();
        assert!(check_link(&ok, &none).is_ok());
        for bad in ["http://bucket.s3.amazonaws.com/x", "https://169.254.169.254/latest", "https://10.0.0.1/x", "https://[::1]/x"] {
            assert!(check_link(&reqwest::Url::parse(bad).unwrap(), &none).is_err(), "{bad}");
        }
        let allow = AllowHosts::parse(&["127.0.0.1:8765"]).unwrap();
        assert!(check_link(&reqwest::Url::parse("http://127.0.0.1:8765/emulator/files/x/0").unwrap(), &allow).is_ok());
    }

    #[test]
    fn credentials_are_checked_before_use() {
        assert!(check_credentials(&Credentials::Token(Secret::new(" "))).is_err());
        assert!(check_credentials(&Credentials::Token(Secret::new("Bearer dapi1"))).is_err());
        assert!(check_credentials(&Credentials::Token(Secret::new("dapi123"))).is_ok());
        let e = check_credentials(&Credentials::OAuth { client_id: "".into(), client_secret: Secret::new("s") }).unwrap_err();
        assert_eq!(e.field(), Some("oauth.client_id"));
    }
}
