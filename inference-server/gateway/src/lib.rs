//! The gateway (`inference-server gateway`): the URL users call. It routes to model servers and
//! never runs a model itself, so it links no runtime and no table (standalone mode starts
//! `inference-server serve` processes, after fetching their models with `sluice-fetch`).
//!
//! A request goes: route ([`proxy`]) → endpoint by name → entity by traffic weight → a ready
//! pod by least outstanding requests (power of two choices, [`backend`]) → streamed back with
//! `served-model-name`. A scale-to-zero entity with no ready pod holds the request in a bounded
//! queue ([`hold`]) until a pod is ready; shadow routes mirror a share of requests without
//! touching the caller's answer. Global budgets ([`budget`]) shed requests at once when too
//! many are in flight or too many body bytes are buffered.
//!
//! What is routed comes from [`routing`] (pure: cluster objects or a manifest → specs), applied
//! to the live [`state`]; in a cluster from ServingEndpoint `status.config` and entity pods
//! ([`discovery`]), in standalone mode from a manifest ([`standalone`]). The admin port
//! ([`admin`]) serves metrics, per-entity demand for the autoscaler ([`demand`]) and probes.
//!
//! [`check`] is the client side: what `helm test` runs to tell that a release's operator and
//! gateway answer ([`release_check`]).

// The map above names private modules: they are documented with `cargo doc
// --document-private-items`; the public API is only what the binary calls.
#![allow(rustdoc::private_intra_doc_links)]

mod admin;
mod api_keys;
mod args;
pub mod auth;
mod backend;
mod budget;
mod cache;
mod connections;
mod databricks;
mod demand;
mod discovery;
pub mod external;
mod fallback;
pub mod guardrails;
mod health;
mod hold;
mod metering;
mod metrics;
pub mod mlflow;
mod proxy;
mod ratelimit;
mod record;
mod release_check;
mod routing;
mod server;
mod standalone;
mod state;

#[cfg(test)]
mod in_process_tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use api_keys::{ApiKeyArgs, ApiKeyError, run as api_key};
pub use args::GatewayArgs;
use metrics::GatewayMetrics;
pub use mlflow::{ImportArgs, ImportError, run_import as import_mlflow};
use proxy::{Proxy, ProxyConfig};
pub use release_check::{CheckArgs, CheckError, run as check};
pub use standalone::{ManifestError, StartError};
use state::State;

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No Kubernetes client could be made (no kubeconfig, no in-cluster account).
    #[error(
        "cannot reach the Kubernetes API (set KUBECONFIG, run in a pod, or use --standalone FILE): {0}"
    )]
    Kube(#[source] kube::Error),
    /// A watch's store was dropped before it had synced.
    #[error("watching the cluster failed: {0}")]
    WatchStore(#[source] kube::runtime::reflector::store::WriterDropped),
    /// A watch stream ended (the watcher retries its errors itself, so it never should).
    #[error("watching the cluster failed: a watch stream ended")]
    WatchEnded,
    /// The API keys file could not be read.
    #[error("API keys file {path}: {source}")]
    Keys {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: auth::keys::KeyFileError,
    },
    /// `--rate-limit-redis` is not a Redis URL.
    #[error("--rate-limit-redis: {0}")]
    RateLimitStore(#[source] redis::RedisError),
    /// The standalone manifest could not be read, or is not one standalone mode serves.
    #[error("standalone manifest {path}: {problem}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        problem: ManifestError,
    },
    /// The operator config given to standalone mode (`--config`) could not be read.
    #[error("standalone mode: {0}")]
    OperatorConfig(#[source] sluice_contract::config::ConfigError),
    /// A standalone entity could not be started.
    #[error("standalone mode: {0}")]
    Start(#[from] StartError),
}

/// Runs the gateway until `shutdown` resolves (the binary passes SIGTERM or SIGINT), then drains
/// in-flight requests.
pub async fn run(
    args: GatewayArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let mut registry = Registry::with_prefix("sluice_gateway");
    let metrics = GatewayMetrics::register(&mut registry);
    let limiter = Arc::new(limiter_of(&args, metrics.clone())?);
    let state = Arc::new(State::new(metrics));
    if args.max_buffered_bytes < args.max_body_bytes {
        tracing::warn!(
            max_buffered_bytes = args.max_buffered_bytes,
            max_body_bytes = args.max_body_bytes,
            "--max-buffered-bytes is below --max-body-bytes: larger bodies get 413"
        );
    }
    // Cluster mode talks to the API server: for routes, and to check callers.
    let mode = match &args.standalone {
        Some(path) => Mode::Standalone(path),
        None => Mode::Cluster(
            kube::Client::try_default()
                .await
                .map_err(GatewayError::Kube)?,
        ),
    };
    let client = match &mode {
        Mode::Cluster(client) => Some(client.clone()),
        Mode::Standalone(_) => None,
    };
    // External models' provider keys: from the cluster's Secrets, or the manifest's.
    let keys = Arc::new(match &client {
        Some(client) => external::Keys::cluster(client.clone()),
        None => external::Keys::standalone(),
    });
    let (auth, key_watch) = auth_of(&args, client.clone())?;
    let auth = Arc::new(auth);
    let key_task = key_watch.map(|watch| {
        let synced = auth.keys_synced();
        tokio::spawn(async move {
            futures::future::join(watch, synced).await;
        })
    });
    let proxy = Arc::new(Proxy::new(
        state.clone(),
        ProxyConfig {
            max_body_bytes: args.max_body_bytes,
            body_timeout: args.body_timeout,
            body_idle_timeout: args.body_idle_timeout,
            max_in_flight: args.max_in_flight.get(),
            max_buffered_bytes: args.max_buffered_bytes,
            request_timeout: args.request_timeout,
            response_idle_timeout: args.response_idle_timeout,
            max_attempts: args.max_attempts as usize,
            max_shadow_in_flight: args.max_shadow_in_flight,
        },
        auth.clone(),
        limiter,
        keys.clone(),
    ));
    let management = match (&client, args.management_api) {
        (Some(kube), true) => Some(Arc::new(databricks::Management {
            client: kube.clone(),
            auth: auth.clone(),
            namespaces: args.namespaces.clone(),
            default_namespace: args.api_namespace.clone(),
            labels: args
                .selector
                .as_deref()
                .map(sluice_contract::labels::selector_labels)
                .unwrap_or_default(),
            metrics: state.metrics().clone(),
        })),
        _ => None,
    };
    let listener = bind(args.listen).await?;
    let admin_listener = bind(args.admin_listen).await?;
    let admin = Arc::new(admin::Admin {
        state: state.clone(),
        registry,
        draining: AtomicBool::new(false),
        auth: auth.clone(),
    });
    let listen = listener.local_addr().unwrap_or(args.listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(args.admin_listen);
    sluice_protocol::process::announce("gateway", listen);
    sluice_protocol::process::announce("admin", admin_addr);
    tracing::info!(%listen, admin = %admin_addr, "gateway listening");
    let admin_server = axum::serve(admin_listener, admin::router(admin.clone()));
    let admin_task = tokio::spawn(async move { admin_server.await });
    let health_task = (!args.health_interval.is_zero()).then(|| {
        tokio::spawn(health::run(
            state.clone(),
            args.health_path.clone(),
            args.health_interval,
        ))
    });
    // Pods of waking entities, probed before the kubelet calls them Ready (cluster mode).
    let warm_task = args.standalone.is_none().then(|| {
        tokio::spawn(health::probe_warming(
            state.clone(),
            args.health_path.clone(),
        ))
    });

    // The source of routes: a manifest, or the cluster.
    let source: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), GatewayError>> + Send + '_>,
    > = match mode {
        Mode::Standalone(path) => {
            let work_dir = args.work_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("sluice-gateway-{}", std::process::id()))
            });
            let (state, args, keys) = (state.clone(), &args, keys.clone());
            Box::pin(
                async move { standalone::run(path, args, &work_dir, listen, &state, &keys).await },
            )
        }
        Mode::Cluster(client) => Box::pin(discovery::run(
            client,
            &args.namespaces,
            args.selector.as_deref().filter(|s| !s.is_empty()),
            state.clone(),
        )),
    };

    let draining = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let admin = admin.clone();
        let draining = draining.clone();
        let delay = args.drain_delay;
        async move {
            shutdown.await;
            admin.draining.store(true, Ordering::Relaxed);
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "shutting down: not ready any more, still routing until load balancers have noticed"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutting down: no new connections; draining in-flight requests");
            draining.notify_one();
        }
    };
    let routes = match management {
        Some(management) => databricks::router(management).merge(proxy.clone().router()),
        None => proxy.clone().router(),
    };
    let server = server::serve(listener, proxy, routes, signal);
    let drain_timeout = args.drain_timeout;
    let result = tokio::select! {
        () = server => Ok(()),
        failed = source => failed,
        () = async {
            draining.notified().await;
            tokio::time::sleep(drain_timeout).await;
        } => {
            tracing::warn!(?drain_timeout, "drain deadline passed with requests still in flight");
            Ok(())
        }
    };
    admin_task.abort();
    for task in [health_task, warm_task, key_task].into_iter().flatten() {
        task.abort();
    }
    result
}

/// Where routes come from.
enum Mode<'a> {
    /// A manifest file.
    Standalone(&'a std::path::Path),
    /// The cluster, through this client.
    Cluster(kube::Client),
}

/// How callers are checked, and the watch that keeps the API key Secrets (cluster mode with
/// `--api-keys-namespace`).
fn auth_of(
    args: &GatewayArgs,
    client: Option<kube::Client>,
) -> Result<(auth::Auth, Option<futures::future::BoxFuture<'static, ()>>), GatewayError> {
    use auth::{Auth, AuthSettings, KeySource};
    use futures::FutureExt;

    let settings = AuthSettings {
        allow_anonymous: args.allow_anonymous,
        cache_ttl: args.auth_cache_ttl,
        cache_size: args.auth_cache_size,
    };
    let file = args
        .api_keys_file
        .as_deref()
        .map(|path| {
            auth::keys::KeyFile::open(path).map_err(|source| GatewayError::Keys {
                path: path.to_path_buf(),
                source,
            })
        })
        .transpose()?;
    let Some(client) = client else {
        return Ok(match file {
            Some(file) => (Auth::new(settings, None, KeySource::File(file)), None),
            None => {
                tracing::warn!(
                    "standalone without --api-keys-file: callers are not checked (every one is anonymous)"
                );
                (Auth::open(), None)
            }
        });
    };
    let (keys, watch) = match (file, &args.api_keys_namespace) {
        (Some(file), _) => (KeySource::File(file), None),
        (None, Some(namespace)) => {
            let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
                kube::Api::namespaced(client.clone(), namespace);
            let (store, watch) = sluice_watch::store(
                secrets,
                kube::runtime::watcher::Config::default().labels(auth::keys::LABEL),
                "gateway: API keys",
                || {},
            );
            (
                KeySource::Secrets {
                    store,
                    namespace: namespace.clone(),
                },
                Some(watch.boxed()),
            )
        }
        (None, None) => (KeySource::None, None),
    };
    if args.allow_anonymous {
        tracing::warn!("--allow-anonymous: callers without credentials are let through");
    }
    Ok((Auth::new(settings, Some(client), keys), watch))
}

/// The rate limiter the flags describe: Redis when one is named, else this replica's share.
fn limiter_of(
    args: &GatewayArgs,
    metrics: GatewayMetrics,
) -> Result<ratelimit::RateLimiter, GatewayError> {
    use ratelimit::{RateLimiter, store::RedisCounters};
    Ok(match &args.rate_limit_redis {
        Some(url) => {
            let counters = RedisCounters::new(url, args.rate_limit_timeout)
                .map_err(GatewayError::RateLimitStore)?;
            tracing::info!(redis = counters.url(), fail_mode = ?args.rate_limit_fail_mode, "rate limits counted in Redis");
            RateLimiter::redis(counters, args.rate_limit_fail_mode, metrics)
        }
        None => RateLimiter::local(args.rate_limit_replicas, metrics),
    })
}

async fn bind(address: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| GatewayError::Bind { address, source })
}
