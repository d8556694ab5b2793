//! API tokens and roles.
//!
//! A token is `trig_` and 43 characters of base64url (32 random bytes); the
//! store keeps its SHA-256 only, so a leaked database holds no usable token
//! (the tokens are random, so a plain hash is enough: there is nothing to
//! guess). Every request names its token; what it may do is its role's:
//!
//! - **admin**, a customer's administrator: their own tenant only;
//! - **representative**, Trig's: every tenant, and what configures them.
//!
//! Another tenant's resource answers exactly as one that does not exist.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};
use trig_store::{Catalog, TenantId};

use crate::Error;

const TOKEN_PREFIX: &str = "trig_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A customer's administrator: their own tenant.
    Admin,
    /// A Trig representative: every tenant.
    Representative,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, Error> {
        match s {
            "admin" => Ok(Role::Admin),
            "representative" => Ok(Role::Representative),
            other => Err(Error::Invalid { field: "role".into(), message: format!("`{other}` is not a role; use admin or representative") }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Representative => "representative",
        }
    }
}

/// A new token: shown once, stored as its hash.
pub fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Key { what: "for a token".into(), problem: format!("has no randomness: {e}") })?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is asking: a live token's tenant and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: i64,
    pub tenant: TenantId,
    pub tenant_name: String,
    pub role: Role,
}

impl Principal {
    /// The principal of an `Authorization` header's value.
    pub async fn from_header(store: &dyn Catalog, header: Option<&str>) -> Result<Principal, Error> {
        let token = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).ok_or(Error::Unauthorized)?;
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 100 {
            return Err(Error::Unauthorized);
        }
        let t = store.token_by_hash(&token_hash(token)).await.map_err(Error::from_store)?.ok_or(Error::Unauthorized)?;
        Ok(Principal {
            token_id: t.id,
            tenant: t.tenant,
            tenant_name: t.tenant_name,
            role: Role::parse(&t.role).map_err(|_| Error::Unauthorized)?,
        })
    }

    /// Whether this principal sees tenant `name`: a representative sees every
    /// one, an admin their own; another tenant is "not found", never "forbidden".
    pub fn sees(&self, name: &str) -> Result<(), Error> {
        match self.role {
            Role::Representative => Ok(()),
            Role::Admin if self.tenant_name == name => Ok(()),
            Role::Admin => Err(Error::NotFound { what: format!("tenant `{name}`") }),
        }
    }

    /// Only a representative may `action`.
    pub fn representative(&self, action: &str) -> Result<(), Error> {
        match self.role {
            Role::Representative => Ok(()),
            Role::Admin => Err(Error::Forbidden { role: "admin", action: action.to_string() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("trig_") && a.len() == 5 + 43, "{a}");
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_eq!(token_hash(&a).len(), 64);
        assert!(!token_hash(&a).contains(&a[5..]));
    }

    #[test]
    fn an_admin_sees_its_tenant_only_and_another_is_not_found() {
        let p = Principal { token_id: 1, tenant: TenantId(1), tenant_name: "acme".into(), role: Role::Admin };
        assert!(p.sees("acme").is_ok());
        assert_eq!(p.sees("globex").unwrap_err().status(), axum::http::StatusCode::NOT_FOUND);
        assert_eq!(p.representative("create tenants").unwrap_err().status(), axum::http::StatusCode::FORBIDDEN);
        let r = Principal { role: Role::Representative, ..p };
        assert!(r.sees("globex").is_ok() && r.representative("create tenants").is_ok());
        assert!(Role::parse("owner").unwrap_err().to_string().contains("use admin or representative"));
    }
}
