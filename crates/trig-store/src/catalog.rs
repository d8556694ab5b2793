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
}
