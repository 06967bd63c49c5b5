//! Our images as a release builds them and a cluster pulls them: `images/build.sh` packages the
//! host-built binaries with the project's own Dockerfiles on the distroless base assembled from
//! Debian packages (`images/base/build.sh`), `podman push` puts them by digest into the real
//! loopback registry, and `podman pull` by digest brings them back. The pulled images run as
//! containers under the restrictions the chart sets (user 65532, read-only root, no
//! capabilities, no-new-privileges, a memory limit), seen from the host in the container's
//! `/proc/<pid>/status`, and serve a real model mounted read-only.

use std::{path::Path, time::Duration};

use sluice_tests::{
    binaries, http,
    images::{self, podman, run_ok},
    repo_root, wait,
};

/// The flags a restricted pod's container gets (the chart's and the operator's security
/// contexts), plus the lowered ulimits this machine needs.
const RESTRICTED: [&str; 12] = [
    "--network",
    "host",
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--memory",
    "256m",
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit=nproc=4096:4096",
];

/// Removes the named container when dropped (also when the test fails).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "2", &self.0]).output();
    }
}

fn status_field(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn the_inference_server_image_pulled_by_digest_serves_a_model_as_nonroot_read_only() {
    let pushed = images::build_and_push(
        "inference-server",
        &binaries::built("inference-server", "inference-server"),
    );
    assert!(pushed.digest.starts_with("sha256:"), "{pushed:?}");
    images::pull(&pushed.reference()).unwrap_or_else(|e| panic!("pulling {pushed:?}: {e}"));

    let models = tempdir("models");
    for file in ["iris.onnx", "sluice-model.yaml"] {
        std::fs::copy(
            repo_root().join("examples/models/iris").join(file),
            models.join(file),
        )
        .expect("copy model");
    }
    let ip = "127.21.0.1";
    let port = sluice_tests::process::unused_port(ip);
    let name = format!("sluice-image-test-{}", std::process::id());
    let container = Container(name.clone());
    run_ok(
        podman()
            .args(["run", "-d", "--name", &name])
            .args(RESTRICTED)
            .arg("-v")
            .arg(format!("{}:/models:ro", models.display()))
            .arg(pushed.reference())
            .args(["serve", "--model-dir", "/models", "--host", ip])
            .args(["--port", &port.to_string()]),
    );
    let logs = || run_ok(podman().args(["logs", &container.0]));
    wait::eventually(
        "the model to load",
        Duration::from_secs(60),
        logs,
        || async {
            http::get(ip, port, "/health")
                .await
                .filter(|(code, _)| *code == 200)
        },
    )
    .await;
    let (code, body) = http::post_json(
        ip,
        port,
        "/invocations",
        r#"{"inputs":[[5.1,3.5,1.4,0.2]]}"#,
    )
    .await
    .expect("an answer");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"predictions\""), "{body}");

    let pid = run_ok(podman().args(["inspect", "--format", "{{.State.Pid}}", &name]));
    assert_eq!(status_field(&pid, "Uid"), "65532 65532 65532 65532");
    assert_eq!(status_field(&pid, "Gid"), "65532 65532 65532 65532");
    assert_eq!(status_field(&pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&pid, "NoNewPrivs"), "1");
    let root_ro = run_ok(podman().args([
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}}",
        &name,
    ]));
    assert_eq!(root_ro, "true");
    // The image's own metadata: the distroless nonroot user and the binary as entrypoint.
    let config = run_ok(podman().args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}}",
        &pushed.reference(),
    ]));
    assert_eq!(config, r#"65532:65532 ["/usr/local/bin/inference-server"]"#);
    drop(container);
}

#[test]
fn the_operator_image_pulled_by_digest_runs_its_binary_under_restrictions() {
    let pushed = images::build_and_push(
        "operator",
        &binaries::built("sluice-operator", "sluice-operator"),
    );
    images::pull(&pushed.reference()).unwrap_or_else(|e| panic!("pulling {pushed:?}: {e}"));
    let help = run_ok(
        podman()
            .args(["run", "--rm"])
            .args(RESTRICTED)
            .arg(pushed.reference())
            .arg("--help"),
    );
    assert!(help.contains("--probe-addr"), "{help}");
}

#[test]
fn the_base_image_is_distroless_assembled_from_debian_packages() {
    let id =
        run_ok(std::process::Command::new("bash").arg(repo_root().join("images/base/build.sh")));
    let mount = run_ok(podman().args(["image", "mount", &id]));
    let root = Path::new(&mount);
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap_or_default();
    let checks = [
        (
            "a nonroot user 65532",
            read("etc/passwd").contains("nonroot:x:65532:65532:"),
        ),
        (
            "a nonroot group",
            read("etc/group").contains("nonroot:x:65532:"),
        ),
        (
            "the CA bundle",
            read("etc/ssl/certs/ca-certificates.crt")
                .matches("BEGIN CERTIFICATE")
                .count()
                > 100,
        ),
        (
            "tzdata",
            root.join("usr/share/zoneinfo/Europe/Madrid").exists(),
        ),
        (
            "glibc's loader",
            root.join("lib64/ld-linux-x86-64.so.2").exists(),
        ),
        (
            "libgcc",
            root.join("lib/x86_64-linux-gnu/libgcc_s.so.1").exists(),
        ),
        (
            "libssl3",
            root.join("usr/lib/x86_64-linux-gnu/libssl.so.3").exists(),
        ),
        (
            "no shell",
            !root.join("bin/sh").exists() && !root.join("usr/bin/sh").exists(),
        ),
        (
            "no package manager",
            !root.join("usr/bin/dpkg").exists() && !root.join("usr/bin/apt").exists(),
        ),
    ];
    let _ = podman().args(["image", "unmount", &id]).output();
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(what, _)| *what)
        .collect();
    assert!(failed.is_empty(), "the base image lacks: {failed:?}");
}

#[test]
fn a_misspelled_image_is_refused_by_the_registry() {
    let pushed = images::build_and_push(
        "operator",
        &binaries::built("sluice-operator", "sluice-operator"),
    );
    let wrong = format!(
        "{}/sluice-dev/operater@{}",
        images::registry().host,
        pushed.digest
    );
    let err = images::pull(&wrong).expect_err("a misspelled repository must not pull");
    assert!(
        err.contains("name unknown") || err.contains("manifest unknown"),
        "the pull error should say the image is unknown: {err}"
    );
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-images-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}
