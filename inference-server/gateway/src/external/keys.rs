//! Provider API keys, read from Secrets: on a cluster from the API server (`get` on the one
//! Secret an entity names, cached a minute, forgotten when the provider refuses the key so a
//! rotated key takes effect on the next call); in standalone mode from the Secret documents of
//! the manifest. A key is never logged, echoed or captured: [`ApiKey`] prints as `****`, its
//! header is marked sensitive, and [`ApiKey::scrub`] takes it out of anything a provider says.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use sluice_crds::common::SecretKeyRef;
use sluice_protocol::{ApiError, ErrorKind};

/// A provider's API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// The key `value` (surrounding whitespace, such as a file's last newline, removed).
    pub fn new(value: String) -> Self {
        Self(Arc::from(value.trim()))
    }

    /// The key itself, for the one header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with the key taken out: every run of eight or more of its characters in a row
    /// (providers echo a refused key's first characters) becomes `****`.
    pub fn scrub(&self, text: &str) -> String {
        const RUN: usize = 8;
        let key: Vec<char> = self.0.chars().collect();
        let mut text = text.replace(&*self.0, "****");
        if key.len() >= RUN {
            for window in key.windows(RUN) {
                let piece: String = window.iter().collect();
                if text.contains(&piece) {
                    text = text.replace(&piece, "****");
                }
            }
        }
        text
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

/// One Secret's keys, or why it could not be read.
type Read = Result<BTreeMap<String, ApiKey>, String>;

/// A Secret: its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SecretName {
    namespace: String,
    name: String,
}

/// How long a read Secret is trusted; a failed read is retried sooner.
const FRESH: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(5);

/// Where keys come from.
pub struct Keys {
    /// The API server, in cluster mode.
    cluster: Option<kube::Client>,
    /// The manifest's Secrets, in standalone mode.
    manifest: RwLock<HashMap<SecretName, BTreeMap<String, ApiKey>>>,
    /// Secrets read from the API server, with when.
    cache: Mutex<HashMap<SecretName, (Instant, Read)>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("cluster", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys read from the cluster's Secrets.
    pub fn cluster(client: kube::Client) -> Self {
        Self {
            cluster: Some(client),
            manifest: RwLock::default(),
            cache: Mutex::default(),
        }
    }

    /// Keys from the Secret documents of a standalone manifest ([`Keys::set_manifest`]).
    pub fn standalone() -> Self {
        Self {
            cluster: None,
            manifest: RwLock::default(),
            cache: Mutex::default(),
        }
    }

    /// Replaces the manifest's Secrets (standalone mode, at each reload).
    pub fn set_manifest(&self, secrets: &[Secret]) {
        let read = secrets
            .iter()
            .filter_map(|secret| {
                let name = secret.metadata.name.clone()?;
                let namespace = secret
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                Some((SecretName { namespace, name }, keys_of(secret)))
            })
            .collect();
        *self.manifest.write().unwrap_or_else(|e| e.into_inner()) = read;
    }

    /// The key `reference` names in `namespace`, or a 502 that says which Secret or key is
    /// missing (never its value).
    pub async fn get(&self, namespace: &str, reference: &SecretKeyRef) -> Result<ApiKey, ApiError> {
        let id = SecretName {
            namespace: namespace.to_string(),
            name: reference.name.clone(),
        };
        let secret: Read = match &self.cluster {
            None => self
                .manifest
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .cloned()
                .ok_or_else(|| "the manifest holds no such Secret".to_string()),
            Some(client) => self.read_cluster(client, id).await,
        };
        let missing = |why: String| {
            ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "the provider's API key (Secret {namespace}/{}, key {:?}) cannot be read: {why}",
                    reference.name, reference.key
                ),
            )
        };
        let secret = secret.map_err(missing)?;
        secret
            .get(&reference.key)
            .cloned()
            .ok_or_else(|| missing("the Secret has no such key".into()))
    }

    /// Forgets a cached Secret (its key was refused: it may have been rotated).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&SecretName {
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
    }

    async fn read_cluster(&self, client: &kube::Client, id: SecretName) -> Read {
        if let Some((at, read)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            let ttl = if read.is_ok() { FRESH } else { RETRY };
            if at.elapsed() < ttl {
                return read.clone();
            }
        }
        let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &id.namespace);
        let read = match api.get_opt(&id.name).await {
            Ok(Some(secret)) => Ok(keys_of(&secret)),
            Ok(None) => Err("no such Secret".to_string()),
            Err(kube::Error::Api(status)) if status.code == 403 => Err(
                "the gateway may not read it (its role needs get on secrets in this namespace)"
                    .to_string(),
            ),
            Err(error) => Err(format!("the API server could not be asked: {error}")),
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (Instant::now(), read.clone()));
        read
    }
}

/// The UTF-8 values of a Secret, `stringData` over `data` as the API server merges them.
fn keys_of(secret: &Secret) -> BTreeMap<String, ApiKey> {
    let mut keys: BTreeMap<String, ApiKey> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = String::from_utf8(v.0.clone()).ok()?;
            Some((k.clone(), ApiKey::new(text)))
        })
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        keys.insert(k.clone(), ApiKey::new(v.clone()));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manifest_secrets_give_keys_and_name_what_is_missing() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "openai", "namespace": "ml"},
            "data": {"key": "c2stZnJvbS1kYXRhCg=="},
            "stringData": {"other": "sk-plain"}
        }))
        .unwrap();
        let keys = Keys::standalone();
        keys.set_manifest(&[secret]);
        let reference = |name: &str, key: &str| SecretKeyRef {
            name: name.into(),
            key: key.into(),
        };
        let key = keys.get("ml", &reference("openai", "key")).await.unwrap();
        assert_eq!(key.expose(), "sk-from-data");
        assert_eq!(format!("{key:?}"), "ApiKey(****)");
        assert_eq!(
            keys.get("ml", &reference("openai", "other"))
                .await
                .unwrap()
                .expose(),
            "sk-plain"
        );
        let error = keys
            .get("ml", &reference("openai", "nope"))
            .await
            .unwrap_err();
        assert!(error.message.contains("ml/openai") && error.message.contains("\"nope\""));
        assert!(
            keys.get("other", &reference("openai", "key"))
                .await
                .is_err()
        );
    }

    #[test]
    fn a_key_and_its_prefix_are_scrubbed() {
        let key = ApiKey::new("sk-proj-abcdefghijklmnop".into());
        assert_eq!(
            key.scrub("bad key sk-proj-abcdefghijklmnop!"),
            "bad key ****!"
        );
        let said = key.scrub("Incorrect API key provided: sk-proj-****mnop");
        assert!(!said.contains("sk-proj-"), "{said}");
        assert!(said.ends_with("****mnop"), "{said}");
    }
}
