//! Our container images as a cluster would get them: built with podman from the project's own
//! Dockerfiles around the host-built binaries (`images/build.sh`, on the Debian-assembled
//! distroless base of `images/base/build.sh`), pushed by digest to a real OCI registry on a
//! loopback port (`images/registry/`), and pulled back from there.
//!
//! Podman runs as root with runc (`--runtime /usr/sbin/runc`: crun cannot use this machine's
//! hybrid cgroups) and lowered ulimits (the default ones are refused here); see
//! `docs/testing.md`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
};

use crate::repo_root;

/// `podman` with the runtime and flags this machine needs.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "/usr/sbin/runc"]);
    cmd
}

/// Runs a command to completion; its stdout, or a panic naming the command and its stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The loopback registry of this test binary; it stops when the test process exits (it reads
/// its stdin until the pipe closes).
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    _process: Child,
}

/// Starts (once per test binary) the loopback registry, blobs under a temporary folder.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let bin = run_ok(Command::new("bash").arg(repo_root().join("images/registry/build.sh")));
        let dir = std::env::temp_dir().join(format!("sluice-registry-{}", std::process::id()));
        let mut child = Command::new(bin)
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the registry: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("registry stdout"))
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading the registry's address: {e}"));
        let host = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the registry printed {line:?}"))
            .to_string();
        Registry {
            host,
            _process: child,
        }
    })
}

/// One of our images, pushed to the loopback registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// `127.0.0.1:<port>/sluice-dev/<component>`.
    pub repository: String,
    /// `sha256:…`, the manifest digest the registry holds.
    pub digest: String,
}

impl Pushed {
    /// `<repository>@<digest>`, how the chart and the operator config name it.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// Builds `component` (`inference-server` or `operator`) from its Dockerfile around the host
/// binary `binary` and pushes it to the loopback registry by digest. Once per component and
/// test binary; builds are serialised (podman prunes stage images after each build).
pub fn build_and_push(component: &str, binary: &std::path::Path) -> Pushed {
    push_once(&format!("sluice-dev/{component}"), || {
        run_ok(
            Command::new("bash")
                .arg(repo_root().join("images/build.sh"))
                .arg(component)
                .arg(binary),
        )
    })
}

/// One of our images (`inference-server` or `operator`), built from this workspace's binary
/// and pushed by digest.
pub fn ours(component: &str) -> Pushed {
    let binary = match component {
        "operator" => crate::binaries::built("sluice-operator", "sluice-operator"),
        _ => crate::binaries::built("inference-server", "inference-server"),
    };
    build_and_push(component, &binary)
}

/// The test-workload image (`images/tools/build.sh`: busybox and CPython on the distroless
/// base, running as root), pushed by digest: what test pods run in place of a shell or a
/// Python interpreter of the host.
pub fn tools() -> Pushed {
    push_once("sluice-test/tools", || {
        let bash = || {
            let mut cmd = Command::new("bash");
            cmd.arg(repo_root().join("images/tools/build.sh"));
            cmd
        };
        run_ok(&mut bash());
        "localhost/sluice-test/tools:latest".to_string()
    })
}

/// The MLflow runtime image (`images/mlflow/build.sh`: `mlflow models serve` with the flavors'
/// libraries, running as nonroot), pushed by digest: what entities with `runtime.engine:
/// mlflow` run.
pub fn mlflow_runtime() -> Pushed {
    push_once("sluice/mlflow-runtime", || {
        run_ok(
            Command::new("bash")
                .arg(repo_root().join("images/mlflow/build.sh"))
                .env("SLUICE_MLFLOW_RUNTIME_TAG", "test"),
        );
        "localhost/sluice/mlflow-runtime:test".to_string()
    })
}

/// Builds (with `build`, which returns the local tag) and pushes an image to
/// `<registry>/<path>` once per test binary; builds are serialised.
fn push_once(path: &str, build: impl FnOnce() -> String) -> Pushed {
    static PUSHED: OnceLock<Mutex<BTreeMap<String, Pushed>>> = OnceLock::new();
    let mut pushed = PUSHED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pushed.get(path) {
        return p.clone();
    }
    let tag = build();
    let repository = format!("{}/{path}", registry().host);
    // The release's own push script, so the tests push as a release does.
    let digest = run_ok(
        Command::new("bash")
            .arg(repo_root().join("images/push.sh"))
            .arg(&tag)
            .arg(format!("{repository}:{}", tag_of(&tag)))
            .env("PUSH_TLS_VERIFY", "false"),
    );
    let p = Pushed { repository, digest };
    pushed.insert(path.to_string(), p.clone());
    p
}

fn tag_of(image: &str) -> &str {
    image.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest")
}

/// Pulls `reference` from the loopback registry as a node does: `Ok(())`, or the error
/// message podman gives (what a pod's `ImagePullBackOff` shows).
pub fn pull(reference: &str) -> Result<(), String> {
    let out = podman()
        .args(["pull", "--quiet", "--tls-verify=false", reference])
        .output()
        .map_err(|e| format!("running podman pull: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The chart as a release publishes it: our two images made multi-architecture indexes
/// (`images/index.sh`, over the one architecture built here), the chart packaged with their
/// digests pinned in its default values (`charts/tools/package.sh`), and pushed as an OCI
/// artifact to the loopback registry (`helm push`), exactly the steps of
/// `.github/workflows/release.yml`.
#[derive(Clone, Debug)]
pub struct ReleaseChart {
    /// `oci://127.0.0.1:<port>/charts/sluice`.
    pub reference: String,
    /// The chart and app version (the workspace version).
    pub version: String,
    /// The operator image index.
    pub operator: Pushed,
    /// The data-plane image index.
    pub inference_server: Pushed,
}

/// Publishes [`ReleaseChart`] once per test binary, with the Helm binary `helm`.
pub fn release_chart(helm: &std::path::Path) -> ReleaseChart {
    static RELEASE: OnceLock<ReleaseChart> = OnceLock::new();
    RELEASE
        .get_or_init(|| {
            let version = run_ok(Command::new("bash").arg(repo_root().join(".ci/version.sh")));
            let index = |component: &str| {
                let pushed = ours(component);
                let digest = run_ok(
                    Command::new("bash")
                        .arg(repo_root().join("images/index.sh"))
                        .arg(format!("{}:{version}", pushed.repository))
                        .arg(pushed.reference())
                        .env("PUSH_TLS_VERIFY", "false"),
                );
                Pushed {
                    repository: pushed.repository,
                    digest,
                }
            };
            let (operator, inference_server) = (index("operator"), index("inference-server"));
            let out = std::env::temp_dir().join(format!("sluice-chart-{}", std::process::id()));
            let package = run_ok(
                Command::new("bash")
                    .arg(repo_root().join("charts/tools/package.sh"))
                    .args(["--version", &version])
                    .args(["--operator", &operator.reference()])
                    .args(["--inference-server", &inference_server.reference()])
                    .arg("--out")
                    .arg(&out)
                    .arg("--helm")
                    .arg(helm),
            );
            let charts = format!("oci://{}/charts", registry().host);
            run_ok(Command::new(helm).args(["push", "--plain-http", &package, &charts]));
            let _ = std::fs::remove_dir_all(&out);
            ReleaseChart {
                reference: format!("{charts}/sluice"),
                version,
                operator,
                inference_server,
            }
        })
        .clone()
}
