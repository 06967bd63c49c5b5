//! The model fetcher (`inference-server fetch`): the init step of every entity pod, also used by
//! the standalone gateway. Copies a model artifact from its URI into the model directory
//! (`/models`), atomically: the files appear under `--dest` only once complete, so `serve` never
//! reads half an artifact.
//!
//! Sources: `file://` (a folder or a single file, e.g. on a mounted volume), `pvc://claim/path`
//! (the claim mounted at `--pvc-root/<claim>`), object stores (`s3://`, `gs://`, `az://`,
//! `abfss://`: one object or a whole prefix, streamed, see [`object`]), and
//! `http://`/`https://` (one file, streamed with retries and resume, see [`http`]). A source that
//! is a single archive (`.tar.gz`, `.tgz`, `.tar`, `.zip`) is unpacked safely ([`archive`]).
//! MLflow sources ([`mlflow`]): `models:/<name>/<version>`, `models:/<name>@<alias>` and
//! `runs:/<run>/<path>` are resolved through the tracking server's REST API to the artifact
//! location, which is then fetched by its own path; `mlflow-artifacts:` locations come through
//! the server's artifact proxy.
//!
//! With `--sha256` the staged artifact is checked before it is unpacked or published
//! ([`digest`] defines the digest of a file and of a folder). On failure the error is also
//! written to `--termination-log`, which Kubernetes shows as the init container's
//! `state.terminated.message`.

// The map above names private modules: they are documented with `cargo doc
// --document-private-items`; the public API is only what the binary calls.
#![allow(rustdoc::private_intra_doc_links)]

mod archive;
mod check;
mod digest;
mod http;
mod mlflow;
mod object;
mod stream;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use sluice_protocol::units::parse_duration;

/// Where the source is and where it goes. (A struct of its own so that the standalone gateway
/// can fetch with the default [`FetchOptions`].)
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Artifact URI (the ModelVersion's resolved URI).
    #[arg(long, env = "SLUICE_ARTIFACT_URI")]
    pub uri: String,
    /// Folder to fill (the pod's model volume).
    #[arg(long, env = "SLUICE_MODEL_DIR", default_value = "/models")]
    pub dest: PathBuf,
    /// Where `pvc://<claim>/...` claims are mounted.
    #[arg(long, env = "SLUICE_PVC_ROOT", default_value = "/mnt/pvc")]
    pub pvc_root: PathBuf,
    /// The MLflow tracking server that resolves `models:/` and `runs:/` references and serves
    /// `mlflow-artifacts:` (else `MLFLOW_TRACKING_URI`; credentials from
    /// `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME`/`_PASSWORD`).
    #[arg(long)]
    pub mlflow_tracking_uri: Option<String>,
}

/// Where Kubernetes reads a container's termination message by default.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Most bytes of the error written to the termination log (what Kubernetes keeps).
pub const TERMINATION_LOG_MAX: usize = 4096;
/// A download that receives nothing for this long fails, unless `--stall-timeout` says otherwise.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a long download logs its progress, unless `--progress-every` says otherwise.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// First pause before retrying a failed HTTP request, unless `--retry-delay` says otherwise.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How to fetch: the digest to check, where to report a failure, and transfer settings (hidden:
/// they exist so that tests can shorten them).
#[derive(Debug, Clone, Args)]
pub struct FetchOptions {
    /// SHA-256 the artifact must have (64 hex digits, any case): of the file when the source is
    /// one file (an archive before unpacking), of the sorted `sha256sum` listing of every file
    /// when it is a folder or a prefix (see docs/model-directory.md). Checked before anything
    /// reaches `--dest`.
    #[arg(long, env = "SLUICE_ARTIFACT_SHA256")]
    pub sha256: Option<String>,
    /// On failure, the error is written here (first 4 KiB) when the folder exists: Kubernetes
    /// shows it as the container's termination message.
    #[arg(long, env = "SLUICE_TERMINATION_LOG", default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
    /// A download that receives nothing for this long fails (default 60s).
    #[arg(long, hide = true, env = "SLUICE_FETCH_STALL_TIMEOUT", value_parser = parse_duration)]
    pub stall_timeout: Option<Duration>,
    /// How often a long download logs its progress (default 5s).
    #[arg(long, hide = true, env = "SLUICE_FETCH_PROGRESS_EVERY", value_parser = parse_duration)]
    pub progress_every: Option<Duration>,
    /// First pause before retrying a failed HTTP request, doubled per retry (default 1s).
    #[arg(long, hide = true, env = "SLUICE_FETCH_RETRY_DELAY", value_parser = parse_duration)]
    pub retry_delay: Option<Duration>,
    /// Only check the source: it exists and is readable with the credentials in the
    /// environment; nothing is downloaded and `--dest` is not touched. What was found is
    /// printed and written to `--termination-log` (the operator's source-check Job reads it).
    #[arg(long)]
    pub check: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            sha256: None,
            termination_log: PathBuf::from(TERMINATION_LOG),
            stall_timeout: None,
            progress_every: None,
            retry_delay: None,
            check: false,
        }
    }
}

/// The `fetch` subcommand's arguments.
#[derive(Debug, Args)]
pub struct FetchCommand {
    #[command(flatten)]
    pub args: FetchArgs,
    #[command(flatten)]
    pub options: FetchOptions,
}

/// What a source put in the staging folder: the digest is defined differently for one file and
/// for a folder.
#[derive(Debug)]
enum Staged {
    /// One file, with its SHA-256 when it was computed while writing.
    File {
        path: PathBuf,
        sha256: Option<digest::Sha256Digest>,
    },
    /// A folder's contents.
    Folder,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI's scheme is not one `fetch` can read.
    #[error(
        "cannot fetch {uri}: scheme {scheme:?} is not supported by this build (supported: file://, pvc://, s3://, gs://, az://, abfss://, http://, https://, models:/, runs:/, mlflow-artifacts:)"
    )]
    Unsupported {
        /// The URI.
        uri: String,
        /// Its scheme.
        scheme: String,
    },
    /// The source does not exist.
    #[error("cannot fetch {uri}: {path} does not exist")]
    Missing {
        /// The URI.
        uri: String,
        /// The local path it named.
        path: PathBuf,
    },
    /// An MLflow tracking server could not resolve or list the source.
    #[error("fetching {uri} through MLflow: {message}")]
    Registry {
        /// The URI.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// A local file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// An object store refused or failed (credentials, missing bucket, a broken transfer).
    #[error("fetching {uri} from its object store: {message}")]
    Store {
        /// The URI.
        uri: String,
        /// The store's error.
        message: String,
    },
    /// An archive is broken, or holds an entry that would land outside the model folder.
    #[error("unpacking {archive}: {message}")]
    Archive {
        /// The archive.
        archive: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The download failed.
    #[error("downloading {uri}: {source}{}", after_attempts(*attempts))]
    Http {
        /// The URL, without credentials or query string.
        uri: String,
        /// Requests made.
        attempts: u32,
        /// What went wrong (the last time).
        source: http::HttpError,
    },
    /// The artifact's `MLmodel` file is not one MLflow could have written.
    #[error("{uri}: its MLmodel does not parse: {source}")]
    Mlmodel {
        /// The URI, without credentials or query string.
        uri: String,
        /// The YAML error.
        source: serde_norway::Error,
    },
    /// `--sha256` is not a SHA-256 digest.
    #[error("--sha256 {value:?} is not a SHA-256 digest (64 hexadecimal characters)")]
    BadDigest {
        /// What was given.
        value: String,
    },
    /// The artifact is not the one `--sha256` names.
    #[error(
        "{uri}: SHA-256 mismatch: expected {expected}, got {actual} (digest of the {what}); nothing was published"
    )]
    DigestMismatch {
        /// The URI, without credentials or query string.
        uri: String,
        /// The digest asked for.
        expected: String,
        /// The artifact's.
        actual: String,
        /// `file` or `folder listing`.
        what: &'static str,
    },
}

fn after_attempts(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

/// `fetch` as the init container runs it: [`fetch`], and on failure the error's text in
/// `--termination-log` too.
pub async fn run_command(command: FetchCommand) -> Result<(), FetchError> {
    if command.options.check {
        let result = check::check(&command.args, &transfer(&command.options, false)).await;
        let text = match &result {
            Ok(summary) => summary.clone(),
            Err(error) => error.to_string(),
        };
        write_termination_log(&command.options.termination_log, &text);
        if result.is_ok() {
            tracing::info!("{text}");
            println!("{text}");
        }
        return result.map(drop);
    }
    let result = fetch(command.args, &command.options).await;
    if let Err(error) = &result {
        write_termination_log(&command.options.termination_log, &error.to_string());
    }
    result
}

/// Fetches `args.uri` into `args.dest`; on failure nothing new is published and the staging
/// area is removed.
pub async fn fetch(args: FetchArgs, options: &FetchOptions) -> Result<(), FetchError> {
    let expected = options.sha256.as_deref().map(digest::parse).transpose()?;
    let transfer = transfer(options, expected.is_some());
    let staging = staging_dir(&args.dest);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("clearing", &staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
    let result = stage_and_publish(&args, &staging, expected.as_deref(), &transfer).await;
    if result.is_err() && staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Transfer settings from the options (defaults where unset).
fn transfer(options: &FetchOptions, hash: bool) -> stream::Transfer {
    stream::Transfer {
        stall_timeout: options.stall_timeout.unwrap_or(STALL_TIMEOUT),
        progress_every: options.progress_every.unwrap_or(PROGRESS_EVERY),
        retry_delay: options.retry_delay.unwrap_or(RETRY_DELAY),
        hash,
    }
}

async fn stage_and_publish(
    args: &FetchArgs,
    staging: &Path,
    expected: Option<&str>,
    transfer: &stream::Transfer,
) -> Result<(), FetchError> {
    let shown = http::redact(&args.uri);
    if mlflow::is_reference(&args.uri) {
        let tracking = mlflow::Tracking::from_env(args.mlflow_tracking_uri.as_deref(), &args.uri)?;
        let location = tracking.resolve(&args.uri).await?;
        tracing::info!(uri = %shown, resolved = %http::redact(&location), "resolved through MLflow");
        let resolved = FetchArgs {
            uri: location,
            dest: args.dest.clone(),
            pvc_root: args.pvc_root.clone(),
            mlflow_tracking_uri: args.mlflow_tracking_uri.clone(),
        };
        if mlflow::is_reference(&resolved.uri) {
            return Err(FetchError::Registry {
                uri: shown,
                message: format!("resolved to another reference, {}", resolved.uri),
            });
        }
        return Box::pin(stage_and_publish(&resolved, staging, expected, transfer)).await;
    }
    let (scheme, rest) = args
        .uri
        .split_once("://")
        .unwrap_or(("", args.uri.as_str()));
    let staged = match scheme {
        _ if args.uri.starts_with("mlflow-artifacts:") => {
            let path = mlflow::artifact_path(&args.uri).unwrap_or_default();
            let tracking =
                mlflow::Tracking::from_env(args.mlflow_tracking_uri.as_deref(), &args.uri)?;
            tracking
                .download(&args.uri, path, staging, transfer)
                .await?
        }
        "file" => copy_local(
            &args.uri,
            Path::new(&format!("/{}", rest.trim_start_matches('/'))),
            staging,
        )?,
        "pvc" => copy_local(&args.uri, &args.pvc_root.join(rest), staging)?,
        "http" | "https" => http::fetch(&args.uri, staging, transfer).await?,
        "s3" | "s3a" | "gs" | "az" | "abfss" | "adl" | "azure" => {
            object::fetch(&args.uri, staging, transfer).await?
        }
        other => {
            return Err(FetchError::Unsupported {
                uri: shown,
                scheme: other.to_string(),
            });
        }
    };
    if let Some(expected) = expected {
        verify(&shown, expected, &staged, staging)?;
    }
    unpack_lone_archive(staging)?;
    publish(staging, &args.dest)?;
    tracing::info!(uri = %shown, dest = %args.dest.display(), "artifact fetched");
    Ok(())
}

/// Compares the staged artifact's digest with `expected` (lower-case hex).
fn verify(uri: &str, expected: &str, staged: &Staged, staging: &Path) -> Result<(), FetchError> {
    let (actual, what) = match staged {
        Staged::File {
            sha256: Some(sha256),
            ..
        } => (*sha256, "file"),
        Staged::File { path, sha256: None } => (digest::file(path)?, "file"),
        Staged::Folder => (digest::folder(staging)?, "folder listing"),
    };
    let actual = stream::hex(&actual);
    if actual != expected {
        return Err(FetchError::DigestMismatch {
            uri: uri.to_string(),
            expected: expected.to_string(),
            actual,
            what,
        });
    }
    tracing::info!(%uri, sha256 = %actual, "digest verified");
    Ok(())
}

/// Writes `text` on one line (a store's multi-line answer, e.g. an XML error body, joined with
/// spaces, so that readers of the last line see all of it), at most [`TERMINATION_LOG_MAX`]
/// bytes cut at a character boundary, to `path` when its folder exists; a failure to write is
/// ignored (the error is in the log anyway).
fn write_termination_log(path: &Path, text: &str) {
    if !path.parent().is_some_and(Path::is_dir) {
        return;
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = text.as_str();
    let mut end = text.len().min(TERMINATION_LOG_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(error) = std::fs::write(path, &text[..end]) {
        tracing::debug!(path = %path.display(), %error, "cannot write the termination log");
    }
}

/// A source that was one archive file becomes its contents.
fn unpack_lone_archive(staging: &Path) -> Result<(), FetchError> {
    let Some(only) = archive::lone_entry(staging)? else {
        return Ok(());
    };
    let name = only.file_name().to_string_lossy().into_owned();
    match archive::Kind::of(&name) {
        Some(kind) if only.path().is_file() => {
            let unpacked = staging.join(".sluice-archive");
            archive::unpack(&only.path(), kind, &unpacked)?;
            tracing::info!(archive = %name, "unpacked");
            archive::move_contents(&unpacked, staging)
        }
        _ => Ok(()),
    }
}

/// A sibling of `dest` on the same volume would need write access to its parent, which a pod's
/// volume mount does not give; the staging area lives inside `dest` and is renamed entry by
/// entry.
fn staging_dir(dest: &Path) -> PathBuf {
    dest.join(".sluice-fetch-partial")
}

fn copy_local(uri: &str, source: &Path, staging: &Path) -> Result<Staged, FetchError> {
    if !source.exists() {
        return Err(FetchError::Missing {
            uri: http::redact(uri),
            path: source.to_path_buf(),
        });
    }
    if source.is_dir() {
        copy_tree(source, staging)?;
        Ok(Staged::Folder)
    } else {
        let name = source
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("model"));
        let path = staging.join(name);
        std::fs::copy(source, &path).map_err(io("copying", source))?;
        Ok(Staged::File { path, sha256: None })
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), FetchError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(io("copying", &entry.path()))?;
        }
    }
    Ok(())
}

/// Moves the staged entries into `dest`, replacing older ones, then removes the staging area.
fn publish(staging: &Path, dest: &Path) -> Result<(), FetchError> {
    for entry in std::fs::read_dir(staging).map_err(io("reading", staging))? {
        let entry = entry.map_err(io("reading", staging))?;
        let target = dest.join(entry.file_name());
        if target.is_dir() {
            std::fs::remove_dir_all(&target).map_err(io("replacing", &target))?;
        }
        std::fs::rename(entry.path(), &target).map_err(io("publishing", &target))?;
    }
    std::fs::remove_dir_all(staging).map_err(io("removing", staging))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(uri: String, dest: &Path) -> FetchArgs {
        FetchArgs {
            uri,
            dest: dest.to_path_buf(),
            pvc_root: PathBuf::from("/nonexistent"),
            mlflow_tracking_uri: None,
        }
    }

    #[tokio::test]
    async fn a_local_folder_is_copied_whole_and_unknown_schemes_are_named() {
        let root = std::env::temp_dir().join(format!("sluice-fetch-test-{}", std::process::id()));
        let source = root.join("model");
        std::fs::create_dir_all(source.join("1_Pooling")).expect("source");
        std::fs::write(source.join("sluice-model.yaml"), "format: onnx\n").expect("manifest");
        std::fs::write(source.join("1_Pooling/config.json"), "{}").expect("nested");
        let dest = root.join("dest");
        fetch(
            args(format!("file://{}", source.display()), &dest),
            &FetchOptions::default(),
        )
        .await
        .expect("fetched");
        assert!(dest.join("sluice-model.yaml").is_file());
        assert!(dest.join("1_Pooling/config.json").is_file());
        assert!(!staging_dir(&dest).exists(), "no partial files left");

        let err = fetch(
            args("ftp://host/model".into(), &dest),
            &FetchOptions::default(),
        )
        .await
        .expect_err("refused");
        assert!(
            err.to_string().contains("scheme \"ftp\" is not supported"),
            "{err}"
        );
        let err = fetch(
            args(format!("file://{}/absent", root.display()), &dest),
            &FetchOptions::default(),
        )
        .await
        .expect_err("missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[tokio::test]
    async fn a_wrong_digest_publishes_nothing_and_the_right_one_passes() {
        let root = std::env::temp_dir().join(format!("sluice-fetch-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root");
        let file = root.join("weights.bin");
        std::fs::write(&file, b"weights").expect("file");
        let dest = root.join("dest");
        let with = |sha256: &str| FetchOptions {
            sha256: Some(sha256.to_string()),
            ..FetchOptions::default()
        };
        let wrong = "0".repeat(64);
        let err = fetch(
            args(format!("file://{}", file.display()), &dest),
            &with(&wrong),
        )
        .await
        .expect_err("mismatch");
        let right = stream::hex(&digest::file(&file).expect("digest"));
        assert!(
            matches!(&err, FetchError::DigestMismatch { expected, actual, .. }
                if *expected == wrong && *actual == right),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&dest).expect("dest").count(),
            0,
            "nothing published"
        );

        fetch(
            args(format!("file://{}", file.display()), &dest),
            &with(&right.to_ascii_uppercase()),
        )
        .await
        .expect("the right digest, in capitals");
        assert_eq!(
            std::fs::read(dest.join("weights.bin")).expect("published"),
            b"weights"
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn the_termination_log_gets_at_most_4_kib_and_only_where_its_folder_exists() {
        let root =
            std::env::temp_dir().join(format!("sluice-fetch-termlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root");
        let log = root.join("termination-log");
        let long = "é".repeat(3000);
        write_termination_log(&log, &long);
        let written = std::fs::read_to_string(&log).expect("written");
        assert_eq!(written.len(), TERMINATION_LOG_MAX);
        assert!(long.starts_with(&written));
        write_termination_log(
            &log,
            "denied: <Error>\n  <Code>AuthenticationFailed</Code>\n</Error>\n",
        );
        assert_eq!(
            std::fs::read_to_string(&log).expect("written"),
            "denied: <Error> <Code>AuthenticationFailed</Code> </Error>",
            "one line"
        );
        let absent = root.join("absent/termination-log");
        write_termination_log(&absent, "error");
        assert!(!absent.exists());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
