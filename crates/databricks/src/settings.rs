//! Connection settings as customers paste them, parsed once into types that
//! can only hold valid values.
//!
//! The workspace URL comes from a web form, so it is also an SSRF vector:
//! plain `http`, IP literals, hosts that are not Databricks workspace hosts,
//! and hosts that resolve to loopback, private, link-local or metadata
//! addresses are refused unless [`AllowHosts`] names the host. That list is
//! how the demo and tests reach the local emulator and how a private-link
//! deployment is configured.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;

/// Which cloud a workspace runs on, from its host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Azure,
    Gcp,
    /// An allow-listed host that is not a standard workspace host.
    Other,
}

/// Hosts the operator allows beyond the standard workspace hosts: `host` (any
/// port) or `host:port`. A listed host may use plain http and resolve to a
/// loopback or private address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowHosts(Vec<(String, Option<u16>)>);

impl AllowHosts {
    /// The entries as written back (`host` or `host:port`).
    pub fn entries(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(h, p)| {
                let h = if h.contains(':') { format!("[{h}]") } else { h.clone() };
                p.map_or(h.clone(), |p| format!("{h}:{p}"))
            })
            .collect()
    }

    /// Parses entries such as `localhost`, `127.0.0.1:8765`, `[::1]:8765`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowHosts, String> {
        let mut out = Vec::new();
        for e in entries {
            let e = e.as_ref().trim();
            if e.is_empty() {
                continue;
            }
            let (host, port) = split_host_port(e).map_err(|r| format!("allow_hosts entry `{e}`: {r}"))?;
            out.push((host, port));
        }
        Ok(AllowHosts(out))
    }
    fn allows(&self, host: &str, port: Option<u16>) -> bool {
        self.0.iter().any(|(h, p)| h == host && (p.is_none() || *p == port))
    }
    /// Whether any entry names this host, whatever its port (the resolver
    /// sees names, not ports).
    pub(crate) fn names_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.0.iter().any(|(h, _)| *h == host)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether an address is loopback, private, link-local, metadata or otherwise
/// internal: the addresses a customer-supplied URL must never reach.
pub(crate) fn is_internal_addr(ip: &IpAddr) -> bool {
    is_internal(ip)
}

/// `input` with any `user:password@` before the host replaced by `***@`, so
/// that an error can quote the URL without its credentials.
pub fn without_userinfo(input: &str) -> String {
    let start = input.find("://").map_or(0, |i| i + 3);
    let end = input[start..].find(['/', '?', '#']).map_or(input.len(), |i| start + i);
    match input[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &input[..start], &input[start + at..]),
        None => input.to_string(),
    }
}

/// A validated workspace URL: scheme, host, optional port, the workspace id
/// when the URL carried one (`?o=`), and the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceUrl {
    https: bool,
    host: String,
    port: Option<u16>,
    workspace_id: Option<String>,
    cloud: Cloud,
}

impl WorkspaceUrl {
    /// Parses what a customer pasted: with or without `https://`, with a
    /// trailing slash or path, with a `?o=<workspace id>` query.
    pub fn parse(input: &str, allow: &AllowHosts) -> Result<WorkspaceUrl, Error> {
        // What is quoted back never carries a user name or password.
        let shown = without_userinfo(input);
        let bad = |reason: &str| Error::InvalidUrl { input: shown.clone(), reason: reason.to_string() };
        let text = input.trim();
        if text.is_empty() {
            return Err(bad("it is empty; paste your workspace URL, e.g. https://dbc-a1b2c3d4-e5f6.cloud.databricks.com"));
        }
        let lower = text.to_ascii_lowercase();
        let (https, rest) = if let Some(r) = lower.strip_prefix("https://") {
            (true, &text[text.len() - r.len()..])
        } else if let Some(r) = lower.strip_prefix("http://") {
            (false, &text[text.len() - r.len()..])
        } else if lower.contains("://") {
            return Err(bad("only https:// URLs are accepted"));
        } else {
            (true, text)
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let tail = &rest[end..];
        if authority.contains('@') {
            return Err(bad("user names or passwords in the URL are not accepted; paste only the workspace address"));
        }
        let (host, port) = split_host_port(authority).map_err(|r| bad(&r))?;
        let workspace_id = tail
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(""))
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("o=")))
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        if let Some(id) = &workspace_id
            && !id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("the `o=` workspace id must be digits"));
        }
        let allowed = allow.allows(&host, port);
        let cloud = cloud_of(&host);
        if !allowed {
            if !https {
                return Err(bad("plain http is refused; use https:// (or list the host in allow_hosts for a local test workspace)"));
            }
            if host.parse::<IpAddr>().is_ok() {
                return Err(bad("an IP address is not a workspace URL; use the workspace's host name"));
            }
            if cloud == Cloud::Other {
                return Err(bad(
                    "this is not a Databricks workspace host (*.cloud.databricks.com, *.azuredatabricks.net, *.gcp.databricks.com); \
                     a private-link or custom domain must be listed in allow_hosts",
                ));
            }
        }
        Ok(WorkspaceUrl { https, host, port, workspace_id, cloud })
    }

    /// `https://host[:port]`, without a trailing slash.
    pub fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        }
    }
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> Option<u16> {
        self.port
    }
    pub fn cloud(&self) -> Cloud {
        self.cloud
    }
    pub fn workspace_id(&self) -> Option<&str> {
        self.workspace_id.as_deref()
    }

    /// Checks the addresses the host resolved to: loopback, private,
    /// link-local, metadata and unspecified addresses are refused unless the
    /// host is allow-listed. Call it with every address before connecting.
    pub fn check_resolved(&self, addrs: &[IpAddr], allow: &AllowHosts) -> Result<(), Error> {
        if allow.allows(&self.host, self.port) {
            return Ok(());
        }
        if addrs.is_empty() {
            return Err(Error::InvalidUrl { input: self.base(), reason: "the host name does not resolve; check the spelling".into() });
        }
        match addrs.iter().find(|a| is_internal(a)) {
            Some(a) => Err(Error::InvalidUrl {
                input: self.base(),
                reason: format!(
                    "the host resolves to the internal address {a}, which is refused; list the host in allow_hosts if this is intended"
                ),
            }),
            None => Ok(()),
        }
    }
}

/// A URL Trig posts to (an alert webhook), under the workspace URL's SSRF
/// rules: `https://` only, no user name or password, no IP address, and no
/// host that resolves to an internal address, unless the operator's
/// allow-list names the host. The URL itself may hold a secret (Slack's
/// do): [`WebhookUrl::shown`] is what may be quoted.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: String,
    host: String,
    port: Option<u16>,
    https: bool,
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.shown())
    }
}

impl WebhookUrl {
    pub fn parse(input: &str, allow: &AllowHosts) -> Result<WebhookUrl, String> {
        let text = input.trim();
        let lower = text.to_ascii_lowercase();
        let (https, rest) = if let Some(r) = lower.strip_prefix("https://") {
            (true, &text[text.len() - r.len()..])
        } else if let Some(r) = lower.strip_prefix("http://") {
            (false, &text[text.len() - r.len()..])
        } else {
            return Err("must be an https:// URL, e.g. https://hooks.slack.com/services/…".into());
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.contains('@') {
            return Err("user names or passwords in the URL are not accepted".into());
        }
        let (host, port) = split_host_port(authority)?;
        if !allow.allows(&host, port) {
            if !https {
                return Err("plain http is refused; use https://".into());
            }
            if host.parse::<IpAddr>().is_ok() {
                return Err("an IP address is refused; use the service's host name".into());
            }
            if host == "localhost" || host.ends_with(".localhost") || host.ends_with(".internal") || host.ends_with(".local") {
                return Err("an internal host is refused".into());
            }
        }
        if text.len() > 2048 {
            return Err("is over 2048 characters".into());
        }
        Ok(WebhookUrl { url: text.to_string(), host, port, https })
    }

    /// The URL, to post to (it may hold a secret: never print it).
    pub fn expose(&self) -> &str {
        &self.url
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.https { 443 } else { 80 })
    }

    /// What may be quoted: scheme and host, not the path.
    pub fn shown(&self) -> String {
        format!("{}://{}/…", if self.https { "https" } else { "http" }, self.host)
    }

    /// Every address the host resolved to must be public unless the host is allow-listed.
    pub fn check_resolved(&self, addrs: &[IpAddr], allow: &AllowHosts) -> Result<(), String> {
        if allow.allows(&self.host, self.port) {
            return Ok(());
        }
        if addrs.is_empty() {
            return Err(format!("{} does not resolve", self.host));
        }
        match addrs.iter().find(|a| is_internal(a)) {
            Some(a) => Err(format!("{} resolves to the internal address {a}, which is refused", self.host)),
            None => Ok(()),
        }
    }
}

impl fmt::Display for WorkspaceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base())
    }
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("an IPv6 address must be closed with `]`")?;
        let port = after.strip_prefix(':');
        if !after.is_empty() && port.is_none() {
            return Err("unexpected text after the IPv6 address".into());
        }
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            _ => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("port `{p}` is not a number from 1 to 65535"))?),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("there is no host name".into());
    }
    let is_ip = host.parse::<IpAddr>().is_ok();
    if !is_ip && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err("the host name has characters a host name cannot have".into());
    }
    Ok((host, port))
}

fn labels(host: &str) -> Vec<&str> {
    host.split('.').collect()
}

fn cloud_of(host: &str) -> Cloud {
    let l = labels(host);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // dbc-xxxxxxxx-xxxx.cloud.databricks.com, or a named workspace there.
    if host.ends_with(".cloud.databricks.com") || host.ends_with(".cloud.databricks.us") {
        return if l.len() == 4 && !l[0].is_empty() { Cloud::Aws } else { Cloud::Other };
    }
    // adb-<digits>.<n>.azuredatabricks.net
    if l.len() == 4 && l[2] == "azuredatabricks" && l[3] == "net" && l[0].strip_prefix("adb-").is_some_and(digits) && digits(l[1]) {
        return Cloud::Azure;
    }
    // <digits>.<n>.gcp.databricks.com
    if l.len() == 5 && l[2..] == ["gcp", "databricks", "com"] && digits(l[0]) && digits(l[1]) {
        return Cloud::Gcp;
    }
    Cloud::Other
}

fn is_internal(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(&v4);
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || *v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) // AWS metadata
        }
    }
}

fn is_internal_v4(v4: &Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local() // includes 169.254.169.254 (metadata)
        || v4.is_unspecified()
        || v4.is_broadcast()
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // carrier-grade NAT
        || o[0] == 0
}

/// A SQL warehouse id, from the HTTP path of the connection details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarehouseId(String);

impl WarehouseId {
    /// Accepts `/sql/1.0/warehouses/<id>`, the legacy `/sql/1.0/endpoints/<id>`
    /// and a bare id; refuses all-purpose cluster paths.
    pub fn from_http_path(input: &str) -> Result<WarehouseId, Error> {
        let bad = |reason: &str| Error::InvalidHttpPath { input: input.to_string(), reason: reason.to_string() };
        let text = input.trim().trim_end_matches('/');
        if text.is_empty() {
            return Err(bad(
                "it is empty; copy the HTTP path from the SQL warehouse's Connection details tab, e.g. /sql/1.0/warehouses/a1b2c3d4e5f60718",
            ));
        }
        if text.contains("protocolv1") {
            return Err(bad(
                "this is an all-purpose cluster's path; Trig needs a SQL warehouse. Copy the HTTP path from a SQL warehouse's Connection details tab (it looks like /sql/1.0/warehouses/<id>)",
            ));
        }
        let id = if let Some((_, id)) = text.rsplit_once("/warehouses/").or_else(|| text.rsplit_once("/endpoints/")) {
            id
        } else if !text.contains('/') {
            text
        } else {
            return Err(bad("it does not name a SQL warehouse; it should look like /sql/1.0/warehouses/<id>"));
        };
        let id = id.split(['?', '&', '/']).next().unwrap_or("");
        // Databricks' own ids are 16 hexadecimal characters; compatible
        // services use others (`bhw-…`). Test connection finds a wrong one.
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad(
                "the warehouse id is letters, digits, `-` and `_`, as in /sql/1.0/warehouses/a1b2c3d4e5f60718; copy the HTTP path from the SQL warehouse's Connection details tab",
            ));
        }
        let hex16 = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
        Ok(WarehouseId(if hex16 { id.to_ascii_lowercase() } else { id.to_string() }))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WarehouseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_url_follows_the_ssrf_rules() {
        let none = AllowHosts::default();
        let ok = WebhookUrl::parse("https://hooks.slack.com/services/T0/B0/secret", &none).unwrap();
        assert_eq!((ok.host(), ok.port(), ok.shown().as_str()), ("hooks.slack.com", 443, "https://hooks.slack.com/…"));
        assert!(!format!("{ok:?}").contains("secret"));
        for bad in [
            "http://hooks.example.com/x",
            "https://10.0.0.1/x",
            "https://u:p@hooks.example.com/",
            "https://localhost/x",
            "https://metadata.internal/x",
            "ftp://x",
        ] {
            assert!(WebhookUrl::parse(bad, &none).is_err(), "{bad}");
        }
        let allow = AllowHosts::parse(&["127.0.0.1:9000"]).unwrap();
        let local = WebhookUrl::parse("http://127.0.0.1:9000/hook", &allow).unwrap();
        assert!(local.check_resolved(&["127.0.0.1".parse().unwrap()], &allow).is_ok());
        assert!(ok.check_resolved(&["169.254.169.254".parse().unwrap()], &none).unwrap_err().contains("internal address"));
        assert!(ok.check_resolved(&["3.3.3.3".parse().unwrap()], &none).is_ok());
    }

    fn none() -> AllowHosts {
        AllowHosts::default()
    }

    /// Property: parsing never panics, and whatever parses re-parses from its
    /// own `base()` to the same value (so what is stored is what is used).
    #[test]
    fn url_and_path_parsing_is_total_and_stable() {
        let pieces = [
            "https://",
            "http://",
            "dbc-a1b2c3d4-e5f6",
            ".cloud.databricks.com",
            "adb-123",
            ".7",
            ".azuredatabricks.net",
            "123.4",
            ".gcp.databricks.com",
            "/",
            "?o=123",
            "#x",
            ":443",
            ":0",
            "@",
            "[::1]",
            "127.0.0.1",
            "localhost",
            " ",
            "..",
            "%2f",
            "é",
            "/sql/1.0/warehouses/",
            "a1b2c3d4e5f60718",
            "/sql/protocolv1/o/1/2",
            "/endpoints/",
        ];
        let allow = AllowHosts::parse(&["localhost", "127.0.0.1:8765"]).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..5000 {
            let mut input = String::new();
            for _ in 0..(1 + state % 6) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            for a in [&none(), &allow] {
                if let Ok(u) = WorkspaceUrl::parse(&input, a) {
                    let again = WorkspaceUrl::parse(&u.base(), a).unwrap_or_else(|e| panic!("{input} → {} fails: {e}", u.base()));
                    assert_eq!((again.base(), again.cloud()), (u.base(), u.cloud()), "{input}");
                }
            }
            if let Ok(w) = WarehouseId::from_http_path(&input) {
                assert!(w.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{input}");
                assert!(!input.contains("protocolv1"), "{input}");
                assert_eq!(WarehouseId::from_http_path(&format!("/sql/1.0/warehouses/{w}")).unwrap(), w);
            }
        }
    }

    #[test]
    fn pasted_forms_of_a_workspace_url_parse() {
        for input in [
            "dbc-a1b2c3d4-e5f6.cloud.databricks.com",
            "https://dbc-a1b2c3d4-e5f6.cloud.databricks.com",
            "https://dbc-a1b2c3d4-e5f6.cloud.databricks.com/",
            "  HTTPS://DBC-A1B2C3D4-E5F6.cloud.databricks.com/sql/editor?o=1234567890123456#x ",
        ] {
            let u = WorkspaceUrl::parse(input, &none()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(u.base(), "https://dbc-a1b2c3d4-e5f6.cloud.databricks.com", "{input}");
            assert_eq!(u.cloud(), Cloud::Aws);
        }
        let u = WorkspaceUrl::parse("https://x.cloud.databricks.com/?o=1234567890123456", &none()).unwrap();
        assert_eq!(u.workspace_id(), Some("1234567890123456"));
        assert_eq!(WorkspaceUrl::parse("adb-1234567890123456.7.azuredatabricks.net", &none()).unwrap().cloud(), Cloud::Azure);
        assert_eq!(WorkspaceUrl::parse("1234567890123456.7.gcp.databricks.com/", &none()).unwrap().cloud(), Cloud::Gcp);
    }

    #[test]
    fn dangerous_or_foreign_urls_are_refused_with_the_fix() {
        let cases = [
            ("", "it is empty"),
            ("http://dbc-a1b2c3d4-e5f6.cloud.databricks.com", "plain http is refused"),
            ("ftp://x.cloud.databricks.com", "only https://"),
            ("https://10.0.0.5", "an IP address"),
            ("https://169.254.169.254/latest/meta-data", "an IP address"),
            ("https://[::1]:8080", "an IP address"),
            ("https://example.com", "allow_hosts"),
            ("https://user:pw@x.cloud.databricks.com", "user names or passwords"),
            ("https://x.cloud.databricks.com:99999", "port `99999`"),
            ("https://x.cloud.databricks.com/?o=abc", "must be digits"),
            ("https://bad_host!.cloud.databricks.com", "characters"),
        ];
        // Credentials in a pasted URL are never quoted back.
        for input in ["https://user:hunter2@x.cloud.databricks.com", "http://u:hunter2@127.0.0.1", "hunter2@x.example.com/p@th"] {
            let e = WorkspaceUrl::parse(input, &none()).expect_err(input).to_string();
            assert!(!e.contains("hunter2") && e.contains("***@"), "{e}");
        }
        for (input, want) in cases {
            let e = WorkspaceUrl::parse(input, &none()).expect_err(input);
            assert_eq!(e.field(), Some("workspace_url"));
            assert!(!e.is_retryable());
            assert!(e.to_string().contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn allow_listed_hosts_may_be_local_and_plain_http() {
        let allow = AllowHosts::parse(&["127.0.0.1:8765", "localhost"]).unwrap();
        let u = WorkspaceUrl::parse("http://127.0.0.1:8765", &allow).unwrap();
        assert_eq!(u.base(), "http://127.0.0.1:8765");
        assert_eq!(u.cloud(), Cloud::Other);
        assert!(u.check_resolved(&["127.0.0.1".parse().unwrap()], &allow).is_ok());
        // The port is part of the entry when given.
        assert!(WorkspaceUrl::parse("http://127.0.0.1:9999", &allow).is_err());
        assert!(WorkspaceUrl::parse("http://localhost:1234", &allow).is_ok());
        assert!(AllowHosts::parse(&["host:notaport"]).is_err());
    }

    #[test]
    fn hosts_resolving_inside_are_refused() {
        let u = WorkspaceUrl::parse("dbc-a1b2c3d4-e5f6.cloud.databricks.com", &none()).unwrap();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            let e = u.check_resolved(&[ip.parse().unwrap()], &none()).expect_err(ip);
            assert!(e.to_string().contains("internal address"), "{ip}: {e}");
        }
        assert!(u.check_resolved(&["52.10.1.1".parse().unwrap()], &none()).is_ok());
        assert!(u.check_resolved(&[], &none()).is_err());
    }

    #[test]
    fn http_paths_give_the_warehouse_id() {
        for input in [
            "/sql/1.0/warehouses/a1b2c3d4e5f60718",
            "/sql/1.0/endpoints/A1B2C3D4E5F60718/",
            "a1b2c3d4e5f60718",
            " sql/1.0/warehouses/a1b2c3d4e5f60718?o=1 ",
        ] {
            assert_eq!(WarehouseId::from_http_path(input).unwrap().as_str(), "a1b2c3d4e5f60718", "{input}");
        }
        let e = WarehouseId::from_http_path("sql/protocolv1/o/1234567890123456/0123-456789-abcdefgh").unwrap_err();
        assert_eq!(e.field(), Some("http_path"));
        assert!(e.to_string().contains("all-purpose cluster") && e.to_string().contains("SQL warehouse"), "{e}");
        // Compatible services use other ids; they are kept as written.
        assert_eq!(WarehouseId::from_http_path("/sql/1.0/warehouses/bhw-7Kq_x2").unwrap().as_str(), "bhw-7Kq_x2");
        assert_eq!(WarehouseId::from_http_path("/sql/1.0/endpoints/wh_1").unwrap().as_str(), "wh_1");
        for bad in ["/sql/1.0/warehouses/a b", "/sql/1.0/warehouses/é", "/sql/1.0/warehouses/x%2fy"] {
            assert!(WarehouseId::from_http_path(bad).unwrap_err().to_string().contains("letters, digits"), "{bad}");
        }
        assert!(WarehouseId::from_http_path("/some/other/path").is_err());
        assert!(WarehouseId::from_http_path("").is_err());
    }
}
