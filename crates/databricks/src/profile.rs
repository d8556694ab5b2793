//! Databricks' configuration profiles: the `~/.databrickscfg` file the
//! Databricks CLI and SDKs share (`DATABRICKS_CONFIG_FILE` moves it,
//! `DATABRICKS_CONFIG_PROFILE` picks a profile), so a connection can say
//! `profile = "NAME"` instead of repeating the host and credentials.
//!
//! The file is INI: `[NAME]` sections of `key = value` lines, `#` and `;`
//! comments; values of `[DEFAULT]` apply to every profile that lacks them,
//! as in the SDKs. Only what Trig needs is read: `host`, `token`,
//! `client_id`, `client_secret`, and `warehouse_id` when present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// A profile's settings.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub file: PathBuf,
    pub host: Option<String>,
    pub token: Option<Secret>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub warehouse_id: Option<String>,
}

/// Why a profile could not be read. Messages name the file and, for an
/// unknown profile, the profiles it holds; never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read the Databricks config file {file}: {reason}; create it with `databricks configure` or set DATABRICKS_CONFIG_FILE")]
    Unreadable { file: String, reason: String },
    #[error("the Databricks config file {file} has no profile [{name}]; it has: {known}")]
    Unknown { file: String, name: String, known: String },
    #[error("the Databricks config file {file}, line {line}: {reason}")]
    Malformed { file: String, line: usize, reason: String },
    #[error("no home folder to find ~/.databrickscfg in; set DATABRICKS_CONFIG_FILE")]
    NoHome,
}

/// Where the SDKs look: `DATABRICKS_CONFIG_FILE`, else `~/.databrickscfg`.
pub fn default_file() -> Result<PathBuf, ProfileError> {
    if let Some(f) = std::env::var_os("DATABRICKS_CONFIG_FILE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(f));
    }
    let home =
        std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).filter(|v| !v.is_empty()).ok_or(ProfileError::NoHome)?;
    Ok(Path::new(&home).join(".databrickscfg"))
}

/// Reads profile `name` from `file`.
pub fn load(file: &Path, name: &str) -> Result<Profile, ProfileError> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| ProfileError::Unreadable { file: shown.clone(), reason: e.to_string() })?;
    let sections = parse(&text).map_err(|(line, reason)| ProfileError::Malformed { file: shown.clone(), line, reason })?;
    let Some(own) = sections.get(name) else {
        let known: Vec<&str> = sections.keys().map(String::as_str).filter(|s| *s != "DEFAULT" || sections.len() == 1).collect();
        return Err(ProfileError::Unknown {
            file: shown,
            name: name.to_string(),
            known: if known.is_empty() { "no profiles".into() } else { known.join(", ") },
        });
    };
    let default = sections.get("DEFAULT");
    let get = |k: &str| own.get(k).or_else(|| default.and_then(|d| d.get(k))).cloned().filter(|v| !v.is_empty());
    Ok(Profile {
        name: name.to_string(),
        file: file.to_path_buf(),
        host: get("host"),
        token: get("token").map(Secret::new),
        client_id: get("client_id"),
        client_secret: get("client_secret").map(Secret::new),
        warehouse_id: get("warehouse_id"),
    })
}

type Sections = BTreeMap<String, BTreeMap<String, String>>;

fn parse(text: &str) -> Result<Sections, (usize, String)> {
    let mut out: Sections = BTreeMap::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or((i + 1, "a section header must end with `]`".to_string()))?.trim();
            current = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            // Not quoted back: the line may hold a secret.
            return Err((i + 1, "expected `key = value`".into()));
        };
        let section = current.clone().ok_or((i + 1, "a setting before any [profile] header".to_string()))?;
        out.entry(section).or_default().insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str, name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("databrickscfg-{name}-{}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn profiles_read_as_the_sdks_read_them() {
        let f = file(
            "; comment\n[DEFAULT]\nhost = https://default.cloud.databricks.com\n\n[acme]\ntoken = dapi-acme-secret\n# x\n[sp]\nhost = https://sp.cloud.databricks.com\nclient_id = 8c1c\nclient_secret = dose-sp-secret\nwarehouse_id = abc\n",
            "ok",
        );
        let acme = load(&f, "acme").unwrap();
        assert_eq!(acme.host.as_deref(), Some("https://default.cloud.databricks.com"), "DEFAULT fills in");
        assert_eq!(acme.token.as_ref().map(Secret::expose), Some("dapi-acme-secret"));
        let sp = load(&f, "sp").unwrap();
        assert_eq!((sp.client_id.as_deref(), sp.warehouse_id.as_deref()), (Some("8c1c"), Some("abc")));
        assert!(!format!("{sp:?}").contains("dose-sp-secret"), "secrets stay redacted");
        let e = load(&f, "nope").unwrap_err().to_string();
        assert!(e.contains("no profile [nope]") && e.contains("acme, sp") && e.contains(&f.display().to_string()), "{e}");
        assert!(!e.contains("secret"), "{e}");
        std::fs::remove_file(f).ok();
    }

    #[test]
    fn a_broken_file_is_named_without_its_values() {
        let f = file("[a]\ndapi-pasted-alone\n", "bad");
        let e = load(&f, "a").unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("dapi-pasted"), "{e}");
        let e = load(Path::new("/nonexistent/databrickscfg"), "a").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/databrickscfg") && e.contains("databricks configure"), "{e}");
        std::fs::remove_file(f).ok();
    }
}
