//! `inference-server fetch`: the init step of every entity pod. Copies a model artifact from its
//! URI into the model directory (`/models`), atomically: the files appear under `--dest` only
//! once complete, so `serve` never reads half an artifact.
//!
//! Sources: `file://` (a folder or a single file, e.g. on a mounted volume), `pvc://claim/path`
//! (the claim mounted at `--pvc-root/<claim>`), object stores (`s3://`, `gs://`, `az://`,
//! `abfss://`: one object or a whole prefix, streamed, see [`object`]), and
//! `http://`/`https://` (one file). A source that is a single archive (`.tar.gz`, `.tgz`,
//! `.tar`, `.zip`) is unpacked safely ([`archive`]). Registry references (`models:/`,
//! `mlflow://`) are refused with a message naming the scheme.

mod archive;
mod object;

use std::path::{Path, PathBuf};

use clap::Args;

/// Arguments of `fetch`.
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
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI's scheme is not one `fetch` can read.
    #[error(
        "cannot fetch {uri}: scheme {scheme:?} is not supported by this build (supported: file://, pvc://, s3://, gs://, az://, abfss://, http://, https://)"
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
    #[error("downloading {uri}: {message}")]
    Http {
        /// The URI.
        uri: String,
        /// What went wrong.
        message: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

/// Fetches `args.uri` into `args.dest`.
pub async fn run(args: FetchArgs) -> Result<(), FetchError> {
    let (scheme, rest) = args
        .uri
        .split_once("://")
        .unwrap_or(("", args.uri.as_str()));
    let staging = staging_dir(&args.dest);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("clearing", &staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
    match scheme {
        "file" => copy_local(
            &args.uri,
            Path::new(&format!("/{}", rest.trim_start_matches('/'))),
            &staging,
        )?,
        "pvc" => copy_local(&args.uri, &args.pvc_root.join(rest), &staging)?,
        "http" | "https" => download(&args.uri, &staging).await?,
        "s3" | "s3a" | "gs" | "az" | "abfss" | "adl" | "azure" => {
            object::fetch(&args.uri, &staging).await?
        }
        other => {
            return Err(FetchError::Unsupported {
                uri: args.uri.clone(),
                scheme: other.to_string(),
            });
        }
    }
    unpack_lone_archive(&staging)?;
    publish(&staging, &args.dest)?;
    tracing::info!(uri = %args.uri, dest = %args.dest.display(), "artifact fetched");
    Ok(())
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

fn copy_local(uri: &str, source: &Path, staging: &Path) -> Result<(), FetchError> {
    if !source.exists() {
        return Err(FetchError::Missing {
            uri: uri.to_string(),
            path: source.to_path_buf(),
        });
    }
    if source.is_dir() {
        copy_tree(source, staging)
    } else {
        let name = source
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("model"));
        std::fs::copy(source, staging.join(name))
            .map(drop)
            .map_err(io("copying", source))
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

async fn download(uri: &str, staging: &Path) -> Result<(), FetchError> {
    let http = |message: String| FetchError::Http {
        uri: uri.to_string(),
        message,
    };
    let response = reqwest::get(uri).await.map_err(|e| http(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(http(format!("HTTP {status}")));
    }
    let name = uri
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("model")
        .to_string();
    let bytes = response.bytes().await.map_err(|e| http(e.to_string()))?;
    let path = staging.join(name);
    std::fs::write(&path, &bytes).map_err(io("writing", &path))
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
        run(args(format!("file://{}", source.display()), &dest))
            .await
            .expect("fetched");
        assert!(dest.join("sluice-model.yaml").is_file());
        assert!(dest.join("1_Pooling/config.json").is_file());
        assert!(!staging_dir(&dest).exists(), "no partial files left");

        let err = run(args("ftp://host/model".into(), &dest))
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("scheme \"ftp\" is not supported"),
            "{err}"
        );
        let err = run(args(format!("file://{}/absent", root.display()), &dest))
            .await
            .expect_err("missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
