//! The container images the chart runs (`operator/Dockerfile`, `inference-server/Dockerfile`),
//! checked without a Docker daemon: the build context that `.dockerignore` leaves still loads
//! the Cargo workspace with the locked dependencies, each Dockerfile builds the binary it
//! ships, and the runtime stage is minimal and non-root with the user the chart expects.

mod helm_support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sluice_tests::repo_root;

/// `.dockerignore` patterns as this repository writes them: `name` or `dir/name` (anchored at
/// the context root, and everything under it), `**/name` (at any depth) and `*.ext` (root
/// files).
fn ignored(patterns: &[String], rel: &Path) -> bool {
    let rel_str = rel.to_string_lossy();
    patterns.iter().any(|p| {
        if let Some(name) = p.strip_prefix("**/") {
            rel.components().any(|c| c.as_os_str() == name)
        } else if let Some(ext) = p.strip_prefix("*.") {
            rel.components().count() == 1 && rel_str.ends_with(&format!(".{ext}"))
        } else {
            rel_str == p.as_str() || rel_str.starts_with(&format!("{p}/"))
        }
    })
}

fn dockerignore() -> Vec<String> {
    std::fs::read_to_string(repo_root().join(".dockerignore"))
        .expect(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_string())
        .collect()
}

fn copy_context(from: &Path, to: &Path, rel: &Path, patterns: &[String], count: &mut usize) {
    for entry in std::fs::read_dir(from.join(rel))
        .expect("read dir")
        .flatten()
    {
        let rel = rel.join(entry.file_name());
        if ignored(patterns, &rel) {
            continue;
        }
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            std::fs::create_dir_all(to.join(&rel)).expect("mkdir");
            copy_context(from, to, &rel, patterns, count);
        } else if kind.is_file() {
            std::fs::copy(from.join(&rel), to.join(&rel)).expect("copy");
            *count += 1;
        }
    }
}

#[test]
fn the_docker_build_context_loads_the_workspace_with_the_locked_dependencies() {
    let patterns = dockerignore();
    for must in [".git", "target", ".venv"] {
        assert!(
            patterns.iter().any(|p| p == must),
            ".dockerignore must leave out {must}"
        );
    }
    let context =
        std::env::temp_dir().join(format!("sluice-docker-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context).expect("context dir");
    let mut files = 0;
    copy_context(&repo_root(), &context, Path::new(""), &patterns, &mut files);
    assert!(
        files < 2_000,
        "the build context has {files} files: is something big not ignored?"
    );

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |args: &[&str]| {
        let out = Command::new(&cargo)
            .current_dir(&context)
            .args(args)
            .env("CARGO_TARGET_DIR", context.join("target"))
            .output()
            .expect("cargo");
        assert!(
            out.status.success(),
            "the Docker build context fails `cargo {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    // The workspace loads from the context alone...
    let metadata = run(&[
        "metadata",
        "--no-deps",
        "--locked",
        "--offline",
        "--format-version",
        "1",
    ]);
    let metadata: serde_json::Value = serde_json::from_slice(&metadata).expect("metadata JSON");
    // ...and each image's dependency graph resolves from Cargo.lock as it is (`--locked`).
    let host = host_triple();
    for package in ["sluice-operator", "inference-server"] {
        run(&[
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--target",
            &host,
            "-p",
            package,
        ]);
    }
    let _ = std::fs::remove_dir_all(&context);
    let bins: Vec<(String, String)> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| {
                    let is_bin = t["kind"].as_array()?.iter().any(|k| k == "bin");
                    is_bin.then(|| {
                        (
                            p["name"].as_str().unwrap_or_default().to_string(),
                            t["name"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                })
        })
        .collect();
    for (package, bin) in [
        ("sluice-operator", "sluice-operator"),
        ("inference-server", "inference-server"),
    ] {
        assert!(
            bins.contains(&(package.to_string(), bin.to_string())),
            "package {package} has no bin {bin}: {bins:?}"
        );
    }
}

fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("host triple")
        .to_string()
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(path: &PathBuf) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn each_dockerfile_is_multi_stage_minimal_and_non_root() {
    // The user the chart's security contexts run as.
    let docs = helm_support::documents(&helm_support::template(&[], &[]).expect("template"));
    let pod =
        &helm_support::object(&docs, "Deployment", "sluice-operator")["spec"]["template"]["spec"];
    let uid = pod["securityContext"]["runAsUser"]
        .as_i64()
        .expect("runAsUser");

    for (dockerfile, package, bin) in [
        ("operator/Dockerfile", "sluice-operator", "sluice-operator"),
        (
            "inference-server/Dockerfile",
            "inference-server",
            "inference-server",
        ),
    ] {
        let lines = instructions(&repo_root().join(dockerfile));
        let froms: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
        // build (cargo, for releases), prebuilt (a host-built binary from the context, for CI
        // and the local cluster), binary (whichever BINARY_STAGE names), runtime.
        let stage_names: Vec<&str> = froms
            .iter()
            .map(|f| f.rsplit_once(" AS ").map(|(_, n)| n).unwrap_or(""))
            .collect();
        assert_eq!(
            stage_names,
            ["build", "prebuilt", "binary", ""],
            "{dockerfile}: stages {froms:?}"
        );
        assert!(
            froms[2] == "FROM ${BINARY_STAGE} AS binary"
                && lines.iter().any(|l| l == "ARG BINARY_STAGE=build"),
            "{dockerfile}: the binary stage defaults to the cargo build"
        );
        assert!(
            froms[3].starts_with("FROM gcr.io/distroless/") && froms[3].ends_with(":nonroot"),
            "{dockerfile}: the runtime stage must be distroless nonroot: {}",
            froms[3]
        );
        let froms = [froms[0], froms[3]];
        let build = lines
            .iter()
            .find(|l| l.starts_with("RUN ") && l.contains("cargo build"))
            .unwrap_or_else(|| panic!("{dockerfile}: no cargo build"));
        for part in [
            // The shipped profile: release with fat LTO (Cargo.toml `[profile.dist]`).
            "--profile dist",
            "--locked",
            &format!("-p {package}"),
            &format!("--bin {bin}"),
        ] {
            assert!(
                build.contains(part),
                "{dockerfile}: cargo build lacks {part}"
            );
        }
        let runtime: Vec<&String> = lines
            .iter()
            .skip_while(|l| !std::ptr::eq(*l, froms[1]))
            .collect();
        assert!(
            runtime.iter().all(|l| !l.starts_with("RUN ")),
            "{dockerfile}: the runtime stage runs nothing (no shell there)"
        );
        assert!(
            runtime
                .iter()
                .any(|l| *l == &format!("COPY --from=binary /out/{bin} /usr/local/bin/{bin}")),
            "{dockerfile}: the binary is copied from the binary stage"
        );
        assert!(
            runtime.iter().any(|l| *l == &format!("USER {uid}:{uid}")),
            "{dockerfile}: runs as {uid}, the chart's runAsUser"
        );
        assert_eq!(
            runtime.last().map(|l| l.as_str()),
            Some(format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]").as_str()),
            "{dockerfile}: the binary is the entrypoint (the chart and the operator pass args only)"
        );
    }
}
