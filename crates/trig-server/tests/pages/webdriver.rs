//! A small W3C WebDriver client over the reqwest the crate already builds:
//! a real Chromium (Debian's `chromium`) driven by Debian's `chromedriver`.
//! Only what the page tests use: navigate, find (by CSS, by label), type,
//! click, read text and source, screenshots.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether this machine can run the browser tests; with `CI` set, a missing browser fails them.
pub fn available() -> bool {
    let there = std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !there {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser tests need {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium and chromium-driver); .ci/run installs them"
        );
        eprintln!("skipping the browser test: install Debian's chromium and chromium-driver to run it");
    }
    there
}

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
    profile: PathBuf,
    pub shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session first, so chromedriver closes Chromium: killing the
        // driver alone would leave the browser running. Blocking (a drop
        // cannot await), over a plain socket, bounded by timeouts.
        let _ = self.end_session();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    fn end_session(&self) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.set_write_timeout(Some(Duration::from_secs(10)))?;
        write!(c, "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.session)?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)?;
        Ok(())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; screenshots go to `shots`.
    pub async fn start(shots: PathBuf) -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.json::<Value>().await.ok().is_some_and(|v| v["value"]["ready"] == json!(true))
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("trig-chromium-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&shots).unwrap();
        // As this machine class's notes say: no background networking (its connections are refused here).
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1400",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let r: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {r}")).to_string();
        Browser { driver, http, session, base, profile, shots }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(e) = r["value"].get("error") {
            panic!("WebDriver {path}: {e}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    pub async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or("").to_string()
    }

    pub async fn title(&self) -> String {
        self.cmd(reqwest::Method::GET, "/title", None).await.as_str().unwrap_or("").to_string()
    }

    pub async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or("").to_string()
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        let body = self.find("body").await;
        self.text_of(&body).await
    }

    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.cmd(reqwest::Method::POST, "/elements", Some(json!({"using": "css selector", "value": css}))).await;
        v.as_array().map(|a| a.iter().filter_map(|e| e[ELEMENT].as_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    pub async fn find(&self, css: &str) -> String {
        let all = self.find_all(css).await;
        all.into_iter().next().unwrap_or_else(|| panic!("no element matches `{css}`"))
    }

    /// The input a `<label>` with exactly this text is for: proves the label is tied to it.
    pub async fn by_label(&self, label: &str) -> String {
        let xpath = format!("//label[normalize-space(.)='{label}']");
        let v = self.cmd(reqwest::Method::POST, "/elements", Some(json!({"using": "xpath", "value": xpath}))).await;
        let l = v
            .as_array()
            .and_then(|a| a.first())
            .and_then(|e| e[ELEMENT].as_str())
            .unwrap_or_else(|| panic!("no label `{label}`"))
            .to_string();
        let id = self.attr(&l, "for").await.unwrap_or_else(|| panic!("the label `{label}` is for no input"));
        self.find(&format!("#{id}")).await
    }

    pub async fn attr(&self, el: &str, name: &str) -> Option<String> {
        self.cmd(reqwest::Method::GET, &format!("/element/{el}/attribute/{name}"), None).await.as_str().map(str::to_string)
    }

    pub async fn text_of(&self, el: &str) -> String {
        self.cmd(reqwest::Method::GET, &format!("/element/{el}/text"), None).await.as_str().unwrap_or("").to_string()
    }

    pub async fn clear(&self, el: &str) {
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/clear"), Some(json!({}))).await;
    }

    pub async fn type_into(&self, el: &str, text: &str) {
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/value"), Some(json!({"text": text}))).await;
    }

    /// Empties the labelled field and types `text` into it.
    pub async fn fill(&self, label: &str, text: &str) {
        let el = self.by_label(label).await;
        self.clear(&el).await;
        if !text.is_empty() {
            self.type_into(&el, text).await;
        }
    }

    pub async fn click(&self, el: &str) {
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/click"), Some(json!({}))).await;
    }

    /// Clicks the button whose text is exactly `text` (every button here
    /// submits a form) and waits until the next page has replaced this one.
    pub async fn press(&self, text: &str) {
        let before = self.find("html").await;
        self.click_on("button", text).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.find_all("html").await.first() == Some(&before) {
            assert!(Instant::now() < deadline, "pressing `{text}` led to no new page");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Clicks the `tag` element whose text is exactly `text` (a `summary` opens its details).
    pub async fn click_on(&self, tag: &str, text: &str) {
        let xpath = format!("//{tag}[normalize-space(.)='{text}']");
        let v = self.cmd(reqwest::Method::POST, "/elements", Some(json!({"using": "xpath", "value": xpath}))).await;
        let b = v
            .as_array()
            .and_then(|a| a.first())
            .and_then(|e| e[ELEMENT].as_str())
            .unwrap_or_else(|| panic!("no {tag} `{text}`"))
            .to_string();
        self.click(&b).await;
    }

    /// Chooses the option of value `value` in the select labelled `label`.
    pub async fn choose(&self, label: &str, value: &str) {
        let select = self.by_label(label).await;
        let id = self.attr(&select, "id").await.unwrap();
        let opt = self.find(&format!("#{id} option[value='{value}']")).await;
        self.click(&opt).await;
    }

    /// Writes a PNG of the whole page (the window grown to the page's height
    /// for the shot, then put back) to `shots/NAME.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let height = self
            .cmd(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({"script": "return document.documentElement.scrollHeight", "args": []})),
            )
            .await
            .as_u64()
            .unwrap_or(1400);
        let rect = self.cmd(reqwest::Method::GET, "/window/rect", None).await;
        // The window's frame is part of its height: grow it by what the viewport lacks.
        let inner = self
            .cmd(reqwest::Method::POST, "/execute/sync", Some(json!({"script": "return window.innerHeight", "args": []})))
            .await
            .as_u64()
            .unwrap_or(1400);
        let frame = rect["height"].as_u64().unwrap_or(1400).saturating_sub(inner);
        let tall = (height + frame).clamp(600, 8000);
        self.cmd(reqwest::Method::POST, "/window/rect", Some(json!({"width": rect["width"], "height": tall}))).await;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        self.cmd(reqwest::Method::POST, "/window/rect", Some(json!({"width": rect["width"], "height": rect["height"]}))).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}
