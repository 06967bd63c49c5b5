//! Sluice API keys. A key is `sluice_<id>_<secret>`: `id` names it (12 hex digits), `secret` is
//! 32 random bytes (64 hex digits). Only a salted SHA-256 of the secret is ever stored, in a
//! Secret `sluice-api-key-<id>` of the gateway's namespace labelled
//! `serving.sluice.dev/api-key=<id>` (or, in standalone mode, a record of a keys file), with the
//! principal the key acts as, its groups, the endpoints it may call (all when empty) and an
//! expiry. Deleting the Secret revokes the key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::string::FromUtf8Error;
use std::sync::Mutex;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The label that marks a key's Secret; its value is the key id.
pub const LABEL: &str = "serving.sluice.dev/api-key";
/// What every key starts with.
const PREFIX: &str = "sluice_";

/// The Secret holding key `id`.
pub fn secret_name(id: &str) -> String {
    format!("sluice-api-key-{id}")
}

/// A stored key: what the Secret (or the keys file) holds, never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRecord {
    /// The key id (12 hex digits).
    pub id: String,
    /// Hex salt mixed into the hash.
    pub salt: String,
    /// Hex SHA-256 of the salt followed by the secret.
    pub hash: String,
    /// Who the key acts as (recorded as the requester).
    pub principal: String,
    /// Groups of that principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Endpoints it may call (`name` or `namespace/name`); every endpoint when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// When it stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

/// A key just made: the whole key (shown once) and what is stored of it.
#[derive(Debug)]
pub struct Minted {
    /// `sluice_<id>_<secret>`: give it to the caller; it is not kept anywhere.
    pub key: String,
    /// What is stored.
    pub record: KeyRecord,
}

/// Why a presented key is refused.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KeyProblem {
    /// No stored key has that id (never made, or revoked).
    #[error("API key {0} is unknown or was revoked")]
    Unknown(String),
    /// The secret part does not match.
    #[error("API key {0} does not match its stored hash")]
    Mismatch(String),
    /// Past its expiry.
    #[error("API key {id} expired at {at}")]
    Expired {
        /// The key id.
        id: String,
        /// When.
        at: Timestamp,
    },
    /// The stored record is not one this gateway can read.
    #[error("the stored record of API key {id} is unreadable: {why}")]
    Unreadable {
        /// The key id.
        id: String,
        /// What is wrong with it.
        #[source]
        why: RecordError,
    },
}

/// Why a stored key record (a key's Secret) cannot be read.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RecordError {
    /// The Secret holds no data at all.
    #[error("the Secret has no data")]
    NoData,
    /// A value is not text.
    #[error("{key} is not UTF-8")]
    NotUtf8 {
        /// The data key.
        key: &'static str,
        /// The decoding error.
        #[source]
        source: FromUtf8Error,
    },
    /// A value every record has is absent.
    #[error("{key} is missing")]
    Missing {
        /// The data key.
        key: &'static str,
    },
    /// `expires` is not a timestamp.
    #[error("expires {value:?}: {source}")]
    Expires {
        /// What it holds.
        value: String,
        /// Why it is no timestamp.
        #[source]
        source: k8s_openapi::jiff::Error,
    },
    /// The stored hash is not hex.
    #[error("hash is not hex")]
    HashNotHex,
    /// The Secret of one key holds the record of another.
    #[error("its Secret holds key {found}")]
    OtherKey {
        /// The id the record holds.
        found: String,
    },
}

/// Why a keys file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// It is not a YAML list of key records (or the records could not be written as one).
    #[error("{0}")]
    Yaml(#[source] serde_norway::Error),
}

/// Why random bytes could not be had.
#[derive(Debug, thiserror::Error)]
#[error("the system's random source failed: {0}")]
pub struct NoRandom(#[source] getrandom::Error);

/// Makes a new key for `principal`.
pub fn mint(
    principal: &str,
    groups: Vec<String>,
    endpoints: Vec<String>,
    expires: Option<Timestamp>,
) -> Result<Minted, NoRandom> {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    for buffer in [&mut id[..], &mut secret[..], &mut salt[..]] {
        getrandom::fill(buffer).map_err(NoRandom)?;
    }
    let (id, secret, salt) = (hex(&id), hex(&secret), hex(&salt));
    let hash = hex(&digest(&salt, &secret));
    Ok(Minted {
        key: format!("{PREFIX}{id}_{secret}"),
        record: KeyRecord {
            id,
            salt,
            hash,
            principal: principal.to_string(),
            groups,
            endpoints,
            expires,
        },
    })
}

/// The id and secret of a token that is a Sluice API key; `None` for any other token (a
/// Kubernetes token, which never starts with the prefix).
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexes = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexes(id, 12) && hexes(secret, 64)).then_some((id, secret))
}

/// Checks `secret` against `record` at `now`.
pub fn verify(record: &KeyRecord, secret: &str, now: Timestamp) -> Result<(), KeyProblem> {
    let id = record.id.clone();
    let stored = unhex(&record.hash).ok_or_else(|| KeyProblem::Unreadable {
        id: id.clone(),
        why: RecordError::HashNotHex,
    })?;
    let presented = digest(&record.salt, secret);
    if !bool::from(presented.as_slice().ct_eq(stored.as_slice())) {
        return Err(KeyProblem::Mismatch(id));
    }
    match record.expires {
        Some(at) if at <= now => Err(KeyProblem::Expired { id, at }),
        _ => Ok(()),
    }
}

/// Whether a key limited to `endpoints` (`name` or `namespace/name`; none: every endpoint) may
/// call endpoint `name` of `namespace`.
pub fn in_scope(endpoints: &[String], namespace: &str, name: &str) -> bool {
    endpoints.is_empty()
        || endpoints.iter().any(|e| match e.split_once('/') {
            Some((ns, n)) => ns == namespace && n == name,
            None => e == name,
        })
}

/// The Secret that stores `record` in `namespace`.
pub fn to_secret(record: &KeyRecord, namespace: &str) -> Secret {
    let mut data = BTreeMap::from([
        ("id".to_string(), record.id.clone()),
        ("salt".to_string(), record.salt.clone()),
        ("hash".to_string(), record.hash.clone()),
        ("principal".to_string(), record.principal.clone()),
    ]);
    if !record.groups.is_empty() {
        data.insert("groups".into(), record.groups.join(","));
    }
    if !record.endpoints.is_empty() {
        data.insert("endpoints".into(), record.endpoints.join(","));
    }
    if let Some(at) = record.expires {
        data.insert("expires".into(), at.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&record.id)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(LABEL.to_string(), record.id.clone())])),
            ..ObjectMeta::default()
        },
        type_: Some("serving.sluice.dev/api-key".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The record a key's Secret holds.
pub fn from_secret(secret: &Secret) -> Result<KeyRecord, RecordError> {
    let data = secret.data.as_ref().ok_or(RecordError::NoData)?;
    let text = |key: &'static str| -> Result<Option<String>, RecordError> {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.0.clone())
                    .map_err(|source| RecordError::NotUtf8 { key, source })
            })
            .transpose()
    };
    let required = |key: &'static str| text(key)?.ok_or(RecordError::Missing { key });
    let list = |key: &'static str| -> Result<Vec<String>, RecordError> {
        Ok(text(key)?
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default())
    };
    let expires = text("expires")?
        .map(|v| {
            v.parse::<Timestamp>()
                .map_err(|source| RecordError::Expires { value: v, source })
        })
        .transpose()?;
    Ok(KeyRecord {
        id: required("id")?,
        salt: required("salt")?,
        hash: required("hash")?,
        principal: required("principal")?,
        groups: list("groups")?,
        endpoints: list("endpoints")?,
        expires,
    })
}

/// The records of a keys file (a YAML list of [`KeyRecord`]); none when the file does not exist.
pub fn read_records(path: &Path) -> Result<Vec<KeyRecord>, KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(Vec::new()),
        Ok(text) => serde_norway::from_str(&text).map_err(KeyFileError::Yaml),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(KeyFileError::Io(e)),
    }
}

/// A keys file as a standalone gateway reads it: again whenever it changes, so a key created
/// or revoked with `api-key --file` counts from the next call.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
    loaded: Mutex<(Option<SystemTime>, HashMap<String, KeyRecord>)>,
}

impl KeyFile {
    /// Reads `path` (which must be readable, or not exist yet).
    pub fn open(path: &Path) -> Result<Self, KeyFileError> {
        let file = Self {
            path: path.to_path_buf(),
            loaded: Mutex::new((None, HashMap::new())),
        };
        file.reload(&mut file.loaded.lock().unwrap_or_else(|e| e.into_inner()))?;
        Ok(file)
    }

    /// The record of key `id`, from the file as it is now.
    pub fn get(&self, id: &str) -> Option<KeyRecord> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified != loaded.0
            && let Err(why) = self.reload(&mut loaded)
        {
            tracing::warn!(path = %self.path.display(), %why, "keys file unreadable; keeping the keys read before");
        }
        loaded.1.get(id).cloned()
    }

    fn reload(
        &self,
        loaded: &mut (Option<SystemTime>, HashMap<String, KeyRecord>),
    ) -> Result<(), KeyFileError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let records = read_records(&self.path)?;
        *loaded = (
            modified,
            records.into_iter().map(|r| (r.id.clone(), r)).collect(),
        );
        Ok(())
    }
}

fn digest(salt: &str, secret: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(secret.as_bytes());
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minted() -> Minted {
        mint(
            "alice@example.com",
            vec!["ml".into()],
            vec!["team-a/iris".into(), "fraud".into()],
            None,
        )
        .expect("random")
    }

    #[test]
    fn a_minted_key_verifies_and_only_its_hash_is_stored() {
        let Minted { key, record } = minted();
        let (id, secret) = parse(&key).expect("our format");
        assert_eq!(id, record.id);
        assert!(verify(&record, secret, Timestamp::now()).is_ok());
        let stored = serde_json::to_string(&to_secret(&record, "sluice-system")).expect("json");
        assert!(!stored.contains(secret), "the secret is never stored");
        let mut wrong = secret.to_string();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        assert!(matches!(
            verify(&record, &wrong, Timestamp::now()),
            Err(KeyProblem::Mismatch(id)) if id == record.id
        ));
        // Two keys never share salt or id.
        let other = minted().record;
        assert_ne!((other.id, other.salt), (record.id, record.salt));
    }

    #[test]
    fn the_secret_round_trips_and_scope_and_expiry_apply() {
        let mut record = minted().record;
        record.expires = Some(Timestamp::UNIX_EPOCH);
        let back = from_secret(&to_secret(&record, "ns")).expect("readable");
        assert_eq!(back, record);
        assert!(in_scope(&back.endpoints, "team-a", "iris"));
        assert!(!in_scope(&back.endpoints, "team-b", "iris"));
        assert!(in_scope(&back.endpoints, "anywhere", "fraud"));
        assert!(!in_scope(&back.endpoints, "team-a", "churn"));
        let secret = "0".repeat(64);
        let mut expired = back.clone();
        expired.hash = hex(&digest(&expired.salt, &secret));
        assert!(matches!(
            verify(&expired, &secret, Timestamp::now()),
            Err(KeyProblem::Expired { .. })
        ));
        assert!(in_scope(&[], "x", "y"));
    }

    #[test]
    fn only_well_formed_keys_parse() {
        let key = minted().key;
        assert!(parse(&key).is_some());
        assert!(parse("eyJhbGciOiJSUzI1NiJ9.payload.sig").is_none(), "a JWT");
        assert!(parse("sluice_abc_def").is_none());
        assert!(parse(&key.replace("sluice_", "slice_")).is_none());
        let bad = Secret {
            data: Some(BTreeMap::new()),
            ..Secret::default()
        };
        let missing = from_secret(&bad).expect_err("no id");
        assert!(
            matches!(missing, RecordError::Missing { key: "id" }),
            "{missing:?}"
        );
        assert_eq!(missing.to_string(), "id is missing");
        let mut record = minted().record;
        record.expires = Some(Timestamp::UNIX_EPOCH);
        let mut secret = to_secret(&record, "ns");
        if let Some(data) = secret.data.as_mut() {
            data.insert("expires".into(), ByteString(b"soon".to_vec()));
        }
        let error = from_secret(&secret).expect_err("not a timestamp");
        assert!(
            error.to_string().starts_with("expires \"soon\": "),
            "{error}"
        );
        assert!(
            std::error::Error::source(&error)
                .is_some_and(|cause| cause.is::<k8s_openapi::jiff::Error>()),
            "the parse error is kept: {error:?}"
        );
    }
}
