//! Trig's domain vocabulary: the few words the config file, the store and
//! the sync engine must agree on, defined once (trig-notes: identity rules,
//! attribute tables). It depends on nothing of ours, so the store can use it
//! without knowing the config or Databricks.

use serde::Serialize;

/// How an events pipeline finds the person an event belongs to
/// (`user_id_kind`; trig-notes, identity rules and decision 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityRule {
    /// The identifier is an external user id: it matches existing people
    /// only; an event with an email (from a separate column) may match by
    /// email or create the person.
    ExternalId,
    /// The identifier is an email (trimmed, lower-cased): it matches or creates.
    Email,
}

impl IdentityRule {
    /// The config's and the store's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityRule::ExternalId => "external_id",
            IdentityRule::Email => "email",
        }
    }
}

/// What an attribute pipeline's rows are (trig-notes decision 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    People,
    Organisations,
}

impl Entity {
    /// The config's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::People => "people",
            Entity::Organisations => "organisations",
        }
    }
}

/// A tenant's name: a Trig customer account, as a config file (`tenant =
/// "acme"`) and the store name it. Lower-case letters, digits, `-` and `_`,
/// 1 to 63 characters, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TenantName(String);

impl TenantName {
    /// The tenant of a config that names none.
    pub const DEFAULT: &'static str = "default";

    /// Parses a tenant name; the error says what is allowed.
    pub fn parse(s: &str) -> Result<TenantName, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(TenantName(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a tenant name: use 1 to 63 lower-case letters, digits, `-` or `_`, starting with a letter or digit (e.g. \"acme\")"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantName {
    fn default() -> TenantName {
        TenantName(TenantName::DEFAULT.into())
    }
}

impl std::fmt::Display for TenantName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_checked() {
        assert_eq!(TenantName::parse("acme-eu_2").unwrap().as_str(), "acme-eu_2");
        for bad in ["", "Acme", "-acme", "acme corp", "ü", &"a".repeat(64)] {
            let e = TenantName::parse(bad).unwrap_err();
            assert!(e.contains("lower-case letters"), "{bad}: {e}");
        }
        assert_eq!(TenantName::default().as_str(), "default");
    }
}
