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
