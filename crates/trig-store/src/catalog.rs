//! The service's own records, written once for both stores: tenants as the
//! service lists them, and API tokens (kept as hashes only).
//!
//! Each backend offers one thing, a transaction as [`Db`] ([`Backend`]); the
//! [`Catalog`] methods are implemented once over it, for every backend.

use async_trait::async_trait;
use serde::Serialize;
use trig_model::TenantName;

use crate::rules::now_micros;
use crate::sql::{Db, Row};
use crate::{Error, Micros, TenantId};

/// A tenant as the service shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantInfo {
    pub id: TenantId,
    /// The tenant's name in paths and config files (`acme`).
    pub name: String,
    /// A name for people (`Acme Corp`); the name when none was given.
    pub display_name: String,
    pub created_at: Micros,
}

/// An API token's record; the token itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub tenant: TenantId,
    pub tenant_name: String,
    /// `admin` or `representative`.
    pub role: String,
    pub label: String,
    pub created_at: Micros,
    pub revoked_at: Option<Micros>,
}

/// A connection as the service keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionRecord {
    pub id: i64,
    pub tenant: TenantId,
    pub name: String,
    /// `api` (made through the API) or `config` (from the config file: read-only).
    pub origin: String,
    /// The connection's keys as JSON, without its secret.
    pub config: serde_json::Value,
    /// The secret, sealed (never in clear); `None` for a config file's connection.
    #[serde(skip)]
    pub sealed_secret: Option<String>,
    pub secret_changed_at: Option<Micros>,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// A connection to store.
#[derive(Debug, Clone)]
pub struct ConnectionWrite {
    pub origin: String,
    /// The keys as JSON, without the secret.
    pub config: serde_json::Value,
    /// A new sealed secret; `None` keeps the one stored.
    pub sealed_secret: Option<String>,
    /// Who changes it (a token's id and role, `config file`).
    pub actor: String,
    /// `replaced` (PUT) or `changed` (PATCH); a new connection is `created`.
    pub action: String,
}

/// One configuration change, for the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeRecord {
    pub id: i64,
    /// `connection` or `pipeline`.
    pub subject: String,
    pub name: String,
    pub actor: String,
    pub at: Micros,
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub note: Option<String>,
}

/// A sealed secret, for `secrets rotate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub connection_id: i64,
    pub tenant: TenantId,
    pub tenant_name: String,
    pub connection: String,
    pub sealed: String,
}

/// What a backend offers the catalog: `f` in one transaction (a write
/// transaction when `write`), committed when it returns `Ok`.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn db<T, F>(&self, write: bool, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Db) -> Result<T, Error> + Send + 'static;
}

/// The service's records. Every store has them.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Creates a tenant; [`Error::Exists`] when one has that name.
    async fn create_tenant(&self, name: &TenantName, display_name: Option<&str>) -> Result<TenantInfo, Error>;

    /// Every tenant, by name.
    async fn tenants(&self) -> Result<Vec<TenantInfo>, Error>;

    /// The tenant named `name`, if there is one.
    async fn tenant_info(&self, name: &str) -> Result<Option<TenantInfo>, Error>;

    /// Records a token of `role` for `tenant` by its hash.
    async fn create_token(&self, tenant: TenantId, role: &str, hash: &str, label: &str) -> Result<TokenInfo, Error>;

    /// Tokens (of one tenant, or all), oldest first, revoked ones included.
    async fn tokens(&self, tenant: Option<TenantId>) -> Result<Vec<TokenInfo>, Error>;

    /// Revokes a token; `false` when there is no such token or it was revoked already.
    async fn revoke_token(&self, id: i64) -> Result<bool, Error>;

    /// The live (unrevoked) token with this hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, Error>;

    /// Creates or replaces a connection, recording the change; whether it is new.
    async fn put_connection(&self, tenant: TenantId, name: &str, w: ConnectionWrite) -> Result<(ConnectionRecord, bool), Error>;

    async fn connection(&self, tenant: TenantId, name: &str) -> Result<Option<ConnectionRecord>, Error>;

    /// A tenant's connections, by name.
    async fn connections(&self, tenant: TenantId) -> Result<Vec<ConnectionRecord>, Error>;

    /// Deletes a connection, recording the change; `false` when there was none.
    async fn delete_connection(&self, tenant: TenantId, name: &str, actor: &str) -> Result<bool, Error>;

    /// The changes of one connection or pipeline, newest first.
    async fn changes(&self, tenant: TenantId, subject: &str, name: &str, limit: usize) -> Result<Vec<ChangeRecord>, Error>;

    /// Every sealed secret of every tenant.
    async fn sealed_secrets(&self) -> Result<Vec<SealedSecret>, Error>;

    /// Replaces a sealed secret if it is still `old` (a change in between wins), recording the rotation.
    async fn reseal(&self, connection_id: i64, old: &str, new: &str, actor: &str) -> Result<bool, Error>;
}

const CONNECTION: &str = "SELECT id, tenant_id, name, origin, config, secret, secret_changed_at, created_at, updated_at FROM connections";

fn connection(r: &Row) -> ConnectionRecord {
    ConnectionRecord {
        id: r.int(0),
        tenant: TenantId(r.int(1)),
        name: r.text(2),
        origin: r.text(3),
        config: serde_json::from_str(&r.text(4)).unwrap_or_default(),
        sealed_secret: r.opt_text(5),
        secret_changed_at: r.opt_int(6),
        created_at: r.int(7),
        updated_at: r.int(8),
    }
}

#[allow(clippy::too_many_arguments)]
fn record_change(
    db: &mut dyn Db,
    t: TenantId,
    subject: &str,
    name: &str,
    actor: &str,
    action: &str,
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
    note: Option<&str>,
) -> Result<(), Error> {
    let (before, after) = (before.map(|v| v.to_string()), after.map(|v| v.to_string()));
    db.execute(
        "INSERT INTO config_changes (tenant_id, subject, name, actor, at, action, before, after, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[t.0.into(), subject.into(), name.into(), actor.into(), now_micros().into(), action.into(), before.as_deref().into(), after.as_deref().into(), note.into()],
    )?;
    Ok(())
}

const TENANT: &str = "SELECT id, name, COALESCE(display_name, name), created_at FROM tenants";
const TOKEN: &str =
    "SELECT k.id, k.tenant_id, t.name, k.role, k.label, k.created_at, k.revoked_at FROM api_tokens k JOIN tenants t ON t.id = k.tenant_id";

fn tenant(r: &Row) -> TenantInfo {
    TenantInfo { id: TenantId(r.int(0)), name: r.text(1), display_name: r.text(2), created_at: r.int(3) }
}

fn token(r: &Row) -> TokenInfo {
    TokenInfo {
        id: r.int(0),
        tenant: TenantId(r.int(1)),
        tenant_name: r.text(2),
        role: r.text(3),
        label: r.text(4),
        created_at: r.int(5),
        revoked_at: r.opt_int(6),
    }
}

#[async_trait]
impl<B: Backend> Catalog for B {
    async fn create_tenant(&self, name: &TenantName, display_name: Option<&str>) -> Result<TenantInfo, Error> {
        let (name, display) = (name.as_str().to_string(), display_name.map(str::to_string));
        self.db(true, move |db| {
            let n = db.execute(
                "INSERT INTO tenants (name, display_name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[(&name).into(), display.as_deref().into(), now_micros().into()],
            )?;
            if n == 0 {
                return Err(Error::Exists { what: format!("tenant `{name}`") });
            }
            db.query_opt(&format!("{TENANT} WHERE name = $1"), &[(&name).into()])?
                .map(|r| tenant(&r))
                .ok_or_else(|| Error::Database("a tenant just created cannot be read".into()))
        })
        .await
    }

    async fn tenants(&self) -> Result<Vec<TenantInfo>, Error> {
        self.db(false, |db| Ok(db.query(&format!("{TENANT} ORDER BY name"), &[])?.iter().map(tenant).collect())).await
    }

    async fn tenant_info(&self, name: &str) -> Result<Option<TenantInfo>, Error> {
        let name = name.to_string();
        self.db(false, move |db| Ok(db.query_opt(&format!("{TENANT} WHERE name = $1"), &[(&name).into()])?.map(|r| tenant(&r)))).await
    }

    async fn create_token(&self, t: TenantId, role: &str, hash: &str, label: &str) -> Result<TokenInfo, Error> {
        let (role, hash, label) = (role.to_string(), hash.to_string(), label.to_string());
        self.db(true, move |db| {
            if db.query_opt("SELECT 1 FROM tenants WHERE id = $1", &[t.0.into()])?.is_none() {
                return Err(Error::NotFound { what: format!("tenant {}", t.0) });
            }
            let id = db
                .query_opt(
                    "INSERT INTO api_tokens (tenant_id, role, hash, label, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[t.0.into(), (&role).into(), (&hash).into(), (&label).into(), now_micros().into()],
                )?
                .map(|r| r.int(0))
                .ok_or_else(|| Error::Database("a token just created has no id".into()))?;
            db.query_opt(&format!("{TOKEN} WHERE k.id = $1"), &[id.into()])?
                .map(|r| token(&r))
                .ok_or_else(|| Error::Database("a token just created cannot be read".into()))
        })
        .await
    }

    async fn tokens(&self, t: Option<TenantId>) -> Result<Vec<TokenInfo>, Error> {
        self.db(false, move |db| {
            let rows = db.query(
                &format!("{TOKEN} WHERE (CAST($1 AS BIGINT) IS NULL OR k.tenant_id = $1) ORDER BY k.id"),
                &[t.map(|t| t.0).into()],
            )?;
            Ok(rows.iter().map(token).collect())
        })
        .await
    }

    async fn revoke_token(&self, id: i64) -> Result<bool, Error> {
        self.db(true, move |db| {
            Ok(db
                .execute("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", &[now_micros().into(), id.into()])?
                > 0)
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, Error> {
        let hash = hash.to_string();
        self.db(false, move |db| {
            Ok(db.query_opt(&format!("{TOKEN} WHERE k.hash = $1 AND k.revoked_at IS NULL"), &[(&hash).into()])?.map(|r| token(&r)))
        })
        .await
    }

    async fn put_connection(&self, t: TenantId, name: &str, w: ConnectionWrite) -> Result<(ConnectionRecord, bool), Error> {
        let name = name.to_string();
        self.db(true, move |db| {
            let old = db
                .query_opt(&format!("{CONNECTION} WHERE tenant_id = $1 AND name = $2"), &[t.0.into(), (&name).into()])?
                .map(|r| connection(&r));
            let now = now_micros();
            let config = w.config.to_string();
            let secret_at = w.sealed_secret.as_ref().map(|_| now);
            match &old {
                None => {
                    db.execute(
                        "INSERT INTO connections (tenant_id, name, origin, config, secret, secret_changed_at, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                        &[
                            t.0.into(),
                            (&name).into(),
                            (&w.origin).into(),
                            (&config).into(),
                            w.sealed_secret.as_deref().into(),
                            secret_at.into(),
                            now.into(),
                        ],
                    )?;
                }
                Some(o) => {
                    db.execute(
                        "UPDATE connections SET origin = $1, config = $2, secret = COALESCE($3, secret),
                           secret_changed_at = COALESCE($4, secret_changed_at), updated_at = $5 WHERE id = $6",
                        &[
                            (&w.origin).into(),
                            (&config).into(),
                            w.sealed_secret.as_deref().into(),
                            secret_at.into(),
                            now.into(),
                            o.id.into(),
                        ],
                    )?;
                }
            }
            let unchanged = old.as_ref().is_some_and(|o| o.config == w.config && w.sealed_secret.is_none() && o.origin == w.origin);
            if !unchanged {
                let action = if old.is_none() { "created" } else { w.action.as_str() };
                let note = w.sealed_secret.as_ref().map(|_| if old.is_none() { "the secret was set" } else { "the secret changed" });
                record_change(db, t, "connection", &name, &w.actor, action, old.as_ref().map(|o| &o.config), Some(&w.config), note)?;
            }
            let now_row = db
                .query_opt(&format!("{CONNECTION} WHERE tenant_id = $1 AND name = $2"), &[t.0.into(), (&name).into()])?
                .map(|r| connection(&r))
                .ok_or_else(|| Error::Database("a connection just written cannot be read".into()))?;
            Ok((now_row, old.is_none()))
        })
        .await
    }

    async fn connection(&self, t: TenantId, name: &str) -> Result<Option<ConnectionRecord>, Error> {
        let name = name.to_string();
        self.db(false, move |db| {
            Ok(db
                .query_opt(&format!("{CONNECTION} WHERE tenant_id = $1 AND name = $2"), &[t.0.into(), (&name).into()])?
                .map(|r| connection(&r)))
        })
        .await
    }

    async fn connections(&self, t: TenantId) -> Result<Vec<ConnectionRecord>, Error> {
        self.db(false, move |db| {
            Ok(db.query(&format!("{CONNECTION} WHERE tenant_id = $1 ORDER BY name"), &[t.0.into()])?.iter().map(connection).collect())
        })
        .await
    }

    async fn delete_connection(&self, t: TenantId, name: &str, actor: &str) -> Result<bool, Error> {
        let (name, actor) = (name.to_string(), actor.to_string());
        self.db(true, move |db| {
            let Some(old) = db
                .query_opt(&format!("{CONNECTION} WHERE tenant_id = $1 AND name = $2"), &[t.0.into(), (&name).into()])?
                .map(|r| connection(&r))
            else {
                return Ok(false);
            };
            db.execute("DELETE FROM connections WHERE id = $1", &[old.id.into()])?;
            record_change(db, t, "connection", &name, &actor, "deleted", Some(&old.config), None, None)?;
            Ok(true)
        })
        .await
    }

    async fn changes(&self, t: TenantId, subject: &str, name: &str, limit: usize) -> Result<Vec<ChangeRecord>, Error> {
        let (subject, name) = (subject.to_string(), name.to_string());
        self.db(false, move |db| {
            let rows = db.query(
                "SELECT id, subject, name, actor, at, action, before, after, note FROM config_changes
                 WHERE tenant_id = $1 AND subject = $2 AND name = $3 ORDER BY id DESC LIMIT $4",
                &[t.0.into(), (&subject).into(), (&name).into(), (limit as i64).into()],
            )?;
            let json = |v: Option<String>| v.and_then(|v| serde_json::from_str(&v).ok());
            Ok(rows
                .iter()
                .map(|r| ChangeRecord {
                    id: r.int(0),
                    subject: r.text(1),
                    name: r.text(2),
                    actor: r.text(3),
                    at: r.int(4),
                    action: r.text(5),
                    before: json(r.opt_text(6)),
                    after: json(r.opt_text(7)),
                    note: r.opt_text(8),
                })
                .collect())
        })
        .await
    }

    async fn sealed_secrets(&self) -> Result<Vec<SealedSecret>, Error> {
        self.db(false, |db| {
            let rows = db.query(
                "SELECT c.id, c.tenant_id, t.name, c.name, c.secret FROM connections c JOIN tenants t ON t.id = c.tenant_id
                 WHERE c.secret IS NOT NULL ORDER BY c.id",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| SealedSecret {
                    connection_id: r.int(0),
                    tenant: TenantId(r.int(1)),
                    tenant_name: r.text(2),
                    connection: r.text(3),
                    sealed: r.text(4),
                })
                .collect())
        })
        .await
    }

    async fn reseal(&self, id: i64, old: &str, new: &str, actor: &str) -> Result<bool, Error> {
        let (old, new, actor) = (old.to_string(), new.to_string(), actor.to_string());
        self.db(true, move |db| {
            let Some(row) =
                db.query_opt(&format!("{CONNECTION} WHERE id = $1 AND secret = $2"), &[id.into(), (&old).into()])?.map(|r| connection(&r))
            else {
                return Ok(false);
            };
            // The secret is the same; only its key changes: secret_changed_at stays.
            db.execute("UPDATE connections SET secret = $1 WHERE id = $2", &[(&new).into(), id.into()])?;
            record_change(
                db,
                row.tenant,
                "connection",
                &row.name,
                &actor,
                "secret_rotated",
                None,
                None,
                Some("sealed again under the current key"),
            )?;
            Ok(true)
        })
        .await
    }
}
