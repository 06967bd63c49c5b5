//! The real `inference-server gateway` in cluster mode against the local control plane.

use std::path::PathBuf;
use std::time::Duration;

use crate::binaries::built;
use crate::cluster::ControlPlane;

/// A running gateway; killed when dropped.
pub struct GatewayProcess {
    child: tokio::process::Child,
    /// Base URL of the serving routes.
    pub base: String,
    /// Base URL of the admin routes (`/metrics`, `/demand`, `/readyz`).
    pub admin: String,
    /// Its log file.
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Kills the process with SIGKILL (no drain), as a crashed or evicted replica ends.
    pub fn sigkill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Starts a gateway watching `namespace` with `kubeconfig` that lets callers without
    /// credentials through (`--allow-anonymous`: the tests that use it are about routing), and
    /// waits until `/readyz` answers 200 (its watches synced).
    pub async fn start(cp: &ControlPlane, kubeconfig: &std::path::Path, namespace: &str) -> Self {
        Self::start_with(cp, kubeconfig, namespace, &["--allow-anonymous"]).await
    }

    /// As [`Self::start`], with the flags `args` instead of `--allow-anonymous`.
    pub async fn start_with(
        cp: &ControlPlane,
        kubeconfig: &std::path::Path,
        namespace: &str,
        args: &[&str],
    ) -> Self {
        // Pods live on 127.0.0.0/8 in the local cluster; the gateway dials them directly. Port
        // 0 for both listeners: it announces what it bound in its output (the log).
        let log = cp
            .state_dir
            .join("logs")
            .join(format!("gateway-{namespace}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("gateway log: {e}"));
        let child = tokio::process::Command::new(built("inference-server", "inference-server"))
            .arg("gateway")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--namespace", namespace])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("SLUICE_LOG", "info,kube=warn")
            .stdout(
                file.try_clone()
                    .unwrap_or_else(|e| panic!("gateway log: {e}")),
            )
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the gateway: {e}"));
        let bound =
            crate::process::announced(&log, &["gateway", "admin"], Duration::from_secs(30)).await;
        let gateway = Self {
            child,
            base: format!("http://{}", bound[0]),
            admin: format!("http://{}", bound[1]),
            log,
        };
        let client = reqwest::Client::new();
        let ready = format!("{}/readyz", gateway.admin);
        crate::wait::eventually(
            "the gateway's watches to sync",
            Duration::from_secs(60),
            || crate::log_tail(&gateway.log, 40),
            || async {
                let response = client.get(&ready).send().await.ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
        gateway
    }
}
