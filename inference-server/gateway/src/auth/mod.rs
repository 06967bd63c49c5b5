//! Who may call. Each request's bearer token becomes an [`Identity`]: a Sluice API key is
//! checked against its salted hash ([`keys`]), any other token goes to the API server's
//! TokenReview. "May call endpoint X" is then decided as Kubernetes RBAC decides it (a
//! SubjectAccessReview of the verb `query` on `servingendpoints/X`, [`review`]) or, for an API
//! key, by the key's own scope. Kubernetes decisions are cached for a short TTL in a bounded
//! cache ([`cache`]), so revoking a token or a RoleBinding takes effect within it; deleting a
//! key's Secret takes effect at once.
//!
//! A caller without credentials is `system:anonymous` in the group `system:unauthenticated`,
//! as the API server names it. With `--allow-anonymous` it may call every endpoint; otherwise
//! it may call those RBAC lets that group `query` (a RoleBinding of `sluice-query`, optionally
//! narrowed by `resourceNames`, to the group: anonymous access per endpoint), and gets 401
//! elsewhere.
//!
//! The gateway then forwards the verified identity in its own headers and removes every
//! identity header the client sent ([`strip_client_identity`], [`set_identity`]).

mod cache;
pub mod keys;
mod review;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};
use sluice_contract::headers::{CLIENT_IDENTITY, names};
use sluice_protocol::error::{ApiError, ErrorKind};

use crate::metrics::AuthOutcome;
use cache::TtlCache;
pub use keys::{KeyProblem, KeyRecord};
pub use review::{GROUP, RESOURCE, VERB, Verb};

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user name (a ServiceAccount's is `system:serviceaccount:<ns>:<name>`; an API key's
    /// is its principal).
    pub user: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The Kubernetes user's uid, passed on to SubjectAccessReview.
    pub uid: Option<String>,
    /// The API key presented, when the caller used one: its id and scope.
    pub key: Option<KeyScope>,
}

/// The part of an API key that authorization needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyScope {
    /// The key id.
    pub id: String,
    /// Endpoints it may call; every endpoint when empty.
    pub endpoints: Vec<String>,
}

impl Identity {
    /// A caller without credentials, where anonymous calls are allowed.
    pub fn anonymous() -> Self {
        Self {
            user: ANONYMOUS_USER.into(),
            groups: vec![ANONYMOUS_GROUP.into()],
            uid: None,
            key: None,
        }
    }

    /// Whether this is a caller without credentials.
    pub fn is_anonymous(&self) -> bool {
        self.user == ANONYMOUS_USER && self.key.is_none()
    }

    /// The anonymous identity, made once for the process (it is every open gateway's caller,
    /// on every request).
    fn shared_anonymous() -> Arc<Self> {
        static ANONYMOUS: std::sync::LazyLock<Arc<Identity>> =
            std::sync::LazyLock::new(|| Arc::new(Identity::anonymous()));
        ANONYMOUS.clone()
    }
}

/// Kubernetes' user name for a caller without credentials.
const ANONYMOUS_USER: &str = "system:anonymous";
/// Kubernetes' group of callers without credentials.
const ANONYMOUS_GROUP: &str = "system:unauthenticated";

/// A caller as [`Auth::authenticate`] found it: the identity, and the hash of the token that
/// proved it (the key of cached decisions; never the token itself; [`ANONYMOUS`] for a caller
/// without credentials).
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who.
    pub identity: Arc<Identity>,
    token: Option<[u8; 32]>,
}

/// The decision-cache key of callers without credentials (no token hashes to it in practice).
const ANONYMOUS: [u8; 32] = [0; 32];

/// The key of a cached RBAC decision: who (the hash of their token), what, and where.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Decision {
    token: [u8; 32],
    verb: Verb,
    namespace: String,
    name: String,
}

/// Why a call is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, and anonymous calls are not allowed.
    #[error(
        "no credentials: send `Authorization: Bearer <token>` with a Kubernetes token or a Sluice \
         API key (`inference-server api-key create`)"
    )]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    /// A Sluice API key that is unknown, revoked, wrong or expired.
    #[error(transparent)]
    Key(#[from] KeyProblem),
    /// The API server did not accept the token.
    #[error("the token was not accepted by the Kubernetes API: {reason}")]
    TokenRejected {
        /// What the TokenReview said.
        reason: String,
    },
    /// A token that is not an API key, where no Kubernetes API checks tokens (standalone).
    #[error("only Sluice API keys are accepted here (no Kubernetes API to check other tokens)")]
    TokenUncheckable,
    /// RBAC does not let the caller query the endpoint.
    #[error(
        "{user} may not query servingendpoints/{name} in namespace {namespace}: it needs the \
         verb `query` on `servingendpoints` (API group serving.sluice.dev), e.g. a RoleBinding \
         to the ClusterRole sluice-query; {reason}"
    )]
    Forbidden {
        /// Who asked.
        user: String,
        /// The endpoint's namespace.
        namespace: String,
        /// The endpoint.
        name: String,
        /// The API server's reason.
        reason: String,
    },
    /// RBAC does not let the caller manage endpoints as asked.
    #[error(
        "{user} may not {} servingendpoints{}{name} in namespace {namespace}: it needs the \
         verb `{}` on `servingendpoints` (API group serving.sluice.dev), as `kubectl` would; \
         {reason}",
        verb.as_str(), if name.is_empty() { "" } else { "/" }, verb.as_str()
    )]
    ForbiddenTo {
        /// What was asked.
        verb: Verb,
        /// Who asked.
        user: String,
        /// The endpoint's namespace.
        namespace: String,
        /// The endpoint.
        name: String,
        /// The API server's reason.
        reason: String,
    },
    /// The API key's scope does not include the endpoint.
    #[error(
        "API key {id} may not call {namespace}/{name}: it is limited to {}",
        endpoints.join(", ")
    )]
    OutOfScope {
        /// The key id.
        id: String,
        /// The endpoint's namespace.
        namespace: String,
        /// The endpoint.
        name: String,
        /// The key's scope.
        endpoints: Vec<String>,
    },
    /// An API key asked to manage endpoints: keys only call them.
    #[error(
        "API key {id} may only query endpoints; managing them (`{}`) needs a Kubernetes token \
         with that RBAC verb on servingendpoints",
        verb.as_str()
    )]
    KeyCannotManage {
        /// The key id.
        id: String,
        /// What was asked.
        verb: Verb,
    },
    /// The Kubernetes API could not be asked.
    #[error("checking the caller with the Kubernetes API failed: {0}")]
    Review(#[source] kube::Error),
}

impl AuthError {
    /// The answer to the client: 401 (with `WWW-Authenticate`), 403, or 503 to retry.
    pub fn to_api_error(&self) -> ApiError {
        let kind = match self {
            Self::Forbidden { .. }
            | Self::ForbiddenTo { .. }
            | Self::OutOfScope { .. }
            | Self::KeyCannotManage { .. } => ErrorKind::PermissionDenied,
            Self::Review(_) => ErrorKind::Unavailable,
            _ => ErrorKind::Unauthenticated,
        };
        let error = ApiError::new(kind, self.to_string());
        match self {
            Self::Review(_) => error.with_retry_after(Duration::from_secs(1)),
            _ => error,
        }
    }

    /// How the check ended, for the `auth_checks` metric.
    pub fn outcome(&self) -> AuthOutcome {
        match self {
            Self::Forbidden { .. }
            | Self::ForbiddenTo { .. }
            | Self::OutOfScope { .. }
            | Self::KeyCannotManage { .. } => AuthOutcome::Forbidden,
            Self::Review(_) => AuthOutcome::Error,
            _ => AuthOutcome::Unauthenticated,
        }
    }
}

/// Where API keys are read.
#[derive(Debug)]
pub enum KeySource {
    /// No API keys.
    None,
    /// Secrets labelled [`keys::LABEL`] in `namespace`, kept by a watch.
    Secrets {
        /// The watch's store.
        store: Store<Secret>,
        /// The namespace of the key Secrets.
        namespace: String,
    },
    /// A keys file (standalone mode), read again when it changes.
    File(keys::KeyFile),
}

/// How the gateway checks callers.
pub struct Auth {
    /// Nothing is checked: every caller is anonymous (standalone mode without keys).
    open: bool,
    /// The key source has its first full view (always, but for a Secrets watch before its
    /// first list): `/readyz` waits for it, so no key is refused for being unseen.
    keys_synced: Arc<AtomicBool>,
    allow_anonymous: bool,
    kube: Option<Client>,
    keys: KeySource,
    tokens: TtlCache<[u8; 32], Arc<Identity>>,
    decisions: TtlCache<Decision, Result<(), String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("open", &self.open)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("kube", &self.kube.is_some())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Settings of [`Auth`].
#[derive(Clone, Copy, Debug)]
pub struct AuthSettings {
    /// Callers without credentials pass as `system:anonymous`.
    pub allow_anonymous: bool,
    /// How long a Kubernetes decision is reused.
    pub cache_ttl: Duration,
    /// Most decisions cached.
    pub cache_size: usize,
}

impl Auth {
    /// No checks at all: every caller is anonymous.
    pub fn open() -> Self {
        Self::build(
            true,
            AuthSettings {
                allow_anonymous: true,
                cache_ttl: Duration::ZERO,
                cache_size: 0,
            },
            None,
            KeySource::None,
        )
    }

    /// Checks callers with `kube` (TokenReview, SubjectAccessReview; none in standalone mode)
    /// and the API keys of `keys`.
    pub fn new(settings: AuthSettings, kube: Option<Client>, keys: KeySource) -> Self {
        Self::build(false, settings, kube, keys)
    }

    fn build(open: bool, settings: AuthSettings, kube: Option<Client>, keys: KeySource) -> Self {
        let keys_synced = Arc::new(AtomicBool::new(!matches!(keys, KeySource::Secrets { .. })));
        Self {
            open,
            keys_synced,
            allow_anonymous: settings.allow_anonymous,
            kube,
            keys,
            tokens: TtlCache::new(settings.cache_ttl, settings.cache_size),
            decisions: TtlCache::new(settings.cache_ttl, settings.cache_size),
        }
    }

    /// Whether callers are checked at all.
    pub fn enforced(&self) -> bool {
        !self.open
    }

    /// Whether every API key can be checked yet.
    pub fn ready(&self) -> bool {
        self.keys_synced.load(Ordering::Relaxed)
    }

    /// Resolves once the key Secrets' watch has its first full list, and marks this ready.
    pub fn keys_synced(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (flag, store) = (
            self.keys_synced.clone(),
            match &self.keys {
                KeySource::Secrets { store, .. } => Some(store.clone()),
                _ => None,
            },
        );
        async move {
            if let Some(store) = store
                && store.wait_until_ready().await.is_err()
            {
                return;
            }
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Who sent a request with `headers`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let anonymous = || Caller {
            identity: Identity::shared_anonymous(),
            token: None,
        };
        if self.open {
            return Ok(anonymous());
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            // RBAC may still let anonymous callers query some endpoints (`authorize`).
            return if self.allow_anonymous || self.kube.is_some() {
                Ok(anonymous())
            } else {
                Err(AuthError::Missing)
            };
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Malformed)?;
        if let Some((id, secret)) = keys::parse(token) {
            let record = self.key(id)?;
            keys::verify(&record, secret, Timestamp::now())?;
            return Ok(Caller {
                identity: Arc::new(Identity {
                    user: record.principal,
                    groups: record.groups,
                    uid: None,
                    key: Some(KeyScope {
                        id: record.id,
                        endpoints: record.endpoints,
                    }),
                }),
                token: None,
            });
        }
        let Some(client) = &self.kube else {
            return Err(AuthError::TokenUncheckable);
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.tokens.get(&hash) {
            return Ok(Caller {
                identity,
                token: Some(hash),
            });
        }
        let identity = Arc::new(
            review::token(client, token)
                .await
                .map_err(AuthError::Review)?
                .map_err(|reason| AuthError::TokenRejected { reason })?,
        );
        self.tokens.insert(hash, identity.clone());
        Ok(Caller {
            identity,
            token: Some(hash),
        })
    }

    /// Whether `caller` may call the endpoint `name` of `namespace`.
    pub async fn authorize(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
    ) -> Result<(), AuthError> {
        self.authorize_to(caller, Verb::Query, namespace, name)
            .await
    }

    /// Whether `caller` may do `verb` to the endpoint `name` of `namespace` (to any endpoint
    /// there when `name` is empty). Only `query` is open to anonymous callers under
    /// `--allow-anonymous` and to API keys; every other verb is RBAC's to decide.
    pub async fn authorize_to(
        &self,
        caller: &Caller,
        verb: Verb,
        namespace: &str,
        name: &str,
    ) -> Result<(), AuthError> {
        let identity = &caller.identity;
        let query = verb == Verb::Query;
        if query && (self.open || (identity.is_anonymous() && self.allow_anonymous)) {
            return Ok(());
        }
        if let Some(key) = &identity.key {
            if !query {
                return Err(AuthError::KeyCannotManage {
                    id: key.id.clone(),
                    verb,
                });
            }
            return if keys::in_scope(&key.endpoints, namespace, name) {
                Ok(())
            } else {
                Err(AuthError::OutOfScope {
                    id: key.id.clone(),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    endpoints: key.endpoints.clone(),
                })
            };
        }
        let anonymous = identity.is_anonymous();
        let (Some(client), Some(token)) = (
            &self.kube,
            if anonymous {
                Some(ANONYMOUS)
            } else {
                caller.token
            },
        ) else {
            return Err(if anonymous {
                AuthError::Missing
            } else {
                AuthError::TokenUncheckable
            });
        };
        let cache_key = Decision {
            token,
            verb,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let decision = match self.decisions.get(&cache_key) {
            Some(decision) => decision,
            None => {
                let decision = review::may(client, identity, verb, namespace, name)
                    .await
                    .map_err(AuthError::Review)?;
                self.decisions.insert(cache_key, decision.clone());
                decision
            }
        };
        if anonymous {
            // Credentials would help: 401, as if anonymous calls were off.
            return decision.map_err(|_| AuthError::Missing);
        }
        decision.map_err(|reason| {
            let (user, namespace, name) = (
                identity.user.clone(),
                namespace.to_string(),
                name.to_string(),
            );
            if query {
                AuthError::Forbidden {
                    user,
                    namespace,
                    name,
                    reason,
                }
            } else {
                AuthError::ForbiddenTo {
                    verb,
                    user,
                    namespace,
                    name,
                    reason,
                }
            }
        })
    }

    /// The stored record of key `id`.
    fn key(&self, id: &str) -> Result<KeyRecord, KeyProblem> {
        let unknown = || KeyProblem::Unknown(id.to_string());
        match &self.keys {
            KeySource::None => Err(unknown()),
            KeySource::File(file) => file.get(id).ok_or_else(unknown),
            KeySource::Secrets { store, namespace } => {
                let secret = store
                    .get(&ObjectRef::new(&keys::secret_name(id)).within(namespace))
                    .ok_or_else(unknown)?;
                let record = keys::from_secret(&secret).map_err(|why| KeyProblem::Unreadable {
                    id: id.to_string(),
                    why,
                })?;
                if record.id != id {
                    return Err(KeyProblem::Unreadable {
                        id: id.to_string(),
                        why: keys::RecordError::OtherKey { found: record.id },
                    });
                }
                Ok(record)
            }
        }
    }
}

/// Removes every identity header a client sent: the gateway's own `x-sluice-*` headers (the
/// requester, groups, key id, shadow mark) and those of common auth proxies. What reaches the
/// pod about the caller is then only what [`set_identity`] writes.
pub fn strip_client_identity(headers: &mut HeaderMap) {
    let claimed = |name: &HeaderName| {
        let name = name.as_str();
        name.starts_with("x-sluice-") || CLIENT_IDENTITY.contains(&name)
    };
    // Most requests claim nothing: one look at the names before any removal (a removal
    // hashes its name).
    let claims: Vec<HeaderName> = headers.keys().filter(|n| claimed(n)).cloned().collect();
    for name in claims {
        headers.remove(name);
    }
}

/// Writes the verified identity of `caller` into `headers`.
pub fn set_identity(headers: &mut HeaderMap, identity: &Identity) {
    if identity.is_anonymous() && identity.groups == [ANONYMOUS_GROUP] {
        // The common case of an open gateway, without building the values per request.
        headers.insert(names::REQUESTER, HeaderValue::from_static(ANONYMOUS_USER));
        headers.insert(names::GROUPS, HeaderValue::from_static(ANONYMOUS_GROUP));
        return;
    }
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(names::REQUESTER, &identity.user);
    if !identity.groups.is_empty() {
        set(names::GROUPS, &identity.groups.join(","));
    }
    if let Some(key) = &identity.key {
        set(names::KEY_ID, &key.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed() -> (Auth, String, std::path::PathBuf) {
        let minted = keys::mint(
            "svc-batch",
            vec!["ml".into()],
            vec!["team/iris".into()],
            None,
        )
        .expect("random");
        let path = std::env::temp_dir().join(format!(
            "sluice-keys-{}-{}.yaml",
            std::process::id(),
            minted.record.id
        ));
        std::fs::write(
            &path,
            serde_norway::to_string(&vec![minted.record]).expect("yaml"),
        )
        .expect("keys file");
        // Kept while the test runs: a keys file that disappears holds no keys.
        let file = keys::KeyFile::open(&path).expect("readable");
        let auth = Auth::new(
            AuthSettings {
                allow_anonymous: false,
                cache_ttl: Duration::from_secs(30),
                cache_size: 100,
            },
            None,
            KeySource::File(file),
        );
        (auth, minted.key, path)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        headers
    }

    #[tokio::test]
    async fn api_keys_authenticate_and_authorize_by_their_scope() {
        let (auth, key, path) = keyed();
        let caller = auth.authenticate(&bearer(&key)).await.expect("a good key");
        assert_eq!(caller.identity.user, "svc-batch");
        assert!(auth.authorize(&caller, "team", "iris").await.is_ok());
        let refused = auth
            .authorize(&caller, "team", "churn")
            .await
            .expect_err("out of scope");
        assert_eq!(refused.to_api_error().kind, ErrorKind::PermissionDenied);
        assert!(refused.to_string().contains("team/churn"), "{refused}");

        // Revoked (`api-key revoke --file` rewrites the file): refused from the next call.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "[]\n").expect("rewrite");
        let revoked = auth.authenticate(&bearer(&key)).await.expect_err("revoked");
        assert!(revoked.to_string().contains("revoked"), "{revoked}");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn missing_wrong_and_foreign_credentials_are_401() {
        let (auth, key, path) = keyed();
        let mut wrong = key.clone();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(wrong.len() - 1.., last);
        let unknown = format!("sluice_{}_{}", "a".repeat(12), "b".repeat(64));
        for (headers, says) in [
            (HeaderMap::new(), "no credentials"),
            (bearer(&wrong), "does not match"),
            (bearer(&unknown), "unknown or was revoked"),
            (
                bearer("eyJhbGciOiJSUzI1NiJ9.e30.sig"),
                "only Sluice API keys",
            ),
        ] {
            let error = auth.authenticate(&headers).await.expect_err(says);
            assert_eq!(error.to_api_error().kind, ErrorKind::Unauthenticated);
            assert!(error.to_string().contains(says), "{error}");
        }
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YTpi"),
        );
        assert!(matches!(
            auth.authenticate(&basic).await,
            Err(AuthError::Malformed)
        ));
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn anonymous_callers_pass_only_where_allowed() {
        let open = Auth::open();
        let caller = open.authenticate(&HeaderMap::new()).await.expect("open");
        assert!(caller.identity.is_anonymous());
        assert!(open.authorize(&caller, "a", "b").await.is_ok());
        let lenient = Auth::new(
            AuthSettings {
                allow_anonymous: true,
                cache_ttl: Duration::ZERO,
                cache_size: 0,
            },
            None,
            KeySource::None,
        );
        let caller = lenient
            .authenticate(&HeaderMap::new())
            .await
            .expect("allowed");
        assert!(lenient.authorize(&caller, "a", "b").await.is_ok());
    }

    #[test]
    fn client_identity_headers_are_replaced_by_the_verified_ones() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-sluice-requester", "mallory"),
            ("x-sluice-shadow", "1"),
            ("x-sluice-groups", "system:masters"),
            ("x-forwarded-user", "mallory"),
            ("x-forwarded-email", "m@evil.example"),
            ("x-remote-user", "mallory"),
            ("content-type", "application/json"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_client_identity(&mut headers);
        set_identity(
            &mut headers,
            &Identity {
                user: "alice".into(),
                groups: vec!["ml".into(), "eng".into()],
                uid: None,
                key: Some(KeyScope {
                    id: "0123456789ab".into(),
                    endpoints: vec![],
                }),
            },
        );
        let mut left: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ("content-type", "application/json"),
                ("x-sluice-groups", "ml,eng"),
                ("x-sluice-key-id", "0123456789ab"),
                ("x-sluice-requester", "alice"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
