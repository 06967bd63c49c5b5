//! Release engineering, offline (docs/releasing.md): the GitHub Actions workflows pass actionlint,
//! which is shown to refuse broken copies of them; `.ci/version.sh` prints the one version that
//! Cargo and the chart agree on and refuses a tag or a file that disagrees; the release workflow
//! builds and pushes images only through `images/build.sh`, `images/push.sh` and
//! `images/index.sh`, for amd64 and arm64, and takes its release notes from CHANGELOG.md; the
//! LICENSE is the unmodified Apache License 2.0 and every place that declares a license says
//! `Apache-2.0`; CHANGELOG.md has an `## [Unreleased]` section and no released version past the
//! workspace's.

use std::{
    cmp::Ordering,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use serde_norway::Value;
use sha2::{Digest, Sha256};
use sluice_tests::repo_root;

/// The workspace version, as Cargo read it from `[workspace.package] version` (this crate
/// inherits it).
const WORKSPACE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// A fresh, empty temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-release-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Every workflow file in `.github/workflows/`, sorted.
fn workflows() -> Vec<PathBuf> {
    let dir = repo_root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected ci.yml and release.yml, found {files:?}"
    );
    files
}

fn release_workflow() -> Value {
    yaml(&repo_root().join(".github/workflows/release.yml"))
}

/// The `run` scripts of a job's steps, one string per step.
fn run_scripts(job: &Value) -> Vec<String> {
    job["steps"]
        .as_sequence()
        .unwrap_or_else(|| panic!("job without steps: {job:?}"))
        .iter()
        .filter_map(|step| step["run"].as_str().map(str::to_owned))
        .collect()
}

/// The `run` script of the step with this name.
fn step_script(job: &Value, name: &str) -> String {
    job["steps"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|step| step["name"].as_str() == Some(name))
        .and_then(|step| step["run"].as_str())
        .unwrap_or_else(|| panic!("no step {name:?} with a run script"))
        .to_owned()
}

// ---- actionlint ---------------------------------------------------------------------------

/// The actionlint version `.ci/setup` pins (its `ACTIONLINT=` line), so the test and the setup
/// never disagree.
fn actionlint_version() -> String {
    read(&repo_root().join(".ci/setup"))
        .lines()
        .find_map(|line| line.strip_prefix("ACTIONLINT="))
        .map(|v| v.trim().to_owned())
        .expect(".ci/setup pins ACTIONLINT=<version>")
}

/// actionlint from `${SLUICE_CACHE:-~/.cache/sluice}/actionlint/`, installed there the way
/// `.ci/setup` does (`go install`, with a `.version` stamp) when it is missing or stale.
fn actionlint() -> PathBuf {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        let version = actionlint_version();
        let cache = std::env::var_os("SLUICE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice")
            });
        let dir = cache.join("actionlint");
        let bin = dir.join("actionlint");
        let stamp = std::fs::read_to_string(dir.join(".version")).unwrap_or_default();
        if stamp.trim() != version || !bin.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("actionlint cache dir");
            let out = Command::new("go")
                .args(["install", "-trimpath", "-ldflags=-s -w"])
                .arg(format!(
                    "github.com/rhysd/actionlint/cmd/actionlint@{version}"
                ))
                .env("GOBIN", &dir)
                .env("CGO_ENABLED", "0")
                .output()
                .expect("running go install (Go is a prerequisite of .ci/setup)");
            assert!(
                out.status.success(),
                "go install actionlint {version} failed:\n{}",
                text(&out)
            );
            std::fs::write(dir.join(".version"), format!("{version}\n")).expect("stamp");
        }
        bin
    })
    .clone()
}

/// Runs actionlint on `files` from `dir` (the project root it resolves local reusable workflows
/// against).
fn run_actionlint(dir: &Path, files: &[PathBuf]) -> Output {
    Command::new(actionlint())
        .arg("-no-color")
        .args(files)
        .current_dir(dir)
        .output()
        .expect("running actionlint")
}

#[test]
fn actionlint_passes_on_every_workflow() {
    let files = workflows();
    let out = run_actionlint(&repo_root(), &files);
    assert!(
        out.status.success(),
        "actionlint failed on {files:?}:\n{}",
        text(&out)
    );
}

/// Copies of the workflows in a temporary project: unchanged they pass, and each deliberate
/// breakage is refused with a message naming it, so the passing test above means something.
#[test]
fn actionlint_refuses_broken_workflows() {
    let write_project = |name: &str, release: &Value| -> (PathBuf, Vec<PathBuf>) {
        let dir = temp_dir(name);
        let workflows_dir = dir.join(".github/workflows");
        std::fs::create_dir_all(&workflows_dir).expect("workflows dir");
        let mut files = Vec::new();
        for src in workflows() {
            let dst = workflows_dir.join(src.file_name().expect("file name"));
            if dst.ends_with("release.yml") {
                let yaml = serde_norway::to_string(release).expect("serialise release.yml");
                std::fs::write(&dst, yaml).expect("write release.yml");
            } else {
                std::fs::copy(&src, &dst).expect("copy workflow");
            }
            files.push(dst.strip_prefix(&dir).expect("relative").to_path_buf());
        }
        (dir, files)
    };

    // Unchanged (re-serialised) copies pass: a failure below comes from the breakage alone.
    let (dir, files) = write_project("lint-unchanged", &release_workflow());
    let out = run_actionlint(&dir, &files);
    assert!(
        out.status.success(),
        "the copied workflows should pass:\n{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).ok();

    let mut undefined_needs = release_workflow();
    undefined_needs["jobs"]["publish"]["needs"] =
        serde_norway::from_str("[version, images, no-such-job]").expect("needs list");
    let mut unknown_matrix_key = release_workflow();
    unknown_matrix_key["jobs"]["images"]["runs-on"] = Value::from("${{ matrix.runer }}");

    for (name, broken, expected) in [
        ("lint-needs", undefined_needs, "no-such-job"),
        ("lint-matrix", unknown_matrix_key, "runer"),
    ] {
        let (dir, files) = write_project(name, &broken);
        let out = run_actionlint(&dir, &files);
        let output = text(&out);
        assert!(
            !out.status.success(),
            "{name}: actionlint passed a broken workflow:\n{output}"
        );
        assert!(
            output.contains("release.yml") && output.contains(expected),
            "{name}: actionlint failed without naming {expected:?}:\n{output}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

// ---- .ci/version.sh -----------------------------------------------------------------------

fn version_sh(root: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(root.join(".ci/version.sh"))
        .args(args)
        .output()
        .expect("running .ci/version.sh")
}

#[test]
fn version_script_prints_the_workspace_version_that_the_chart_agrees_with() {
    let root = repo_root();
    let out = version_sh(&root, &[]);
    assert!(
        out.status.success(),
        ".ci/version.sh failed:\n{}",
        text(&out)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        printed, WORKSPACE_VERSION,
        "printed vs Cargo's workspace version"
    );

    let chart = yaml(&root.join("charts/sluice/Chart.yaml"));
    assert_eq!(
        chart["version"].as_str(),
        Some(WORKSPACE_VERSION),
        "Chart.yaml version"
    );
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(WORKSPACE_VERSION),
        "Chart.yaml appVersion"
    );

    let tag = format!("v{WORKSPACE_VERSION}");
    let out = version_sh(&root, &["--tag", &tag]);
    assert!(out.status.success(), "--tag {tag} refused:\n{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        WORKSPACE_VERSION
    );

    let out = version_sh(&root, &["--tag", "v9.9.9"]);
    let output = text(&out);
    assert!(!out.status.success(), "--tag v9.9.9 accepted:\n{output}");
    assert!(
        output.contains("v9.9.9") && output.contains(&tag) && out.stdout.is_empty(),
        "the refusal names the tag and the expected one, and prints no version:\n{output}"
    );
}

/// A copy of the three files the script reads, with one version changed at a time: each
/// disagreement is refused with a message naming the file and the field.
#[test]
fn version_script_names_the_file_that_disagrees() {
    let root = repo_root();
    let cargo = read(&root.join("Cargo.toml"));
    let chart = read(&root.join("charts/sluice/Chart.yaml"));
    let quoted = format!("\"{WORKSPACE_VERSION}\"");
    let cases = [
        (
            "chart-app-version",
            cargo.clone(),
            chart.replace(&format!("appVersion: {quoted}"), "appVersion: \"9.9.9\""),
            "charts/sluice/Chart.yaml: appVersion is '9.9.9'",
        ),
        (
            "chart-version",
            cargo.clone(),
            chart.replacen(
                &format!("\nversion: {WORKSPACE_VERSION}\n"),
                "\nversion: 9.9.9\n",
                1,
            ),
            "charts/sluice/Chart.yaml: version is '9.9.9'",
        ),
        (
            "cargo-version",
            cargo.replacen(&format!("version = {quoted}"), "version = \"9.9.9\"", 1),
            chart.clone(),
            "Cargo.toml's workspace version is '9.9.9'",
        ),
        (
            "cargo-not-semver",
            cargo.replacen(&format!("version = {quoted}"), "version = \"1.0\"", 1),
            chart.clone(),
            "Cargo.toml: workspace version '1.0' is not SemVer",
        ),
    ];
    for (name, cargo_toml, chart_yaml, expected) in cases {
        assert!(
            cargo_toml != cargo || chart_yaml != chart,
            "{name}: the edit did not apply"
        );
        let dir = temp_dir(name);
        std::fs::create_dir_all(dir.join(".ci")).expect(".ci");
        std::fs::create_dir_all(dir.join("charts/sluice")).expect("chart dir");
        std::fs::copy(root.join(".ci/version.sh"), dir.join(".ci/version.sh")).expect("copy");
        std::fs::write(dir.join("Cargo.toml"), &cargo_toml).expect("Cargo.toml");
        std::fs::write(dir.join("charts/sluice/Chart.yaml"), &chart_yaml).expect("Chart.yaml");
        let out = version_sh(&dir, &[]);
        let output = text(&out);
        assert!(
            !out.status.success(),
            "{name}: accepted a disagreement:\n{output}"
        );
        assert!(
            output.contains(expected),
            "{name}: expected {expected:?} in:\n{output}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

// ---- the release workflow ------------------------------------------------------------------

/// What only images/build.sh, images/push.sh and images/index.sh may do.
const FORBIDDEN_IN_WORKFLOWS: [&str; 10] = [
    "docker build",
    "docker buildx",
    "docker push",
    "docker/build-push-action",
    "podman build",
    "podman push",
    "podman manifest",
    "buildah",
    "skopeo",
    "crane ",
];

#[test]
fn images_are_built_and_pushed_only_by_the_image_scripts_for_amd64_and_arm64() {
    for file in workflows() {
        let body = read(&file);
        for word in FORBIDDEN_IN_WORKFLOWS {
            assert!(
                !body.contains(word),
                "{} uses {word:?}: images are built by images/build.sh and pushed by \
                 images/push.sh and images/index.sh only",
                file.display()
            );
        }
        // Every script a workflow runs exists (no call to a renamed or missing script).
        for token in body.split_whitespace() {
            let token = token.trim_matches(|c| c == '"' || c == '\'' || c == '(' || c == ')');
            if token.ends_with(".sh") && !token.contains('$') && token.contains('/') {
                assert!(
                    repo_root().join(token).is_file(),
                    "{} runs {token}, which does not exist",
                    file.display()
                );
            }
        }
    }

    let release = release_workflow();
    let images = &release["jobs"]["images"];
    let matrix = images["strategy"]["matrix"]["include"]
        .as_sequence()
        .expect("images job: strategy.matrix.include");
    let mut arches: Vec<(&str, &str)> = matrix
        .iter()
        .map(|row| {
            (
                row["arch"].as_str().expect("matrix arch"),
                row["runner"].as_str().expect("matrix runner"),
            )
        })
        .collect();
    arches.sort();
    assert_eq!(
        arches,
        [("amd64", "ubuntu-24.04"), ("arm64", "ubuntu-24.04-arm")],
        "one native runner per architecture"
    );
    // images/build.sh builds for the machine it runs on, so each arch runs on its own runner.
    assert_eq!(images["runs-on"].as_str(), Some("${{ matrix.runner }}"));
    assert_eq!(images["env"]["ARCH"].as_str(), Some("${{ matrix.arch }}"));
    assert_eq!(
        images["container"]["image"].as_str(),
        Some("debian:bookworm")
    );

    let scripts = run_scripts(images).join("\n");
    assert!(
        scripts.contains("cargo build --profile dist --locked"),
        "release binaries, with the shipped profile (fat LTO):\n{scripts}"
    );
    for (component, binary) in [
        ("operator", "sluice-operator"),
        ("inference-server", "inference-server"),
    ] {
        let build = format!("bash images/build.sh {component} target/dist/{binary}");
        assert!(scripts.contains(&build), "missing `{build}` in:\n{scripts}");
        let push = format!(
            "bash images/push.sh \"$tag\" \"ghcr.io/sluice-dev/{component}:$VERSION-$ARCH\")"
        );
        assert!(scripts.contains(&push), "missing `{push}` in:\n{scripts}");
    }

    assert!(
        scripts.contains("bash images/mlflow/build.sh")
            && scripts.contains("\"ghcr.io/sluice-dev/mlflow-runtime:$VERSION-$ARCH\""),
        "the MLflow runtime image is built by its script and pushed per arch:\n{scripts}"
    );

    let publish = &release["jobs"]["publish"];
    let scripts = run_scripts(publish).join("\n");
    assert!(
        scripts
            .contains("bash images/index.sh \"$repo:$VERSION\" \"$repo@$amd64\" \"$repo@$arm64\"")
            && scripts.contains("for component in operator inference-server"),
        "one index per component over its amd64 and arm64 images:\n{scripts}"
    );
    assert!(
        scripts.contains("bash charts/tools/package.sh"),
        "the chart is packaged by charts/tools/package.sh:\n{scripts}"
    );

    // The order: nothing is pushed before CI passed on the tag, nothing published before both
    // architectures are pushed.
    let needs = |job: &str| -> Vec<String> {
        let needs = &release["jobs"][job]["needs"];
        match needs.as_sequence() {
            Some(list) => list
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
            None => needs.as_str().map(str::to_owned).into_iter().collect(),
        }
    };
    assert_eq!(
        release["jobs"]["verify"]["uses"].as_str(),
        Some("./.github/workflows/ci.yml")
    );
    assert!(
        needs("images").contains(&"verify".to_owned()),
        "images needs verify"
    );
    assert!(
        needs("publish").contains(&"images".to_owned()),
        "publish needs images"
    );
    let permissions = &publish["permissions"];
    for (scope, level) in [
        ("contents", "write"),
        ("packages", "write"),
        ("id-token", "write"),
        ("attestations", "write"),
    ] {
        assert_eq!(permissions[scope].as_str(), Some(level), "publish: {scope}");
    }
}

/// The workflow's own release-notes step, run on sample changelogs: it writes the body of the
/// version's section, and fails when the section is missing.
#[test]
fn release_notes_step_takes_the_version_section_of_the_changelog() {
    let script = step_script(
        &release_workflow()["jobs"]["version"],
        "Release notes from CHANGELOG.md",
    );
    let changelog = "# Changelog\n\n## [Unreleased]\n\n### Added\n\n- next\n\n\
                     ## [1.2.0-rc.1] - 2026-12-20\n\n- candidate\n\n\
                     ## [1.2.0] - 2026-12-24\n\n### Fixed\n\n- a fix\n\n\
                     ## [1.1.0] - 2026-12-01\n\n- older\n\n\
                     [Unreleased]: https://example.invalid\n";
    let run = |version: &str| -> (Output, String) {
        let dir = temp_dir(&format!("notes-{version}"));
        std::fs::write(dir.join("CHANGELOG.md"), changelog).expect("CHANGELOG.md");
        let out = Command::new("bash")
            .args(["-e", "-o", "pipefail", "-c", &script])
            .env("VERSION", version)
            .current_dir(&dir)
            .output()
            .expect("running the release notes step");
        let notes = std::fs::read_to_string(dir.join("dist/release-notes.md")).unwrap_or_default();
        std::fs::remove_dir_all(&dir).ok();
        (out, notes)
    };
    let (out, notes) = run("1.2.0");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(notes.trim(), "### Fixed\n\n- a fix");
    let (out, notes) = run("1.2.0-rc.1");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(notes.trim(), "- candidate");
    // The last section stops before the link references that end the file.
    let (out, notes) = run("1.1.0");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(notes.trim(), "- older");
    let (out, _) = run("1.3.0");
    assert!(
        !out.status.success() && text(&out).contains("no '## [1.3.0]' section"),
        "a missing section must fail:\n{}",
        text(&out)
    );
}

/// The CRD file a release attaches holds every generated CRD as its own YAML document, equal to
/// `crds/generated/` (a plain concatenation would have been one document with duplicate keys).
#[test]
fn the_released_crd_file_is_every_generated_crd_one_document_each() {
    let script = step_script(&release_workflow()["jobs"]["publish"], "CRDs");
    let dir = temp_dir("crds");
    let generated = repo_root().join("crds/generated");
    std::fs::create_dir_all(dir.join("crds")).expect("crds dir");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&generated)
        .arg(dir.join("crds/generated"))
        .output()
        .expect("cp");
    assert!(copied.status.success(), "{}", text(&copied));
    let out = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &script])
        .env("VERSION", "9.9.9")
        .current_dir(&dir)
        .output()
        .expect("running the CRDs step");
    assert!(out.status.success(), "{}", text(&out));
    let released = read(&dir.join("dist/sluice-crds-9.9.9.yaml"));
    let documents: Vec<Value> = serde_norway::Deserializer::from_str(&released)
        .map(|document| serde::Deserialize::deserialize(document).expect("a YAML document"))
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&generated)
        .expect("crds/generated")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let expected: Vec<Value> = files.iter().map(|path| yaml(path)).collect();
    assert_eq!(expected.len(), 2, "ModelVersion and ServingEndpoint");
    assert_eq!(documents, expected);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ci_workflow_runs_the_ci_entry_point_on_every_push_and_pull_request() {
    let ci = yaml(&repo_root().join(".github/workflows/ci.yml"));
    let on = &ci["on"];
    assert!(
        on.get("push").is_some() && on.get("pull_request").is_some(),
        "ci.yml triggers: {on:?}"
    );
    assert_eq!(ci["permissions"]["contents"].as_str(), Some("read"));
    assert_eq!(
        ci["concurrency"]["cancel-in-progress"].as_bool(),
        Some(true)
    );
    let jobs = ci["jobs"].as_mapping().expect("ci.yml jobs");
    assert_eq!(jobs.len(), 1, "one CI job");
    let (_, job) = jobs.iter().next().expect("a job");
    assert_eq!(job["runs-on"].as_str(), Some("ubuntu-24.04"));
    assert_eq!(job["timeout-minutes"].as_u64(), Some(90));
    let scripts = run_scripts(job);
    assert_eq!(
        scripts.last().map(String::as_str),
        Some("bash .ci/run"),
        "the last step runs the CI entry point"
    );
}

// ---- license -------------------------------------------------------------------------------

/// sha256 of the Apache License 2.0 as published at https://www.apache.org/licenses/LICENSE-2.0.txt.
const APACHE_2_0_SHA256: &str = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30";

#[test]
fn license_is_apache_2_0_and_every_declaration_says_so() {
    let root = repo_root();
    let license = std::fs::read(root.join("LICENSE")).expect("LICENSE");
    let license_text = String::from_utf8_lossy(&license);
    let mut lines = license_text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    assert_eq!(lines.next(), Some("Apache License"));
    assert_eq!(lines.next(), Some("Version 2.0, January 2004"));
    assert!(
        license_text.contains("APPENDIX: How to apply the Apache License to your work."),
        "LICENSE keeps the appendix"
    );
    let sha = Sha256::digest(&license)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_eq!(sha, APACHE_2_0_SHA256, "LICENSE is not the unmodified text");

    // Every crate of the workspace, as Cargo sees it.
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata:\n{}", text(&out));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    assert!(packages.len() > 5, "workspace members: {}", packages.len());
    for package in packages {
        assert_eq!(
            package["license"].as_str(),
            Some("Apache-2.0"),
            "crate {}",
            package["name"]
        );
    }

    let chart = yaml(&root.join("charts/sluice/Chart.yaml"));
    assert_eq!(
        chart["annotations"]["artifacthub.io/license"].as_str(),
        Some("Apache-2.0"),
        "Chart.yaml annotation artifacthub.io/license"
    );

    for dockerfile in ["operator/Dockerfile", "inference-server/Dockerfile"] {
        let body = read(&root.join(dockerfile));
        let label = "org.opencontainers.image.licenses=";
        let values: Vec<&str> = body
            .match_indices(label)
            .map(|(i, _)| {
                body[i + label.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"')
            })
            .collect();
        assert_eq!(values, ["Apache-2.0"], "{dockerfile}: {label}");
    }
}

// ---- changelog -----------------------------------------------------------------------------

/// A SemVer version: MAJOR.MINOR.PATCH and an optional pre-release (no build metadata).
#[derive(Debug, PartialEq, Eq)]
struct Version {
    core: (u64, u64, u64),
    pre: Vec<String>,
}

impl Version {
    fn parse(s: &str) -> Option<Version> {
        let (core, pre) = match s.split_once('-') {
            Some((core, pre)) => (core, pre.split('.').map(str::to_owned).collect()),
            None => (s, Vec::new()),
        };
        let numbers: Vec<u64> = core
            .split('.')
            .map(|n| {
                (!n.is_empty() && (n == "0" || !n.starts_with('0')))
                    .then(|| n.parse().ok())
                    .flatten()
            })
            .collect::<Option<_>>()?;
        let valid_pre = pre.iter().all(|id: &String| {
            !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        match numbers[..] {
            [major, minor, patch] if valid_pre => Some(Version {
                core: (major, minor, patch),
                pre,
            }),
            _ => None,
        }
    }
}

impl Ord for Version {
    /// SemVer 2.0.0 precedence (section 11): a pre-release sorts before its release; numeric
    /// identifiers compare as numbers and before alphanumeric ones.
    fn cmp(&self, other: &Self) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let order = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(a), Ok(b)) => a.cmp(&b),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.cmp(b),
                        };
                        if order != Ordering::Equal {
                            return order;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Checks a Keep a Changelog file against the workspace version: the first `## ` heading is
/// `## [Unreleased]`; every other is `## [x.y.z] - YYYY-MM-DD`, newest first, none past
/// `workspace`. Returns the released versions.
fn released_versions(changelog: &str, workspace: &str) -> Result<Vec<Version>, String> {
    let workspace_version =
        Version::parse(workspace).ok_or(format!("workspace version {workspace}"))?;
    let mut headings = changelog.lines().filter(|l| l.starts_with("## "));
    if headings.next() != Some("## [Unreleased]") {
        return Err("the first section must be `## [Unreleased]`".into());
    }
    let mut versions: Vec<Version> = Vec::new();
    for heading in headings {
        let parsed = heading
            .strip_prefix("## [")
            .and_then(|rest| rest.split_once("] - "))
            .filter(|(_, date)| {
                date.len() == 10
                    && date.char_indices().all(|(i, c)| match i {
                        4 | 7 => c == '-',
                        _ => c.is_ascii_digit(),
                    })
            })
            .and_then(|(version, _)| Version::parse(version));
        let version = parsed.ok_or(format!("`{heading}` is not `## [x.y.z] - YYYY-MM-DD`"))?;
        if version > workspace_version {
            return Err(format!(
                "`{heading}` is past the workspace version {workspace}"
            ));
        }
        if let Some(newer) = versions.last()
            && version >= *newer
        {
            return Err(format!(
                "`{heading}` is not older than the section above it"
            ));
        }
        versions.push(version);
    }
    Ok(versions)
}

#[test]
fn changelog_has_an_unreleased_section_and_no_version_past_the_workspace() {
    let changelog = read(&repo_root().join("CHANGELOG.md"));
    let released = released_versions(&changelog, WORKSPACE_VERSION)
        .unwrap_or_else(|e| panic!("CHANGELOG.md: {e}"));
    // Every section, Unreleased included, has a link reference at the bottom, as Keep a
    // Changelog asks.
    for line in changelog.lines().filter(|l| l.starts_with("## [")) {
        let name = &line[3..line.find(']').map_or(line.len(), |i| i + 1)];
        assert!(
            changelog.contains(&format!("\n{name}: ")),
            "CHANGELOG.md: no link reference for {name}"
        );
    }
    eprintln!("released versions in CHANGELOG.md: {released:?}");
}

/// The checker itself, on released sections the real changelog does not have yet.
#[test]
fn changelog_checker_orders_versions_by_semver() {
    let log = |sections: &str| format!("# Changelog\n\n## [Unreleased]\n\n{sections}");
    let ok = released_versions(
        &log("## [1.0.0] - 2027-01-02\n\n## [1.0.0-rc.10] - 2027-01-01\n\n## [1.0.0-rc.2] - 2026-12-30\n\n## [0.9.0] - 2026-12-01\n"),
        "1.0.0",
    )
    .expect("a valid history");
    assert_eq!(ok.len(), 4);
    for (sections, workspace, error) in [
        ("## [0.2.0] - 2026-12-04\n", "0.1.0", "past the workspace"),
        (
            "## [0.1.0] - 2026-12-04\n",
            "0.1.0-rc.1",
            "past the workspace",
        ),
        (
            "## [0.1.0] - 2026-12-04\n## [0.1.1] - 2026-12-05\n",
            "0.2.0",
            "not older",
        ),
        ("## [0.1.0]\n", "0.1.0", "is not `## [x.y.z]"),
        ("## [0.1] - 2026-12-04\n", "0.1.0", "is not `## [x.y.z]"),
        ("## [0.1.0] - 4 Dec 2026\n", "0.1.0", "is not `## [x.y.z]"),
    ] {
        let result = released_versions(&log(sections), workspace);
        assert!(
            matches!(&result, Err(e) if e.contains(error)),
            "{sections:?} with workspace {workspace}: {result:?}, expected {error:?}"
        );
    }
    assert!(
        released_versions("# Changelog\n\n## [0.1.0] - 2026-12-04\n", "0.1.0")
            .is_err_and(|e| e.contains("Unreleased")),
        "a changelog without an Unreleased section is refused"
    );
}
