//! `sluice-operator`: runs the Sluice controllers against the cluster it finds (in-cluster
//! service account, or KUBECONFIG).
//!
//! Life cycle: the probe server starts first (`/healthz`, `/readyz`, `/metrics`); with
//! `--leader-elect` the process stands by until it holds the Lease, then runs the controllers;
//! `/readyz` turns true once their watches have synced. SIGTERM or SIGINT turns `/readyz` false,
//! lets in-flight reconciles finish, releases the Lease and exits 0; a second signal exits at
//! once. Losing the Lease exits 1 at once, so no write happens without it and the Deployment
//! restarts the process as a candidate.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use kube::{client::ClientBuilder, runtime::events::Reporter};
use prometheus_client::registry::Registry;
use sluice_contract::config::OperatorConfig;
use sluice_operator::{
    CONTROLLER_NAME, autoscaler,
    caches::Caches,
    endpoint,
    health::{self, Health, Phase},
    leader::{Elector, LeaseConfig, default_identity},
    metrics::{Metrics, verb_of},
    model_version, registry as mirrors,
    runtime::{Env, Shutdown},
};
use sluice_watch::Synced;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    version,
    about = "The Sluice operator: ServingEndpoint and ModelVersion controllers"
)]
struct Args {
    /// Operator configuration (workload table, images, lake root); defaults when absent.
    #[arg(long, env = "SLUICE_OPERATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Identity on events and in the Lease (the pod name); `<hostname>-<pid>` when unset.
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Address of the probe server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, default_value = "0.0.0.0:8090")]
    probe_addr: SocketAddr,
    /// Manage only these namespaces (repeatable, or comma-separated); the whole cluster when
    /// unset. With a list, every watch is namespaced, so Roles in those namespaces suffice.
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Manage only the ServingEndpoints and ModelVersions matching this label selector (e.g.
    /// `sluice.dev/installation=prod`), so several installations can share namespaces.
    #[arg(long, env = "SLUICE_SELECTOR")]
    selector: Option<String>,
    /// Run the controllers only while holding the Lease (for more than one replica).
    #[arg(long)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "sluice-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sluice-system")]
    lease_namespace: String,
    /// Seconds a Lease stays taken after its holder's last renewal.
    #[arg(long, default_value_t = 15.0)]
    lease_duration_seconds: f64,
    /// Seconds the holder keeps retrying a renewal before it stops leading (and exits).
    #[arg(long, default_value_t = 10.0)]
    renew_deadline_seconds: f64,
    /// Seconds between looks at the Lease (candidates) and renewals (holder).
    #[arg(long, default_value_t = 2.0)]
    retry_period_seconds: f64,
    /// Admin base URL of a gateway to read demand from (`http://host:port`; repeatable). When
    /// unset, gateways are found as pods by `--gateway-selector`.
    #[arg(long = "gateway-admin-url")]
    gateway_admin_urls: Vec<String>,
    /// Label selector of the gateway pods (their `admin` container port serves `/demand`).
    #[arg(long, default_value = "app.kubernetes.io/component=gateway")]
    gateway_selector: String,
    /// Namespace of the gateway pods (all namespaces when unset).
    #[arg(long, env = "SLUICE_GATEWAY_NAMESPACE")]
    gateway_namespace: Option<String>,
    /// Seconds between two autoscaler rounds (a held request wakes it at once).
    #[arg(long, default_value_t = 1.0)]
    autoscale_interval_seconds: f64,
    /// The autoscaler's stable averaging window, in seconds.
    #[arg(long, default_value_t = 60.0)]
    stable_window_seconds: f64,
    /// The autoscaler's panic window, in seconds.
    #[arg(long, default_value_t = 6.0)]
    panic_window_seconds: f64,
    /// Seconds in-flight reconciles get to finish after SIGTERM.
    #[arg(long, default_value_t = 20.0)]
    drain_timeout_seconds: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Two rustls backends are linked in the workspace build (kube's ring, deltalake's
    // aws-lc-rs): choose ring, as the kube client does, or the first client panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => OperatorConfig::load(path)?,
        None => OperatorConfig::default(),
    };
    let identity = args.instance.clone().unwrap_or_else(default_identity);

    let mut registry = Registry::with_prefix("sluice_operator");
    let metrics = Arc::new(Metrics::new(&mut registry));
    let autoscaler_metrics = autoscaler::AutoscalerMetrics::new(&mut registry);
    let health = Health::new(&[endpoint::controller::WATCH, model_version::WATCH]);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown: Shutdown = wait_true(stop_rx).boxed().shared();
    spawn_signal_handler(health.clone(), stop_tx);

    // The probe server outlives the controllers: it stops last.
    let (probes_tx, probes_rx) = tokio::sync::watch::channel(false);
    let (bound, server) = health::serve(
        args.probe_addr,
        health.clone(),
        Arc::new(registry),
        wait_true(probes_rx),
    )
    .await
    .with_context(|| format!("binding the probe server on {}", args.probe_addr))?;
    let server = tokio::spawn(server);
    info!(probe_addr = %bound, %identity, "sluice-operator starting");

    let client = counted_client(metrics.clone()).await?;
    let env = Env {
        client: client.clone(),
        namespace: None,
        namespaces: args
            .namespaces
            .iter()
            .filter(|ns| !ns.is_empty())
            .cloned()
            .collect(),
        selector: args.selector.clone().filter(|s| !s.is_empty()),
        reporter: Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(identity.clone()),
        },
        metrics: metrics.clone(),
        health: health.clone(),
        shutdown: shutdown.clone(),
    };

    let mut elector = if args.leader_elect {
        let lease = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs_f64(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs_f64(args.renew_deadline_seconds),
            retry_period: Duration::from_secs_f64(args.retry_period_seconds),
        };
        Some(Elector::new(client, lease)?)
    } else {
        None
    };

    if let Some(elector) = elector.as_mut() {
        health.set_phase(Phase::StandingBy);
        info!(lease = %args.lease_name, namespace = %args.lease_namespace, "standing by for the Lease");
        tokio::select! {
            () = elector.acquire(&health) => {}
            () = shutdown.clone() => {
                info!("shut down while standing by");
                let _ = probes_tx.send(true);
                let _ = server.await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    health.set_phase(Phase::Leading);
    metrics.set_leader(true);
    info!("leading: starting the controllers");

    let drain = Duration::from_secs_f64(args.drain_timeout_seconds);
    let scaling = autoscaler::Options {
        gateways: if args.gateway_admin_urls.is_empty() {
            autoscaler::GatewaySource::Pods {
                namespace: args.gateway_namespace.clone(),
                selector: args.gateway_selector.clone(),
                port_name: "admin".into(),
            }
        } else {
            autoscaler::GatewaySource::Urls(args.gateway_admin_urls.clone())
        },
        interval: Duration::from_secs_f64(args.autoscale_interval_seconds),
        windows: autoscaler::Windows {
            stable: Duration::from_secs_f64(args.stable_window_seconds),
            panic: Duration::from_secs_f64(args.panic_window_seconds),
            ..autoscaler::Windows::default()
        },
    };
    let controllers = async {
        // One set of watches and controllers per managed namespace (or one for the whole
        // cluster); the controllers of a scope share its watches.
        let mut synced = Vec::new();
        let both = futures::future::join_all(env.per_namespace().into_iter().map(|env| {
            let mut caches = Caches::new(&env);
            synced.push((caches.endpoints.synced(), caches.models.synced()));
            env.metrics.monitoring.watch(caches.endpoints.store());
            let versions = model_version::run(
                env.clone(),
                config.images.inference_server.clone(),
                &mut caches,
            );
            let endpoints = endpoint::controller::run(env.clone(), config.clone(), &mut caches);
            let scaling = autoscaler::run(
                env,
                scaling.clone(),
                autoscaler_metrics.clone(),
                &mut caches,
            );
            async move {
                // The watches stop once the controllers have drained, not before.
                tokio::select! {
                    _ = futures::future::join3(versions, endpoints, scaling) => {}
                    () = caches.run() => {}
                }
            }
        }));
        report_synced(&health, synced);
        // Draining is bounded: a controller whose watch never synced (the API unreachable)
        // would otherwise wait for it forever.
        let mirroring = mirrors::run(
            env.client.clone(),
            config.registries.clone(),
            env.selector
                .as_deref()
                .map(sluice_contract::labels::selector_labels)
                .unwrap_or_default(),
            env.metrics.clone(),
            env.shutdown.clone(),
        );
        let deadline = shutdown.clone().then(|()| tokio::time::sleep(drain));
        tokio::select! {
            _ = futures::future::join(both, mirroring) => {}
            () = deadline => warn!(?drain, "controllers did not drain in time; stopping anyway"),
        }
    };
    match elector.as_mut() {
        Some(elector) => {
            tokio::select! {
                lost = elector.hold() => {
                    // Exit at once: a reconcile still running must not write without the Lease.
                    error!(error = %lost, "lost the Lease; exiting");
                    std::process::exit(1);
                }
                () = controllers => {}
            }
        }
        None => controllers.await,
    }
    metrics.set_leader(false);
    let requested = health.phase() == Phase::ShuttingDown;
    if let Some(elector) = elector.as_mut()
        && let Err(e) = elector.release().await
    {
        warn!(error = %e, "releasing the Lease");
    }
    let _ = probes_tx.send(true);
    let _ = server.await;
    if requested {
        info!("shut down");
        Ok(ExitCode::SUCCESS)
    } else {
        error!("the controllers stopped without a shutdown request");
        Ok(ExitCode::FAILURE)
    }
}

/// Marks the custom resources' watches synced in readiness once every scope's first full list
/// has arrived.
fn report_synced(health: &Health, scopes: Vec<(Synced, Synced)>) {
    let (endpoints, models): (Vec<Synced>, Vec<Synced>) = scopes.into_iter().unzip();
    for (name, scopes) in [
        (endpoint::controller::WATCH, endpoints),
        (model_version::WATCH, models),
    ] {
        let health = health.clone();
        tokio::spawn(async move {
            for synced in scopes {
                if synced.wait().await.is_err() {
                    return;
                }
            }
            info!(watch = name, "watch synced");
            health.synced(name);
        });
    }
}

/// A client over the inferred config (in-cluster or KUBECONFIG) that counts every request.
async fn counted_client(metrics: Arc<Metrics>) -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer()
        .await
        .context("finding cluster credentials")?;
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        metrics.api_request(verb_of(req.method(), req.uri().query()));
        req
    });
    Ok(ClientBuilder::try_from(config)
        .context("building the API client")?
        .with_layer(&count)
        .build())
}

/// Completes once `rx` holds true (or its sender is gone).
async fn wait_true(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// SIGTERM or SIGINT: readiness false, then shutdown; a second signal exits at once.
fn spawn_signal_handler(health: Health, stop: tokio::sync::watch::Sender<bool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        info!("shutdown requested: draining");
        health.set_phase(Phase::ShuttingDown);
        let _ = stop.send(true);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        warn!("second signal: exiting now");
        std::process::exit(130);
    });
}
