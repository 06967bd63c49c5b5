//! `spec.aiGateway.responseCache`: a repeated request answered from the gateway's memory.
//!
//! The key is a SHA-256 of the endpoint, the route, the entity a request names (if any) and the
//! body normalised (JSON with object keys sorted and no whitespace; the OpenAI `user` field,
//! which names the caller and not the question, left out; any other body as its bytes). Only
//! requests whose answer does not depend on chance are cached: no stream, and for chat and text
//! completions a `temperature` of 0 unless the endpoint says `cacheNonDeterministic`. An answer
//! is kept when it is a whole 2xx JSON or text answer that fits the entry limit (an eighth of
//! the endpoint's size cap); it is copied as it streams to the caller ([`Filling`]), never
//! held back. Each endpoint's answers stay within `maxSizeMiB` per gateway replica, the least
//! recently used dropped first (counted), and each lives `ttlSeconds`. Hits, misses and
//! bypasses are counted per endpoint; a hit carries `x-sluice-cache: hit`.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use hyper::body::{Frame, SizeHint};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_crds::ServingEndpoint;

use crate::metrics::{CacheOutcome, GatewayMetrics};
use crate::routing::EndpointKey;

/// The header that tells a cached answer (`hit`) from a fresh one (`miss`).
pub const CACHE_HEADER: &str = "x-sluice-cache";

/// What an endpoint's spec asks of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long an answer is reused.
    pub ttl: Duration,
    /// Most bytes of answers kept for the endpoint.
    pub max_bytes: usize,
    /// Whether sampled (temperature > 0) completions are cached too.
    pub non_deterministic: bool,
}

impl CachePolicy {
    /// The cache policy of `endpoint`, when its cache is on.
    pub fn of(endpoint: &ServingEndpoint) -> Option<Self> {
        let cache = endpoint
            .spec
            .ai_gateway
            .as_ref()?
            .response_cache
            .as_ref()
            .filter(|c| c.enabled)?;
        let ttl = cache
            .ttl_seconds
            .map_or(300, |s| u64::try_from(s).unwrap_or(300));
        let mib = cache
            .max_size_mib
            .map_or(64, |m| usize::try_from(m).unwrap_or(64));
        Some(Self {
            ttl: Duration::from_secs(ttl.max(1)),
            max_bytes: mib.max(1) << 20,
            non_deterministic: cache.cache_non_deterministic.unwrap_or(false),
        })
    }

    /// The largest answer kept.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_bytes / 8
    }
}

/// Why a request is not looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bypass {
    /// A streamed answer.
    Stream,
    /// A sampled completion (temperature above 0, or not given: the default samples).
    Sampled,
}

/// The cache key of a request to `route` of `endpoint`, or why it is not cached.
pub fn key(
    policy: &CachePolicy,
    endpoint: &EndpointKey,
    route: &str,
    entity: Option<&str>,
    body: &[u8],
) -> Result<[u8; 32], Bypass> {
    let mut hasher = Sha256::new();
    let parts = [
        endpoint.namespace.as_str(),
        &endpoint.name,
        route,
        entity.unwrap_or(""),
    ];
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut map)) => {
            if map.get("stream").and_then(Value::as_bool) == Some(true) {
                return Err(Bypass::Stream);
            }
            let completes = map.contains_key("messages") || map.contains_key("prompt");
            if completes && !policy.non_deterministic {
                let temperature = map.get("temperature").and_then(Value::as_f64);
                if temperature != Some(0.0) {
                    return Err(Bypass::Sampled);
                }
            }
            map.remove("user");
            hasher.update(b"json");
            canonical(&Value::Object(map), &mut hasher);
        }
        Ok(value) => {
            hasher.update(b"json");
            canonical(&value, &mut hasher);
        }
        Err(_) => {
            hasher.update(b"raw");
            hasher.update(body);
        }
    }
    Ok(hasher.finalize().into())
}

/// Feeds `value` to `hasher` with object keys sorted, whatever order they came in.
fn canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            hasher.update(b"{");
            for (key, value) in sorted {
                hasher.update(serde_json::to_string(key).unwrap_or_default().as_bytes());
                hasher.update(b":");
                canonical(value, hasher);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                canonical(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        other => hasher.update(other.to_string().as_bytes()),
    }
}

/// One cached answer.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The answer's body.
    pub body: Bytes,
    /// Its status.
    pub status: u16,
    /// Its content type.
    pub content_type: Option<HeaderValue>,
    /// The entity that answered (`served-model-name`).
    pub entity: HeaderValue,
    stored: Instant,
    used: u64,
}

#[derive(Debug, Default)]
struct Store {
    entries: HashMap<[u8; 32], Entry>,
    /// Use tick → key: the least recently used first.
    order: BTreeMap<u64, [u8; 32]>,
    tick: u64,
    bytes: usize,
}

/// The cached answers of one endpoint.
#[derive(Debug)]
pub struct Cache {
    store: Mutex<Store>,
    /// Whose answers they are (and the labels of its metrics).
    endpoint: EndpointKey,
    metrics: GatewayMetrics,
}

impl Cache {
    fn new(endpoint: EndpointKey, metrics: GatewayMetrics) -> Self {
        Self {
            store: Mutex::default(),
            endpoint,
            metrics,
        }
    }

    /// The endpoint whose answers these are.
    pub fn endpoint(&self) -> &EndpointKey {
        &self.endpoint
    }

    /// Counts one lookup's outcome.
    pub fn count(&self, outcome: CacheOutcome) {
        let EndpointKey { namespace, name } = &self.endpoint;
        self.metrics.cache(namespace, name, outcome);
    }

    /// The live answer under `key`, if any (an expired one is dropped).
    pub fn get(&self, key: &[u8; 32], ttl: Duration) -> Option<Entry> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let store = &mut *store;
        let entry = store.entries.get(key)?;
        if entry.stored.elapsed() >= ttl {
            let gone = store.entries.remove(key)?;
            store.order.remove(&gone.used);
            store.bytes -= gone.body.len();
            self.count_bytes(store.bytes);
            return None;
        }
        store.tick += 1;
        let tick = store.tick;
        let entry = store.entries.get_mut(key)?;
        store.order.remove(&entry.used);
        entry.used = tick;
        store.order.insert(tick, *key);
        Some(entry.clone())
    }

    /// Keeps `entry` under `key`, dropping the least recently used answers past `max_bytes`.
    fn put(&self, key: [u8; 32], mut entry: Entry, max_bytes: usize) {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let store = &mut *store;
        store.tick += 1;
        entry.used = store.tick;
        store.bytes += entry.body.len();
        store.order.insert(entry.used, key);
        if let Some(old) = store.entries.insert(key, entry) {
            store.order.remove(&old.used);
            store.bytes -= old.body.len();
        }
        while store.bytes > max_bytes {
            let Some((_, oldest)) = store.order.pop_first() else {
                break;
            };
            if let Some(gone) = store.entries.remove(&oldest) {
                store.bytes -= gone.body.len();
                let EndpointKey { namespace, name } = &self.endpoint;
                self.metrics.cache_evicted(namespace, name);
            }
        }
        self.count_bytes(store.bytes);
    }

    /// Sets the gauge of bytes kept.
    fn count_bytes(&self, bytes: usize) {
        let EndpointKey { namespace, name } = &self.endpoint;
        self.metrics.cache_bytes(namespace, name, bytes);
    }
}

/// Every endpoint's cache in this gateway.
#[derive(Debug)]
pub struct Caches {
    by_endpoint: Mutex<HashMap<EndpointKey, Arc<Cache>>>,
    metrics: GatewayMetrics,
}

impl Caches {
    /// No cached answers yet.
    pub fn new(metrics: GatewayMetrics) -> Self {
        Self {
            by_endpoint: Mutex::default(),
            metrics,
        }
    }

    /// The cache of an endpoint.
    pub fn of(&self, namespace: &str, endpoint: &str) -> Arc<Cache> {
        self.by_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(EndpointKey {
                namespace: namespace.to_string(),
                name: endpoint.to_string(),
            })
            .or_insert_with_key(|key| Arc::new(Cache::new(key.clone(), self.metrics.clone())))
            .clone()
    }
}

/// Whether an answer with `headers` can be kept: whole JSON or text.
pub fn keepable(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            !v.starts_with("text/event-stream")
                && (v.starts_with("application/json")
                    || v.contains("+json")
                    || v.starts_with("text/"))
        })
}

/// An answer passing to the caller, copied into the cache when it ends whole and fits.
pub struct Filling {
    inner: Body,
    copy: Vec<u8>,
    /// `None` once it grew past the entry limit or failed.
    target: Option<(Arc<Cache>, [u8; 32], CachePolicy)>,
    entry: Option<Entry>,
}

impl Filling {
    /// Wraps `inner`, the body of an answer with `status`, `content_type` from `entity`.
    pub fn new(
        inner: Body,
        cache: Arc<Cache>,
        key: [u8; 32],
        policy: CachePolicy,
        status: u16,
        content_type: Option<HeaderValue>,
        entity: HeaderValue,
    ) -> Self {
        Self {
            inner,
            copy: Vec::new(),
            target: Some((cache, key, policy)),
            entry: Some(Entry {
                body: Bytes::new(),
                status,
                content_type,
                entity,
                stored: Instant::now(),
                used: 0,
            }),
        }
    }
}

impl Filling {
    /// The answer ended whole: keep it (once).
    fn complete(&mut self) {
        if let (Some((cache, key, policy)), Some(mut entry)) =
            (self.target.take(), self.entry.take())
        {
            entry.body = Bytes::from(std::mem::take(&mut self.copy));
            entry.stored = Instant::now();
            cache.put(key, entry, policy.max_bytes);
        }
    }
}

impl hyper::body::Body for Filling {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((_, _, policy))) = (frame.data_ref(), &this.target) {
                    if this.copy.len() + data.len() > policy.max_entry_bytes() {
                        this.target = None;
                        this.copy = Vec::new();
                    } else {
                        this.copy.extend_from_slice(data);
                    }
                }
                // A body that knows its length ends with its last frame: the server may not
                // ask for more.
                if this.inner.is_end_stream() {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.target = None;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.complete();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prometheus_client::registry::Registry;

    fn endpoint(name: &str) -> EndpointKey {
        EndpointKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn policy() -> CachePolicy {
        CachePolicy {
            ttl: Duration::from_secs(60),
            max_bytes: 8 * 100,
            non_deterministic: false,
        }
    }

    #[test]
    fn equal_requests_share_a_key_whatever_their_layout() {
        let p = policy();
        let key = |body: &str| {
            key(
                &p,
                &endpoint("ep"),
                "/v1/chat/completions",
                None,
                body.as_bytes(),
            )
        };
        let a =
            key(r#"{"model":"ep","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        let b = key(
            r#"{ "messages": [ {"content": "hi", "role": "user"} ], "temperature": 0, "model": "ep", "user": "u9" }"#,
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            key(r#"{"model":"ep","temperature":0,"messages":[{"role":"user","content":"ho"}]}"#)
        );
        assert_eq!(key(r#"{"model":"ep","messages":[]}"#), Err(Bypass::Sampled));
        assert_eq!(
            key(r#"{"model":"ep","temperature":0.7,"messages":[]}"#),
            Err(Bypass::Sampled)
        );
        assert_eq!(
            key(r#"{"model":"ep","temperature":0,"stream":true,"messages":[]}"#),
            Err(Bypass::Stream)
        );
        let sampled = CachePolicy {
            non_deterministic: true,
            ..p
        };
        assert!(
            super::key(
                &sampled,
                &endpoint("ep"),
                "/v1/chat/completions",
                None,
                br#"{"temperature":1,"messages":[]}"#
            )
            .is_ok()
        );
        // Another endpoint (or namespace), route or entity is another answer.
        let ask = |endpoint: &EndpointKey, route, entity| {
            super::key(&p, endpoint, route, entity, br#"{"inputs":[1]}"#)
        };
        let plain = ask(&endpoint("ep"), "/invocations", None);
        assert_ne!(plain, ask(&endpoint("ep2"), "/invocations", None));
        let elsewhere = EndpointKey {
            namespace: "ns2".into(),
            ..endpoint("ep")
        };
        assert_ne!(plain, ask(&elsewhere, "/invocations", None));
        assert_ne!(plain, ask(&endpoint("ep"), "/v1/embeddings", None));
        assert_ne!(plain, ask(&endpoint("ep"), "/invocations", Some("a")));
    }

    #[tokio::test]
    async fn answers_fill_the_cache_expire_and_leave_least_recently_used_first() {
        let metrics = GatewayMetrics::register(&mut Registry::default());
        let cache = Arc::new(Cache::new(endpoint("ep"), metrics));
        let p = policy();
        let fill = |k: u8, body: &'static str| {
            Filling::new(
                Body::from(body),
                cache.clone(),
                [k; 32],
                p,
                200,
                None,
                HeaderValue::from_static("a"),
            )
        };
        for k in 0..3 {
            let _ = fill(k, "x".repeat(100).leak()).collect().await.unwrap();
        }
        assert!(
            cache.get(&[0; 32], p.ttl).is_some(),
            "0 is now the most recent"
        );
        // 100 more bytes: over 800? no; fill up to the cap and past it.
        for k in 3..9 {
            let _ = fill(k, "y".repeat(100).leak()).collect().await.unwrap();
        }
        assert!(
            cache.get(&[1; 32], p.ttl).is_none(),
            "the least recently used went"
        );
        assert!(cache.get(&[0; 32], p.ttl).is_some());
        assert!(cache.get(&[8; 32], Duration::ZERO).is_none(), "expired");
        // An answer past the entry limit (an eighth of the cap) passes but is not kept.
        let big = fill(20, "z".repeat(101).leak())
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(big.len(), 101);
        assert!(cache.get(&[20; 32], p.ttl).is_none());
    }
}
