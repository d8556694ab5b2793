//! What the tests of every crate (and the benches) use to run on a real
//! PostgreSQL: the server they are given, and a fresh database per test,
//! dropped afterwards. Test-only (the `failpoints` feature).

use std::sync::atomic::{AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);

/// The server `TRIG_TEST_POSTGRES_URL` names (e.g.
/// `postgres://root@127.0.0.1:5432/test`); `None` outside CI when it is
/// unset (the caller's tests are skipped, saying how to enable them); a
/// panic with `CI` set, where the PostgreSQL tests must run.
pub fn postgres_server(what: &str) -> Option<String> {
    match std::env::var("TRIG_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(std::env::var_os("CI").is_none(), "CI is set but TRIG_TEST_POSTGRES_URL is not: the PostgreSQL tests must run in CI");
            eprintln!("skipped: set TRIG_TEST_POSTGRES_URL=postgres://root@127.0.0.1:5432/test to run {what} on PostgreSQL");
            None
        }
    }
}

/// Runs `sql` at `url`, on a thread of its own (the blocking client must
/// stay out of an async runtime's threads); panics with the server's words.
pub fn execute(url: &str, sql: &str) {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
        c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    })
    .join()
    .expect("the PostgreSQL call");
}

/// A fresh database on a server, dropped when this is.
#[derive(Debug)]
pub struct FreshDatabase {
    server: String,
    name: String,
    /// The database's URL.
    pub url: String,
}

impl FreshDatabase {
    /// Creates `{prefix}_{pid}_{n}` on `server` (a URL ending in `/DATABASE`).
    pub fn create(server: &str, prefix: &str) -> FreshDatabase {
        let name = format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let (base, _) = server.rsplit_once('/').expect("a PostgreSQL URL ending in /DATABASE");
        let url = format!("{base}/{name}");
        // Two statements: CREATE DATABASE cannot share an (implicit) transaction.
        execute(server, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        execute(server, &format!("CREATE DATABASE {name}"));
        FreshDatabase { server: server.to_string(), name, url }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&server, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        })
        .join();
    }
}
