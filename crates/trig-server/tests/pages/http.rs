//! The pages over plain HTTP (no browser): headers, sessions, CSRF, expiry,
//! roles, 404s. The browser test (`browser.rs`) clicks through the flows.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};

use super::{start, token};

/// A client that keeps nothing between requests: cookies are handed over by the test.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn cookie_of(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(|kv| kv[name.len() + 1..].to_string())
}

fn hidden(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no hidden {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Signs in with `token` the way a browser does: the form's pair cookie, then the post.
async fn sign_in(base: &str, token: &str) -> String {
    let c = client();
    let r = c.get(format!("{base}/login")).send().await.unwrap();
    let pair = cookie_of(r.headers(), "trig_login").unwrap();
    let csrf = hidden(&r.text().await.unwrap(), "csrf");
    let r = c
        .post(format!("{base}/login"))
        .header("cookie", format!("trig_login={pair}"))
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", r.text().await.unwrap());
    let set: Vec<String> = r.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let session = set.iter().find(|v| v.starts_with("trig_session=")).unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(session.contains(attr), "{session}");
    }
    cookie_of(r.headers(), "trig_session").unwrap()
}

async fn get(base: &str, path: &str, session: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut r = client().get(format!("{base}{path}"));
    if let Some(s) = session {
        r = r.header("cookie", format!("trig_session={s}"));
    }
    let r = r.send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_sign_in_keep_a_session_check_csrf_and_send_their_headers() {
    let s = start("pages-http").await;
    let admin = token(s.store.as_ref(), "acme", "admin").await;

    // Not signed in: the sign-in page, 401, with the contract's label and button.
    let (status, h, body) = get(&s.base, "/settings/integrations/databricks", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains(r#"<label for="token">API token</label>"#) && body.contains(">Sign in</button>"), "{body}");
    let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
    assert_eq!(h.get("cache-control").unwrap(), "no-store");
    assert!(!body.contains("<script"), "no page carries a script");

    // A wrong token: the field is named, nothing is set.
    let c = client();
    let r = c.get(format!("{}/login", s.base)).send().await.unwrap();
    let pair = cookie_of(r.headers(), "trig_login").unwrap();
    let csrf = hidden(&r.text().await.unwrap(), "csrf");
    let r = c
        .post(format!("{}/login", s.base))
        .header("cookie", format!("trig_login={pair}"))
        .form(&[("csrf", csrf.as_str()), ("token", "trig_nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(cookie_of(r.headers(), "trig_session").is_none());
    assert!(r.text().await.unwrap().contains("API token: this is not a live token"));
    // The sign-in form without its pair cookie (a form posted from another site) is refused.
    let r = c.post(format!("{}/login", s.base)).form(&[("csrf", csrf.as_str()), ("token", admin.as_str())]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(cookie_of(r.headers(), "trig_session").is_none());

    // Signed in: the connect form, the contract's labels and buttons.
    let session = sign_in(&s.base, &admin).await;
    let (status, _, body) = get(&s.base, "/settings/integrations/databricks", Some(&session)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for label in ["Workspace URL", "HTTP path", "Access token", "Default catalog"] {
        assert!(body.contains(&format!(">{label}</label>")), "{label}");
    }
    assert!(body.contains(">Test connection</button>") && body.contains(">Save</button>"));
    assert!(body.contains("Connect Databricks"));
    let csrf = hidden(&body, "csrf");

    // A form without the session's CSRF token changes nothing and says why.
    let post = |form: Vec<(&'static str, String)>| {
        let (base, session) = (s.base.clone(), session.clone());
        async move {
            let r = client()
                .post(format!("{base}/settings/integrations/databricks/connection"))
                .header("cookie", format!("trig_session={session}"))
                .form(&form)
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let fields = |csrf: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("name", "production".to_string()),
            ("workspace_url", "https://dbc-a1b2c3d4-e5f6.cloud.databricks.com".to_string()),
            ("http_path", "/sql/1.0/warehouses/abc".to_string()),
            ("auth", "token".to_string()),
            ("token", "dapi-secret-value-1".to_string()),
            ("action", "save".to_string()),
        ]
    };
    let (status, body) = post(fields("wrong")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("security token") && body.contains("Nothing was changed"), "{body}");
    let acme = s.store.tenant("acme").await.unwrap();
    assert!(s.store.connections(acme).await.unwrap().is_empty());

    // A bad field is named inline, and the typed token is not sent back in clear.
    let mut bad = fields(&csrf);
    bad[3].1 = "/sql/1.0/clusters/0123-456789-abcdefgh".into();
    let (status, body) = post(bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains(r#"id="http_path-error""#) && body.contains("HTTP path:"), "{body}");
    assert!(!body.contains("dapi-secret-value-1"), "a typed token never comes back in clear");
    assert!(body.contains("The token you entered is kept for Save"));

    // Saved: sealed in the store, shown only as "set on".
    let (status, _) = post(fields(&csrf)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let saved = s.store.connections(acme).await.unwrap();
    assert_eq!(saved.len(), 1);
    assert!(!saved[0].sealed_secret.as_deref().unwrap().contains("dapi-secret-value-1"));
    let (_, _, body) = get(&s.base, "/settings/integrations/databricks?saved=1", Some(&session)).await;
    assert!(body.contains("A token is set on ") && !body.contains("dapi-secret-value-1"), "{body}");

    // An admin cannot open the mapping editor, nor choose another tenant.
    let (status, _, body) = get(&s.base, "/settings/integrations/databricks/pipelines/x/mapping", Some(&session)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("Only a Trig representative can open this"), "{body}");
    assert_eq!(get(&s.base, "/tenants", Some(&session)).await.0, StatusCode::FORBIDDEN);

    // Unknown pages: 404 with a way home; the API's stay JSON.
    let (status, h, body) = get(&s.base, "/settings/nothing", Some(&session)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(h.get("content-type").unwrap().to_str().unwrap().starts_with("text/html"));
    assert!(body.contains(r#"href="/settings/integrations/databricks""#));

    // Sign out ends the session in the store: the old cookie is no longer good.
    let r = client()
        .post(format!("{}/logout", s.base))
        .header("cookie", format!("trig_session={session}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!((r.status(), r.headers().get(LOCATION).unwrap().to_str().unwrap()), (StatusCode::SEE_OTHER, "/login?signed_out=1"));
    let (status, _, body) = get(&s.base, "/settings/integrations/databricks", Some(&session)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("You were signed out"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_and_a_used_login_link_get_a_clear_page() {
    let s = start("pages-expiry").await;
    let admin = token(s.store.as_ref(), "acme", "admin").await;
    let session = sign_in(&s.base, &admin).await;
    // A session made 9 hours ago has expired (sessions last 8).
    let t = s.store.token_by_hash(&trig_server::auth::token_hash(&admin)).await.unwrap().unwrap();
    let old = trig_server::pages::session::random_secret().unwrap();
    let now = chrono::Utc::now().timestamp_micros();
    let hour = 3_600_000_000;
    s.store
        .create_web_session(&trig_server::auth::token_hash(&old), "session", t.id, Some(t.tenant), now - 9 * hour, now - hour)
        .await
        .unwrap();
    let (status, _, body) = get(&s.base, "/settings/integrations/databricks", Some(&old)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Your session expired at") && body.contains("nothing you saved is lost"), "{body}");
    assert!(!body.to_lowercase().contains("panick"));
    // The live one still works.
    assert_eq!(get(&s.base, "/settings/integrations/databricks", Some(&session)).await.0, StatusCode::OK);

    // A login link signs in once.
    let code = trig_server::pages::session::random_secret().unwrap();
    s.store.create_web_session(&trig_server::auth::token_hash(&code), "link", t.id, None, now, now + hour).await.unwrap();
    let (status, h, _) = get(&s.base, &format!("/login/link/{code}"), None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(cookie_of(&h, "trig_session").is_some());
    let (status, _, body) = get(&s.base, &format!("/login/link/{code}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("This login link was used already or has expired"), "{body}");
}
