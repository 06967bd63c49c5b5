//! Command-line flags of `inference-server gateway`, each also read from a `SLUICE_GATEWAY_*`
//! variable.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use sluice_protocol::units::{parse_bytes, parse_duration};

/// `inference-server gateway`: in a cluster (the default) it watches ServingEndpoints and
/// entity pods through the Kubernetes API (`KUBECONFIG` or the in-cluster service account);
/// with `--standalone` it serves the endpoints of a manifest file without Kubernetes.
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayArgs {
    /// Address the serving routes listen on.
    #[arg(long, env = "SLUICE_GATEWAY_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Address of the admin routes: `/metrics`, `/demand`, `/healthz`, `/readyz`.
    #[arg(
        long,
        env = "SLUICE_GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: SocketAddr,
    /// Namespaces to watch (repeat the flag or separate with commas); all when empty.
    #[arg(
        long = "namespace",
        env = "SLUICE_GATEWAY_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Serve only the ServingEndpoints matching this label selector (e.g.
    /// `sluice.dev/installation=prod`): the installation's selector, as its operator manages.
    #[arg(long, env = "SLUICE_SELECTOR")]
    pub selector: Option<String>,
    /// Serve the endpoints of this manifest (ServingEndpoints and the ModelVersions they name)
    /// without Kubernetes.
    #[arg(long, env = "SLUICE_GATEWAY_STANDALONE")]
    pub standalone: Option<PathBuf>,
    /// Standalone: an entity that already runs somewhere, as `ENTITY=HOST:PORT` or
    /// `ENDPOINT/ENTITY=HOST:PORT` (repeatable). Other entities are started as local
    /// `fetch` + `serve` processes.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    pub upstreams: Vec<Upstream>,
    /// Standalone: folder for fetched models and process logs (a temporary folder by default).
    #[arg(long, env = "SLUICE_GATEWAY_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Standalone: the operator config file (the chart's `operator.config`) whose defaults
    /// resolve the manifest's entities — hold limits, concurrency ranges — as the operator
    /// would resolve them; the operator's defaults when unset.
    #[arg(long = "config", env = "SLUICE_GATEWAY_CONFIG")]
    pub operator_config: Option<PathBuf>,
    /// Standalone: where `pvc://<claim>/<path>` sources are read (`<root>/<claim>/<path>`);
    /// the manifest's folder by default.
    #[arg(long, env = "SLUICE_GATEWAY_PVC_ROOT")]
    pub pvc_root: Option<PathBuf>,
    /// Serve the management API (`/api/2.0/serving-endpoints`, the Databricks SDK's routes):
    /// create, read, update and delete ServingEndpoints, each call authorised as its caller by
    /// RBAC. Cluster mode only; the gateway's ServiceAccount needs write access to
    /// servingendpoints (the chart's `gateway.managementApi.enabled`).
    #[arg(long, env = "SLUICE_GATEWAY_MANAGEMENT_API", default_value_t = true, action = clap::ArgAction::Set)]
    pub management_api: bool,
    /// The namespace where the management API creates an endpoint whose name does not say one
    /// (`<namespace>.<name>` does); without it, the one watched namespace.
    #[arg(long, env = "SLUICE_GATEWAY_API_NAMESPACE")]
    pub api_namespace: Option<String>,
    /// Let callers without credentials through as `system:anonymous`, with no authorization
    /// check; without it they get 401. (Standalone mode without `--api-keys-file` checks no
    /// caller at all.)
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Namespace of the API key Secrets (label `serving.sluice.dev/api-key`, made by
    /// `inference-server api-key create`), watched; the chart passes the release namespace.
    /// Without it (and without `--api-keys-file`) only Kubernetes tokens are accepted.
    #[arg(long, env = "SLUICE_GATEWAY_API_KEYS_NAMESPACE")]
    pub api_keys_namespace: Option<String>,
    /// A keys file (`inference-server api-key create --file`), read again whenever it changes.
    /// In standalone mode callers are checked only when this is given.
    #[arg(long, env = "SLUICE_GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// How long a TokenReview or SubjectAccessReview decision is reused: revoking a token or a
    /// RoleBinding takes effect within it. `0s` asks the API server on every request.
    #[arg(long, env = "SLUICE_GATEWAY_AUTH_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub auth_cache_ttl: Duration,
    /// Most of those decisions kept at once.
    #[arg(long, env = "SLUICE_GATEWAY_AUTH_CACHE_SIZE", default_value_t = 10_000)]
    pub auth_cache_size: usize,
    /// A Redis every gateway replica shares for `spec.aiGateway.rateLimits` budgets
    /// (`redis://[:password@]host:port[/db]`). Without it each replica counts alone and allows
    /// its share of every budget (`--rate-limit-replicas`).
    #[arg(long, env = "SLUICE_GATEWAY_RATE_LIMIT_REDIS")]
    pub rate_limit_redis: Option<String>,
    /// What to do with a rate-limited request when Redis cannot be asked: `open` lets it
    /// through, `closed` answers 503. Both are counted.
    #[arg(long, env = "SLUICE_GATEWAY_RATE_LIMIT_FAIL_MODE", value_enum, default_value_t = crate::ratelimit::FailMode::Open)]
    pub rate_limit_fail_mode: crate::ratelimit::FailMode,
    /// How long one Redis command may take before the fail mode applies.
    #[arg(long, env = "SLUICE_GATEWAY_RATE_LIMIT_TIMEOUT", default_value = "250ms", value_parser = parse_duration)]
    pub rate_limit_timeout: Duration,
    /// Without Redis: how many gateway replicas split each budget (each allows the limit
    /// divided by this, rounded up). The chart passes its replica count.
    #[arg(long, env = "SLUICE_GATEWAY_RATE_LIMIT_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_replicas: u32,
    /// Largest request body accepted (413 past it).
    #[arg(long, env = "SLUICE_GATEWAY_MAX_BODY_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_body_bytes: usize,
    /// How long a client may take to send its body (408 past it).
    #[arg(long, env = "SLUICE_GATEWAY_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// How long a client may send nothing while sending its body (408 past it), so a client
    /// that sent its headers and stalled lets go of its budgets long before `--body-timeout`.
    /// `0s` turns it off.
    #[arg(long, env = "SLUICE_GATEWAY_BODY_IDLE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_idle_timeout: Duration,
    /// Most requests in flight at once, across all endpoints: being read, held, proxied, or
    /// streaming their answer. More are refused at once with 503 and `Retry-After`, never
    /// queued.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_IN_FLIGHT", default_value = "4096")]
    pub max_in_flight: NonZeroUsize,
    /// Most bytes of request bodies buffered at once, across all requests (a body counts from
    /// its first byte read, or its declared length, until the request and its shadow copies
    /// are done with it). A body that does not fit is refused at once with 503 and
    /// `Retry-After`; one larger than the whole budget gets 413. Size it below the pod's memory
    /// limit: it is what bodies can take of it.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_BUFFERED_BYTES", default_value = "256MiB", value_parser = parse_budget_bytes)]
    pub max_buffered_bytes: usize,
    /// How long a pod may take to start answering (504 past it).
    #[arg(long, env = "SLUICE_GATEWAY_REQUEST_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long a pod may send nothing once it started answering (a stalled stream); past it
    /// the answer is cut off and the pod's connection closed. `0s` turns it off.
    #[arg(long, env = "SLUICE_GATEWAY_RESPONSE_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub response_idle_timeout: Duration,
    /// Pods tried for one request when connecting fails.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub max_attempts: u32,
    /// Most shadow requests in flight at once; more are shed and counted.
    #[arg(
        long,
        env = "SLUICE_GATEWAY_MAX_SHADOW_IN_FLIGHT",
        default_value_t = 256
    )]
    pub max_shadow_in_flight: usize,
    /// How often every backend is health-checked (`0s` turns active checks off).
    #[arg(long, env = "SLUICE_GATEWAY_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Path of the active health check; a 5xx or no answer takes the backend out of rotation.
    #[arg(long, env = "SLUICE_GATEWAY_HEALTH_PATH", default_value = "/health")]
    pub health_path: String,
    /// After SIGTERM, how long new requests are still accepted and routed while `/readyz`
    /// answers 503: the time Services and load balancers need to stop sending here (endpoint
    /// propagation). 0 stops accepting at once.
    #[arg(long, env = "SLUICE_GATEWAY_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// After SIGTERM and the drain delay, how long in-flight requests may finish before the
    /// gateway exits.
    #[arg(long, env = "SLUICE_GATEWAY_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// An entity that already runs at an address (standalone mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The endpoint, when the flag named one.
    pub endpoint: Option<String>,
    /// The entity.
    pub entity: String,
    /// Where it answers.
    pub address: SocketAddr,
}

/// A byte budget: a size, never zero.
fn parse_budget_bytes(text: &str) -> Result<usize, String> {
    match parse_bytes(text)? {
        0 => Err(format!("`{text}` leaves no room for any body")),
        bytes => Ok(bytes),
    }
}

fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let (target, address) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not ENTITY=HOST:PORT or ENDPOINT/ENTITY=HOST:PORT"))?;
    let address: SocketAddr = address
        .parse()
        .map_err(|e| format!("`{address}` in `{text}` is not HOST:PORT: {e}"))?;
    let (endpoint, entity) = match target.split_once('/') {
        Some((endpoint, entity)) => (Some(endpoint.to_string()), entity.to_string()),
        None => (None, target.to_string()),
    };
    if entity.is_empty() || endpoint.as_deref() == Some("") {
        return Err(format!("`{text}` names an empty endpoint or entity"));
    }
    Ok(Upstream {
        endpoint,
        entity,
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_and_refuse_zero() {
        assert_eq!(parse_budget_bytes("1MiB"), Ok(1 << 20));
        assert!(
            parse_budget_bytes("0")
                .expect_err("zero")
                .contains("no room")
        );
    }

    #[test]
    fn upstreams_parse_with_or_without_endpoint() {
        assert_eq!(
            parse_upstream("a=127.0.0.1:80").expect("parse"),
            Upstream {
                endpoint: None,
                entity: "a".into(),
                address: "127.0.0.1:80".parse().expect("addr")
            }
        );
        assert_eq!(
            parse_upstream("ep/a=127.0.0.1:80")
                .expect("parse")
                .endpoint
                .as_deref(),
            Some("ep")
        );
        assert!(
            parse_upstream("a")
                .expect_err("no =")
                .contains("ENTITY=HOST:PORT")
        );
        assert!(
            parse_upstream("a=nowhere")
                .expect_err("addr")
                .contains("not HOST:PORT")
        );
    }
}
