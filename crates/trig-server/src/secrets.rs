//! Secrets at rest: a customer's access token or OAuth client secret is
//! stored only as a ciphertext.
//!
//! ChaCha20-Poly1305 (an AEAD) under a 32-byte key from `TRIG_SECRET_KEY`
//! (base64). Each ciphertext is tagged with the id of its key, so after a key
//! change the old keys (`TRIG_SECRET_KEYS_OLD`, comma-separated) still
//! decrypt what they sealed until `trig-databricks secrets rotate` has
//! sealed everything again under the current key. A ciphertext is bound to
//! what it belongs to (the associated data, e.g. `acme/connections/prod/token`):
//! copied onto another row it does not open.
//!
//! Format: `trig:v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

use crate::Error;

/// The variable that holds the current key.
pub const KEY_VAR: &str = "TRIG_SECRET_KEY";
/// The variable that holds keys that only decrypt (comma-separated).
pub const OLD_KEYS_VAR: &str = "TRIG_SECRET_KEYS_OLD";
/// How to make a key, for every message that asks for one.
pub const HOW_TO_MAKE_A_KEY: &str = "make one with `head -c 32 /dev/urandom | base64` and set it as TRIG_SECRET_KEY";

const PREFIX: &str = "trig:v1:";
const NONCE_LEN: usize = 12;

/// One 32-byte key and its id.
#[derive(Clone)]
struct SealKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

impl SealKey {
    fn new(bytes: &[u8; 32]) -> SealKey {
        let digest = Sha256::new().chain_update(b"trig-secret-key-id\0").chain_update(bytes).finalize();
        let id = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        SealKey { id, cipher: ChaCha20Poly1305::new(Key::from_slice(bytes)) }
    }
}

/// Where the current key came from, for the log line that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `TRIG_SECRET_KEY`.
    Environment,
    /// A key file beside the SQLite store that was there already.
    File(PathBuf),
    /// A key file beside the SQLite store, made now.
    Created(PathBuf),
}

/// The current key and the old ones: seals with the first, opens with any.
#[derive(Clone)]
pub struct Keyring {
    current: SealKey,
    old: Vec<SealKey>,
    source: KeySource,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids only: never a key.
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("old", &self.old.iter().map(|k| k.id.as_str()).collect::<Vec<_>>())
            .field("source", &self.source)
            .finish()
    }
}

/// Parses one base64 key of 32 bytes; `what` names where it came from.
fn parse_key(text: &str, what: &str) -> Result<[u8; 32], Error> {
    let text = text.trim();
    let bytes = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
        .ok_or_else(|| Error::Key { what: what.to_string(), problem: "is not base64".into() })?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| Error::Key { what: what.to_string(), problem: format!("holds {} bytes, not 32", bytes.len()) })
}

impl Keyring {
    /// A keyring of `current` and `old` base64 keys.
    pub fn new(current: &str, old: &[&str], source: KeySource) -> Result<Keyring, Error> {
        let current = SealKey::new(&parse_key(current, KEY_VAR)?);
        let old = old
            .iter()
            .enumerate()
            .filter(|(_, k)| !k.trim().is_empty())
            .map(|(i, k)| Ok(SealKey::new(&parse_key(k, &format!("{OLD_KEYS_VAR} (key {} of the list)", i + 1))?)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Keyring { current, old, source })
    }

    /// The keyring of `TRIG_SECRET_KEY` and `TRIG_SECRET_KEYS_OLD`; `None` when no key is set.
    pub fn from_env() -> Result<Option<Keyring>, Error> {
        let Ok(current) = std::env::var(KEY_VAR) else { return Ok(None) };
        let old = std::env::var(OLD_KEYS_VAR).unwrap_or_default();
        Keyring::new(&current, &old.split(',').collect::<Vec<_>>(), KeySource::Environment).map(Some)
    }

    /// The environment's keyring, else the key file beside the SQLite
    /// database at `db` (`trig.db.key`, mode 0600), made when missing.
    pub fn for_sqlite(db: &Path) -> Result<Keyring, Error> {
        if let Some(k) = Keyring::from_env()? {
            return Ok(k);
        }
        let mut file = db.as_os_str().to_owned();
        file.push(".key");
        let file = PathBuf::from(file);
        let what = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                check_private(&file)?;
                Keyring::new(&text, &[], KeySource::File(file.clone())).map_err(|e| e.in_file(&what))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| Error::Key { what: what.clone(), problem: format!("no randomness: {e}") })?;
                let text = STANDARD.encode(key);
                write_private(&file, &text).map_err(|e| Error::Key { what: what.clone(), problem: format!("cannot be written: {e}") })?;
                Keyring::new(&text, &[], KeySource::Created(file))
            }
            Err(e) => Err(Error::Key { what, problem: format!("cannot be read: {e}") }),
        }
    }

    /// Where the current key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The current key's id.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `secret`, bound to `context` (what it belongs to).
    pub fn seal(&self, secret: &str, context: &str) -> Result<String, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Error::Sealed { context: context.into(), problem: format!("no randomness: {e}") })?;
        let ct = self
            .current
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret.as_bytes(), aad: context.as_bytes() })
            .map_err(|_| Error::Sealed { context: context.into(), problem: "encryption failed".into() })?;
        let mut body = nonce.to_vec();
        body.extend_from_slice(&ct);
        Ok(format!("{PREFIX}{}:{}", self.current.id, STANDARD_NO_PAD.encode(body)))
    }

    /// The key id a sealed value names (`None` when it is not one of ours).
    pub fn key_id_of(sealed: &str) -> Option<&str> {
        sealed.strip_prefix(PREFIX)?.split_once(':').map(|(id, _)| id)
    }

    /// Opens what [`Keyring::seal`] sealed with `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, Error> {
        let bad = |problem: &str| Error::Sealed { context: context.into(), problem: problem.into() };
        let (id, body) = sealed.strip_prefix(PREFIX).and_then(|r| r.split_once(':')).ok_or_else(|| bad("is not a sealed secret"))?;
        let key = std::iter::once(&self.current).chain(&self.old).find(|k| k.id == id).ok_or_else(|| {
            bad(&format!(
                "was sealed under key {id}, which is neither {KEY_VAR} ({}) nor in {OLD_KEYS_VAR}; set the key it was sealed with in {OLD_KEYS_VAR}",
                self.current.id
            ))
        })?;
        let body = STANDARD_NO_PAD.decode(body).map_err(|_| bad("is damaged (not base64)"))?;
        if body.len() < NONCE_LEN {
            return Err(bad("is damaged (too short)"));
        }
        let (nonce, ct) = body.split_at(NONCE_LEN);
        let plain = key
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: context.as_bytes() })
            .map_err(|_| bad("does not open: it was changed, or it belongs to another record"))?;
        String::from_utf8(plain).map_err(|_| bad("is damaged (not text)"))
    }

    /// Whether `sealed` needs sealing again under the current key.
    pub fn is_stale(&self, sealed: &str) -> bool {
        Keyring::key_id_of(sealed) != Some(self.current.id.as_str())
    }
}

/// What `secrets rotate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rotation {
    /// Sealed again under the current key.
    pub resealed: u64,
    /// Already under the current key.
    pub current: u64,
    /// Changed by someone else while rotating (theirs is under the current key).
    pub raced: u64,
    /// Could not be opened, with why (`tenant/connection: problem`); left as they are.
    pub failed: Vec<String>,
}

/// Seals every stored secret again under the current key. Each one is
/// replaced only if it is still what was read, so a change made meanwhile
/// wins; one that does not open is reported and left alone.
pub async fn rotate(store: &dyn trig_store::Catalog, keys: &Keyring) -> Result<Rotation, Error> {
    let mut out = Rotation::default();
    for s in store.sealed_secrets().await.map_err(Error::from_store)? {
        if !keys.is_stale(&s.sealed) {
            out.current += 1;
            continue;
        }
        let context = format!("{}/connections/{}", s.tenant_name, s.connection);
        let fresh = match keys.open(&s.sealed, &context).and_then(|plain| keys.seal(&plain, &context)) {
            Ok(f) => f,
            Err(e) => {
                out.failed.push(format!("{context}: {e}"));
                continue;
            }
        };
        if store.reseal(s.connection_id, &s.sealed, &fresh, "secrets rotate").await.map_err(Error::from_store)? {
            out.resealed += 1;
        } else {
            out.raced += 1;
        }
    }
    Ok(out)
}

#[cfg(unix)]
fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(file, text)
}

/// A key file that others may read is refused, saying how to fix it.
#[cfg(unix)]
fn check_private(file: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode & 0o077 != 0 {
        return Err(Error::Key {
            what: file.display().to_string(),
            problem: format!("may be read by others (mode {:o}); run `chmod 600 {}`", mode & 0o777, file.display()),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_its_context() {
        let ring = Keyring::new(K1, &[], KeySource::Environment).unwrap();
        let sealed = ring.seal("dapi-secret", "acme/connections/prod/token").unwrap();
        assert!(sealed.starts_with(&format!("trig:v1:{}:", ring.key_id())), "{sealed}");
        assert!(!sealed.contains("dapi-secret"));
        assert_ne!(sealed, ring.seal("dapi-secret", "acme/connections/prod/token").unwrap(), "a fresh nonce each time");
        assert_eq!(ring.open(&sealed, "acme/connections/prod/token").unwrap(), "dapi-secret");
        let e = ring.open(&sealed, "globex/connections/prod/token").unwrap_err().to_string();
        assert!(e.contains("belongs to another record") && e.contains("globex/connections/prod/token"), "{e}");
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(ring.open(std::str::from_utf8(&flipped).unwrap(), "acme/connections/prod/token").is_err(), "a changed byte does not open");
        assert!(ring.open("dapi-secret", "x").unwrap_err().to_string().contains("is not a sealed secret"));
    }

    #[test]
    fn old_keys_open_and_rotation_is_visible_by_key_id() {
        let before = Keyring::new(K1, &[], KeySource::Environment).unwrap();
        let sealed = before.seal("s3cret", "c").unwrap();
        let after = Keyring::new(K2, &[K1], KeySource::Environment).unwrap();
        assert_ne!(before.key_id(), after.key_id());
        assert!(after.is_stale(&sealed) && !before.is_stale(&sealed));
        assert_eq!(after.open(&sealed, "c").unwrap(), "s3cret");
        let resealed = after.seal(&after.open(&sealed, "c").unwrap(), "c").unwrap();
        assert!(!after.is_stale(&resealed));
        let without_old = Keyring::new(K2, &[], KeySource::Environment).unwrap();
        let e = without_old.open(&sealed, "c").unwrap_err().to_string();
        assert!(e.contains(before.key_id()) && e.contains(OLD_KEYS_VAR), "{e}");
    }

    #[test]
    fn a_bad_key_names_its_variable_and_never_echoes_it() {
        let e = Keyring::new("not-a-key!", &[], KeySource::Environment).unwrap_err().to_string();
        assert!(e.contains(KEY_VAR) && e.contains("not base64") && !e.contains("not-a-key!"), "{e}");
        let e = Keyring::new("c2hvcnQ=", &[], KeySource::Environment).unwrap_err().to_string();
        assert!(e.contains("5 bytes, not 32") && e.contains("head -c 32 /dev/urandom | base64"), "{e}");
        let e = Keyring::new(K1, &["", "c2hvcnQ="], KeySource::Environment).unwrap_err().to_string();
        assert!(e.contains("TRIG_SECRET_KEYS_OLD (key 2 of the list)"), "{e}");
        let ring = Keyring::new(K1, &[K2], KeySource::Environment).unwrap();
        assert!(!format!("{ring:?}").contains(K1) && !format!("{ring:?}").contains(K2));
    }

    #[cfg(unix)]
    #[test]
    fn beside_sqlite_a_key_file_is_made_once_private_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        if std::env::var_os(KEY_VAR).is_some() {
            return; // the environment's key wins; nothing to test here
        }
        let dir = std::env::temp_dir().join(format!("trig-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("trig.db");
        let made = Keyring::for_sqlite(&db).unwrap();
        let file = dir.join("trig.db.key");
        assert_eq!(made.source(), &KeySource::Created(file.clone()));
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let again = Keyring::for_sqlite(&db).unwrap();
        assert_eq!(again.source(), &KeySource::File(file.clone()));
        assert_eq!(again.open(&made.seal("x", "c").unwrap(), "c").unwrap(), "x");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::for_sqlite(&db).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
