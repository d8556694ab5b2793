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
    /// The alert webhook, sealed; `None` when there is none.
    #[serde(skip)]
    pub webhook: Option<String>,
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

/// A signed-in page session, found by its cookie's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// The API token it signed in with (a revoked token ends its sessions).
    pub token: TokenInfo,
    /// The tenant a representative chose to work on.
    pub tenant: Option<(TenantId, String)>,
    pub created_at: Micros,
    /// Past this it is no session (the caller says so: the page explains, the row goes).
    pub expires_at: Micros,
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

/// A pipeline as the service schedules it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineRecord {
    pub key: crate::PipelineKey,
    pub tenant_name: String,
    pub name: String,
    /// `api` or `config`; `None` for a pipeline only the CLI has run (no definition here).
    pub origin: Option<String>,
    /// The config file's `[pipelines.NAME]` keys as JSON; `None` when deleted or never defined here.
    pub definition: Option<serde_json::Value>,
    pub defined_at: Option<Micros>,
    pub next_run_at: Option<Micros>,
    /// A run asked for and not started yet: `sync` or `full_refresh`.
    pub requested: Option<String>,
    /// The run id that request was answered with.
    pub requested_run_id: Option<String>,
    /// Failures in a row since the last success.
    pub failures: i64,
    pub failing_since: Option<Micros>,
    /// The last failure: `{kind, message, hint}`.
    pub last_error: Option<serde_json::Value>,
    pub paused_reason: Option<String>,
    pub paused_at: Option<Micros>,
    /// Who holds the lease now (a run is running), and until when.
    pub holder: Option<String>,
    pub lease_until: Option<Micros>,
}

/// A pipeline definition to store.
#[derive(Debug, Clone)]
pub struct PipelineWrite {
    pub origin: String,
    pub definition: serde_json::Value,
    pub actor: String,
    /// `replaced` or `changed`; a new definition is `created`.
    pub action: String,
    /// When a newly defined pipeline first runs (its backfill).
    pub first_run_at: Micros,
}

/// What a run's end does to the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// When the run ended (the scheduler's clock): a failure streak's start, a pause's time.
    pub at: Micros,
    pub next_run_at: Micros,
    /// `None`: the run succeeded (failures reset); else the error `{kind, message, hint}`.
    pub error: Option<serde_json::Value>,
    /// Pause the pipeline with this reason (until a change or by hand).
    pub pause: Option<String>,
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

    /// Changes a tenant's name for people and its alert webhook (sealed; `Some(None)` removes it).
    async fn update_tenant(&self, tenant: TenantId, display_name: Option<&str>, webhook: Option<Option<&str>>) -> Result<(), Error>;

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

    /// Records that the coming expiry `expiry` of a connection's token was
    /// warned about; `true` only for the first caller for that expiry (one alert, whatever the processes).
    async fn warn_expiry_once(&self, tenant: TenantId, connection: &str, expiry: Micros) -> Result<bool, Error>;

    /// Replaces a sealed secret if it is still `old` (a change in between wins), recording the rotation.
    async fn reseal(&self, connection_id: i64, old: &str, new: &str, actor: &str) -> Result<bool, Error>;

    /// Defines (or redefines) a pipeline, recording the change; whether it is newly defined.
    /// A change un-pauses it; a new definition is due at `first_run_at`.
    async fn put_pipeline(&self, tenant: TenantId, name: &str, w: PipelineWrite) -> Result<(PipelineRecord, bool), Error>;

    async fn pipeline_record(&self, tenant: TenantId, name: &str) -> Result<Option<PipelineRecord>, Error>;

    /// A tenant's defined pipelines, by name.
    async fn pipeline_records(&self, tenant: TenantId) -> Result<Vec<PipelineRecord>, Error>;

    /// Removes a pipeline's definition (its rows and runs stay), recording the change.
    async fn delete_pipeline(&self, tenant: TenantId, name: &str, actor: &str) -> Result<bool, Error>;

    /// Asks for a run (`sync` or `full_refresh`) before any scheduled one, to
    /// run as `run_id`; the request and run id it will run under (an earlier
    /// request not started yet absorbs this one; a full refresh is not
    /// downgraded), `None` when the pipeline is not defined.
    async fn request_run(&self, tenant: TenantId, name: &str, what: &str, run_id: &str) -> Result<Option<(String, String)>, Error>;

    /// Defined, unpaused pipelines of every tenant that are due at `now` (asked
    /// for, or scheduled at or before it) and not leased: requested ones first,
    /// then the longest overdue.
    async fn due_pipelines(&self, now: Micros, limit: usize) -> Result<Vec<PipelineRecord>, Error>;

    /// When the next scheduled run of any defined, unpaused pipeline that no run
    /// holds now is due (a scheduler sleeps until then).
    async fn next_due(&self, now: Micros) -> Result<Option<Micros>, Error>;

    /// A run starts: the request it serves (if it is still the one asked for) is taken.
    async fn take_request(&self, pipeline: crate::PipelineKey, requested: &str) -> Result<(), Error>;

    /// A run ended: its next time, its failure (or success) and maybe a pause.
    /// Returns the failures in a row and whether it was paused, before this outcome
    /// (read in the same transaction: the transition it makes is known once).
    async fn record_outcome(&self, pipeline: crate::PipelineKey, outcome: &Outcome) -> Result<(i64, bool), Error>;

    /// Takes a free slot of `warehouse` (one of `slots`) for `holder` until `until`; `None` when all are held.
    async fn claim_warehouse_slot(
        &self,
        warehouse: &str,
        slots: i64,
        holder: &str,
        now: Micros,
        until: Micros,
    ) -> Result<Option<i64>, Error>;

    /// Extends a held slot; `false` when it is no longer `holder`'s.
    async fn extend_warehouse_slot(&self, warehouse: &str, slot: i64, holder: &str, until: Micros) -> Result<bool, Error>;

    /// Gives a slot back.
    async fn release_warehouse_slot(&self, warehouse: &str, slot: i64, holder: &str) -> Result<(), Error>;

    /// Un-pauses a pipeline by hand, recording who; `false` when it was not paused.
    async fn unpause(&self, tenant: TenantId, name: &str, actor: &str) -> Result<bool, Error>;

    /// One pipeline's quarantined rows after the row `after` (an id), oldest first: `(id, json)`.
    async fn quarantine_of(&self, pipeline: crate::PipelineKey, after: i64, limit: usize) -> Result<Vec<(i64, serde_json::Value)>, Error>;

    /// Keeps a page sign-in by its secret's hash: `kind` `session` (a cookie)
    /// or `link` (a one-time login link). Rows past their expiry go at the same time.
    async fn create_web_session(
        &self,
        hash: &str,
        kind: &str,
        token_id: i64,
        tenant: Option<TenantId>,
        now: Micros,
        expires_at: Micros,
    ) -> Result<(), Error>;

    /// The session of a cookie's hash, expired or not (the caller tells which),
    /// `None` when there is none or its token was revoked.
    async fn web_session(&self, hash: &str) -> Result<Option<WebSession>, Error>;

    /// Uses up a one-time login link: its token when the link is live (once only).
    async fn redeem_login_link(&self, hash: &str, now: Micros) -> Result<Option<TokenInfo>, Error>;

    /// The tenant a representative's session works on.
    async fn set_web_session_tenant(&self, hash: &str, tenant: TenantId) -> Result<(), Error>;

    /// Signs a session out (or forgets an expired one).
    async fn end_web_session(&self, hash: &str) -> Result<(), Error>;
}

const PIPELINE: &str = "SELECT p.id, p.tenant_id, t.name, p.name, p.origin, p.definition, p.defined_at, p.next_run_at, p.requested,
        p.failures, p.failing_since, p.last_error, p.paused_reason, p.paused_at, p.holder, p.lease_until, p.requested_run_id
    FROM pipelines p JOIN tenants t ON t.id = p.tenant_id";

fn pipeline(r: &Row) -> PipelineRecord {
    let json = |i: usize| r.opt_text(i).and_then(|v| serde_json::from_str(&v).ok());
    PipelineRecord {
        key: crate::PipelineKey { tenant: TenantId(r.int(1)), pipeline: crate::PipelineId(r.int(0)) },
        tenant_name: r.text(2),
        name: r.text(3),
        origin: r.opt_text(4),
        definition: json(5),
        defined_at: r.opt_int(6),
        next_run_at: r.opt_int(7),
        requested: r.opt_text(8),
        failures: r.int(9),
        failing_since: r.opt_int(10),
        last_error: json(11),
        paused_reason: r.opt_text(12),
        paused_at: r.opt_int(13),
        holder: r.opt_text(14),
        lease_until: r.opt_int(15),
        requested_run_id: r.opt_text(16),
    }
}

fn pipeline_named(db: &mut dyn Db, t: TenantId, name: &str) -> Result<Option<PipelineRecord>, Error> {
    Ok(db.query_opt(&format!("{PIPELINE} WHERE p.tenant_id = $1 AND p.name = $2"), &[t.0.into(), name.into()])?.map(|r| pipeline(&r)))
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

const TENANT: &str = "SELECT id, name, COALESCE(display_name, name), created_at, webhook FROM tenants";
const TOKEN: &str =
    "SELECT k.id, k.tenant_id, t.name, k.role, k.label, k.created_at, k.revoked_at FROM api_tokens k JOIN tenants t ON t.id = k.tenant_id";

fn tenant(r: &Row) -> TenantInfo {
    TenantInfo { id: TenantId(r.int(0)), name: r.text(1), display_name: r.text(2), created_at: r.int(3), webhook: r.opt_text(4) }
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

    async fn update_tenant(&self, t: TenantId, display_name: Option<&str>, webhook: Option<Option<&str>>) -> Result<(), Error> {
        let display = display_name.map(str::to_string);
        let (set_webhook, webhook) = (webhook.is_some(), webhook.flatten().map(str::to_string));
        self.db(true, move |db| {
            if let Some(d) = &display {
                db.execute("UPDATE tenants SET display_name = $1 WHERE id = $2", &[d.into(), t.0.into()])?;
            }
            if set_webhook {
                db.execute("UPDATE tenants SET webhook = $1 WHERE id = $2", &[webhook.as_deref().into(), t.0.into()])?;
            }
            Ok(())
        })
        .await
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
            let now = now_micros();
            let config = w.config.to_string();
            let secret_at = w.sealed_secret.as_ref().map(|_| now);
            // Insert if new (several processes may load one config file at once), else update.
            let inserted = db.execute(
                "INSERT INTO connections (tenant_id, name, origin, config, secret, secret_changed_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT DO NOTHING",
                &[
                    t.0.into(),
                    (&name).into(),
                    (&w.origin).into(),
                    (&config).into(),
                    w.sealed_secret.as_deref().into(),
                    secret_at.into(),
                    now.into(),
                ],
            )? > 0;
            let old = if inserted {
                None
            } else {
                let o = db
                    .query_opt(&format!("{CONNECTION} WHERE tenant_id = $1 AND name = $2"), &[t.0.into(), (&name).into()])?
                    .map(|r| connection(&r))
                    .ok_or_else(|| Error::Database("a connection that exists cannot be read".into()))?;
                db.execute(
                    "UPDATE connections SET origin = $1, config = $2, secret = COALESCE($3, secret),
                       secret_changed_at = COALESCE($4, secret_changed_at), updated_at = $5 WHERE id = $6",
                    &[(&w.origin).into(), (&config).into(), w.sealed_secret.as_deref().into(), secret_at.into(), now.into(), o.id.into()],
                )?;
                Some(o)
            };
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

    async fn warn_expiry_once(&self, t: TenantId, connection: &str, expiry: Micros) -> Result<bool, Error> {
        let connection = connection.to_string();
        self.db(true, move |db| {
            Ok(db.execute(
                "UPDATE connections SET expiry_warned = $1 WHERE tenant_id = $2 AND name = $3 AND (expiry_warned IS NULL OR expiry_warned <> $1)",
                &[expiry.into(), t.0.into(), (&connection).into()],
            )? > 0)
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

    async fn put_pipeline(&self, t: TenantId, name: &str, w: PipelineWrite) -> Result<(PipelineRecord, bool), Error> {
        let name = name.to_string();
        self.db(true, move |db| {
            let now = now_micros();
            db.execute(
                "INSERT INTO pipelines (tenant_id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[t.0.into(), (&name).into(), now.into()],
            )?;
            let old = pipeline_named(db, t, &name)?.ok_or_else(|| Error::NotFound { what: format!("tenant {}", t.0) })?;
            let created = old.definition.is_none();
            let same = old.definition.as_ref() == Some(&w.definition) && old.origin.as_deref() == Some(w.origin.as_str());
            if !same {
                let definition = w.definition.to_string();
                // A change un-pauses (the cause may be fixed); a new definition is due at once.
                db.execute(
                    "UPDATE pipelines SET next_run_at = CASE WHEN definition IS NULL THEN $4 ELSE next_run_at END,
                       definition = $1, origin = $2, defined_at = $3, paused_reason = NULL, paused_at = NULL WHERE id = $5",
                    &[(&definition).into(), (&w.origin).into(), now.into(), w.first_run_at.into(), old.key.pipeline.0.into()],
                )?;
                let action = if created { "created" } else { w.action.as_str() };
                record_change(db, t, "pipeline", &name, &w.actor, action, old.definition.as_ref(), Some(&w.definition), None)?;
            }
            let now_row = pipeline_named(db, t, &name)?.ok_or_else(|| Error::Database("a pipeline just written cannot be read".into()))?;
            Ok((now_row, created))
        })
        .await
    }

    async fn pipeline_record(&self, t: TenantId, name: &str) -> Result<Option<PipelineRecord>, Error> {
        let name = name.to_string();
        self.db(false, move |db| pipeline_named(db, t, &name)).await
    }

    async fn pipeline_records(&self, t: TenantId) -> Result<Vec<PipelineRecord>, Error> {
        self.db(false, move |db| {
            let rows =
                db.query(&format!("{PIPELINE} WHERE p.tenant_id = $1 AND p.definition IS NOT NULL ORDER BY p.name"), &[t.0.into()])?;
            Ok(rows.iter().map(pipeline).collect())
        })
        .await
    }

    async fn delete_pipeline(&self, t: TenantId, name: &str, actor: &str) -> Result<bool, Error> {
        let (name, actor) = (name.to_string(), actor.to_string());
        self.db(true, move |db| {
            let Some(old) = pipeline_named(db, t, &name)?.filter(|p| p.definition.is_some()) else { return Ok(false) };
            db.execute(
                "UPDATE pipelines SET definition = NULL, origin = NULL, next_run_at = NULL, requested = NULL, requested_run_id = NULL WHERE id = $1",
                &[old.key.pipeline.0.into()],
            )?;
            record_change(db, t, "pipeline", &name, &actor, "deleted", old.definition.as_ref(), None, None)?;
            Ok(true)
        })
        .await
    }

    async fn request_run(&self, t: TenantId, name: &str, what: &str, run_id: &str) -> Result<Option<(String, String)>, Error> {
        let (name, what, run_id) = (name.to_string(), what.to_string(), run_id.to_string());
        self.db(true, move |db| {
            let n = db.execute(
                "UPDATE pipelines SET requested = CASE WHEN requested = 'full_refresh' THEN requested ELSE $1 END,
                   requested_run_id = COALESCE(requested_run_id, $2)
                 WHERE tenant_id = $3 AND name = $4 AND definition IS NOT NULL",
                &[(&what).into(), (&run_id).into(), t.0.into(), (&name).into()],
            )?;
            if n == 0 {
                return Ok(None);
            }
            Ok(pipeline_named(db, t, &name)?.and_then(|p| Some((p.requested?, p.requested_run_id?))))
        })
        .await
    }

    async fn due_pipelines(&self, now: Micros, limit: usize) -> Result<Vec<PipelineRecord>, Error> {
        self.db(false, move |db| {
            let rows = db.query(
                &format!(
                    "{PIPELINE} WHERE p.definition IS NOT NULL AND p.paused_reason IS NULL
                       AND (p.requested IS NOT NULL OR p.next_run_at <= $1)
                       AND (p.holder IS NULL OR p.lease_until IS NULL OR p.lease_until < $1)
                     ORDER BY CASE WHEN p.requested IS NULL THEN 1 ELSE 0 END, p.next_run_at, p.id LIMIT $2"
                ),
                &[now.into(), (limit as i64).into()],
            )?;
            Ok(rows.iter().map(pipeline).collect())
        })
        .await
    }

    async fn next_due(&self, now: Micros) -> Result<Option<Micros>, Error> {
        self.db(false, move |db| {
            Ok(db
                .query_opt(
                    "SELECT MIN(next_run_at) FROM pipelines WHERE definition IS NOT NULL AND paused_reason IS NULL
                       AND (holder IS NULL OR lease_until IS NULL OR lease_until < $1)",
                    &[now.into()],
                )?
                .and_then(|r| r.opt_int(0)))
        })
        .await
    }

    async fn take_request(&self, p: crate::PipelineKey, requested: &str) -> Result<(), Error> {
        let requested = requested.to_string();
        self.db(true, move |db| {
            db.execute(
                "UPDATE pipelines SET requested = NULL, requested_run_id = NULL WHERE id = $1 AND requested = $2",
                &[p.pipeline.0.into(), (&requested).into()],
            )?;
            Ok(())
        })
        .await
    }

    async fn record_outcome(&self, p: crate::PipelineKey, o: &Outcome) -> Result<(i64, bool), Error> {
        let o = o.clone();
        self.db(true, move |db| {
            let now = o.at;
            let before = db
                .query_opt("SELECT failures, paused_reason FROM pipelines WHERE id = $1", &[p.pipeline.0.into()])?
                .map(|r| (r.int(0), r.opt_text(1).is_some()))
                .unwrap_or((0, false));
            match &o.error {
                None => db.execute(
                    "UPDATE pipelines SET next_run_at = $1, failures = 0, failing_since = NULL, last_error = NULL WHERE id = $2",
                    &[o.next_run_at.into(), p.pipeline.0.into()],
                )?,
                Some(e) => {
                    let e = e.to_string();
                    db.execute(
                        "UPDATE pipelines SET next_run_at = $1, failures = failures + 1, failing_since = COALESCE(failing_since, $2),
                           last_error = $3, paused_reason = COALESCE(CAST($4 AS TEXT), paused_reason),
                           paused_at = CASE WHEN CAST($4 AS TEXT) IS NULL THEN paused_at ELSE $2 END WHERE id = $5",
                        &[o.next_run_at.into(), now.into(), (&e).into(), o.pause.as_deref().into(), p.pipeline.0.into()],
                    )?
                }
            };
            Ok(before)
        })
        .await
    }

    async fn claim_warehouse_slot(
        &self,
        warehouse: &str,
        slots: i64,
        holder: &str,
        now: Micros,
        until: Micros,
    ) -> Result<Option<i64>, Error> {
        let (warehouse, holder) = (warehouse.to_string(), holder.to_string());
        self.db(true, move |db| {
            for slot in 0..slots {
                db.execute(
                    "INSERT INTO warehouse_slots (warehouse, slot) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[(&warehouse).into(), slot.into()],
                )?;
                // The condition is in the UPDATE itself: of two processes racing for one slot, the second finds it taken.
                let took = db.execute(
                    "UPDATE warehouse_slots SET holder = $1, until = $2
                     WHERE warehouse = $3 AND slot = $4 AND (holder IS NULL OR until IS NULL OR until < $5)",
                    &[(&holder).into(), until.into(), (&warehouse).into(), slot.into(), now.into()],
                )?;
                if took > 0 {
                    return Ok(Some(slot));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn extend_warehouse_slot(&self, warehouse: &str, slot: i64, holder: &str, until: Micros) -> Result<bool, Error> {
        let (warehouse, holder) = (warehouse.to_string(), holder.to_string());
        self.db(true, move |db| {
            Ok(db.execute(
                "UPDATE warehouse_slots SET until = $1 WHERE warehouse = $2 AND slot = $3 AND holder = $4",
                &[until.into(), (&warehouse).into(), slot.into(), (&holder).into()],
            )? > 0)
        })
        .await
    }

    async fn release_warehouse_slot(&self, warehouse: &str, slot: i64, holder: &str) -> Result<(), Error> {
        let (warehouse, holder) = (warehouse.to_string(), holder.to_string());
        self.db(true, move |db| {
            db.execute(
                "UPDATE warehouse_slots SET holder = NULL, until = NULL WHERE warehouse = $1 AND slot = $2 AND holder = $3",
                &[(&warehouse).into(), slot.into(), (&holder).into()],
            )?;
            Ok(())
        })
        .await
    }

    async fn unpause(&self, t: TenantId, name: &str, actor: &str) -> Result<bool, Error> {
        let (name, actor) = (name.to_string(), actor.to_string());
        self.db(true, move |db| {
            let Some(old) = pipeline_named(db, t, &name)?.filter(|p| p.paused_reason.is_some()) else { return Ok(false) };
            db.execute(
                "UPDATE pipelines SET paused_reason = NULL, paused_at = NULL, failures = 0, failing_since = NULL, next_run_at = $1 WHERE id = $2",
                &[now_micros().into(), old.key.pipeline.0.into()],
            )?;
            let note = format!("un-paused (it was paused: {})", old.paused_reason.unwrap_or_default());
            record_change(db, t, "pipeline", &name, &actor, "changed", None, None, Some(&note))?;
            Ok(true)
        })
        .await
    }

    async fn quarantine_of(&self, p: crate::PipelineKey, after: i64, limit: usize) -> Result<Vec<(i64, serde_json::Value)>, Error> {
        self.db(false, move |db| {
            let rows = db.query(
                "SELECT q.id, r.run_id, q.key, q.reason, q.row, q.at FROM quarantine q LEFT JOIN sync_runs r ON r.id = q.run
                 WHERE q.tenant_id = $1 AND q.pipeline_id = $2 AND q.id > $3 ORDER BY q.id LIMIT $4",
                &[p.tenant.0.into(), p.pipeline.0.into(), after.into(), (limit as i64).into()],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    let raw = r.text(4);
                    let row: serde_json::Value = serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw));
                    let v = serde_json::json!({
                        "run_id": r.opt_text(1), "key": r.opt_text(2), "reason": r.text(3), "row": row, "at": crate::time::rfc3339(r.int(5)),
                    });
                    (r.int(0), v)
                })
                .collect())
        })
        .await
    }

    async fn create_web_session(
        &self,
        hash: &str,
        kind: &str,
        token_id: i64,
        tenant: Option<TenantId>,
        now: Micros,
        expires_at: Micros,
    ) -> Result<(), Error> {
        let (hash, kind) = (hash.to_string(), kind.to_string());
        self.db(true, move |db| {
            db.execute("DELETE FROM web_sessions WHERE expires_at <= $1", &[now.into()])?;
            db.execute(
                "INSERT INTO web_sessions (hash, kind, token_id, tenant_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[(&hash).into(), (&kind).into(), token_id.into(), tenant.map(|t| t.0).into(), now.into(), expires_at.into()],
            )?;
            Ok(())
        })
        .await
    }

    async fn web_session(&self, hash: &str) -> Result<Option<WebSession>, Error> {
        let hash = hash.to_string();
        self.db(false, move |db| {
            let row = db.query_opt(
                "SELECT k.id, k.tenant_id, t.name, k.role, k.label, k.created_at, k.revoked_at, s.tenant_id, st.name, s.created_at, s.expires_at
                 FROM web_sessions s JOIN api_tokens k ON k.id = s.token_id JOIN tenants t ON t.id = k.tenant_id
                 LEFT JOIN tenants st ON st.id = s.tenant_id
                 WHERE s.hash = $1 AND s.kind = 'session' AND k.revoked_at IS NULL",
                &[(&hash).into()],
            )?;
            Ok(row.map(|r| WebSession {
                token: token(&r),
                tenant: r.opt_int(7).map(|id| (TenantId(id), r.text(8))),
                created_at: r.int(9),
                expires_at: r.int(10),
            }))
        })
        .await
    }

    async fn redeem_login_link(&self, hash: &str, now: Micros) -> Result<Option<TokenInfo>, Error> {
        let hash = hash.to_string();
        self.db(true, move |db| {
            let used = db.query_opt(
                "DELETE FROM web_sessions WHERE hash = $1 AND kind = 'link' RETURNING token_id, expires_at",
                &[(&hash).into()],
            )?;
            match used {
                Some(r) if r.int(1) > now => {
                    Ok(db.query_opt(&format!("{TOKEN} WHERE k.id = $1 AND k.revoked_at IS NULL"), &[r.int(0).into()])?.map(|r| token(&r)))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    async fn set_web_session_tenant(&self, hash: &str, tenant: TenantId) -> Result<(), Error> {
        let hash = hash.to_string();
        self.db(true, move |db| {
            db.execute("UPDATE web_sessions SET tenant_id = $1 WHERE hash = $2 AND kind = 'session'", &[tenant.0.into(), (&hash).into()])?;
            Ok(())
        })
        .await
    }

    async fn end_web_session(&self, hash: &str) -> Result<(), Error> {
        let hash = hash.to_string();
        self.db(true, move |db| {
            db.execute("DELETE FROM web_sessions WHERE hash = $1", &[(&hash).into()])?;
            Ok(())
        })
        .await
    }
}
