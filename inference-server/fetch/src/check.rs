//! `fetch --check`: the source check. The operator runs it, as a Job in the ModelVersion's
//! namespace with the version's Secret, before any endpoint's pod fetches the artifact: it
//! proves the source exists and is readable with the credentials a pod would get, and
//! downloads nothing. What it found ("2 objects, 1.2 MiB", and the flavors of a folder's
//! `MLmodel` with the engine they need) is printed and written to the termination log, where
//! the operator reads it; a failure is the same error `fetch` would give.

use std::path::Path;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use reqwest::StatusCode;
use sluice_contract::mlflow::Flavors;
use sluice_protocol::manifest::{MLMODEL_FILE, parse_mlmodel};
use sluice_store::TableStore;

use super::{
    FetchArgs, FetchError,
    http::{self, CONNECT_TIMEOUT, HttpError},
    io, mlflow,
    stream::Transfer,
};

/// What the source holds: objects (files) and their bytes (when known).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Files or objects.
    pub objects: u64,
    /// Their total size, when the source says it.
    pub bytes: Option<u64>,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = if self.objects == 1 { "" } else { "s" };
        write!(f, "{} object{plural}", self.objects)?;
        if let Some(bytes) = self.bytes {
            write!(f, ", {}", human(bytes))?;
        }
        Ok(())
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Checks `args.uri` without downloading it; the summary names the URI (redacted) and what it
/// holds.
pub async fn check(args: &FetchArgs, transfer: &Transfer) -> Result<String, FetchError> {
    let shown = http::redact(&args.uri);
    if sluice_contract::mlflow::is_reference(&args.uri) {
        // The operator reads the location back into the ModelVersion's `status.resolvedUri`.
        let tracking = mlflow::Tracking::from_env(args.mlflow_tracking_uri.as_deref(), &args.uri)?;
        let location = tracking.resolve(&args.uri).await?;
        let resolved = FetchArgs {
            uri: location.clone(),
            dest: args.dest.clone(),
            pvc_root: args.pvc_root.clone(),
            mlflow_tracking_uri: args.mlflow_tracking_uri.clone(),
        };
        let found = Box::pin(check(&resolved, transfer)).await?;
        let found = found
            .strip_prefix(&format!("{}: ", http::redact(&location)))
            .unwrap_or(&found)
            .to_string();
        return Ok(sluice_contract::mlflow::resolved_summary(
            &shown,
            &http::redact(&location),
            &found,
        ));
    }
    if let Some(path) = mlflow::artifact_path(&args.uri) {
        let tracking = mlflow::Tracking::from_env(args.mlflow_tracking_uri.as_deref(), &args.uri)?;
        let files = tracking.list(&args.uri, path).await?;
        let found = Found {
            objects: files.len() as u64,
            bytes: files.iter().map(|(_, size)| *size).sum(),
        };
        let mlmodel = match files.iter().find(|(name, _)| name == MLMODEL_FILE) {
            Some((name, size)) if size.is_none_or(|s| s <= MLMODEL_MAX) => {
                Some(tracking.text(&args.uri, path, name).await?)
            }
            _ => None,
        };
        return Ok(format!(
            "{shown}: readable, {found}{}",
            flavors_note(&shown, mlmodel)?
        ));
    }
    let (scheme, rest) = args
        .uri
        .split_once("://")
        .unwrap_or(("", args.uri.as_str()));
    let (found, mlmodel) = match scheme {
        "file" => {
            let path = format!("/{}", rest.trim_start_matches('/'));
            local(&args.uri, Path::new(&path))?
        }
        "pvc" => local(&args.uri, &args.pvc_root.join(rest))?,
        "http" | "https" => (web(&args.uri, &shown, transfer).await?, None),
        "s3" | "s3a" | "gs" | "az" | "abfss" | "adl" | "azure" => store(&args.uri).await?,
        other => {
            return Err(FetchError::Unsupported {
                uri: shown,
                scheme: other.to_string(),
            });
        }
    };
    Ok(format!(
        "{shown}: readable, {found}{}",
        flavors_note(&shown, mlmodel)?
    ))
}

/// An `MLmodel` larger than this is not read (MLflow writes a few KiB).
const MLMODEL_MAX: u64 = 1024 * 1024;

/// What the source check says about an artifact's `MLmodel` (its text, when the artifact is a
/// folder that has one): the flavors and the engine they need, for the operator to publish
/// in the ModelVersion's status. A file that does not parse fails the check, as it would
/// fail `serve`.
fn flavors_note(shown: &str, mlmodel: Option<String>) -> Result<String, FetchError> {
    let Some(text) = mlmodel else {
        return Ok(String::new());
    };
    let parsed = parse_mlmodel(&text).map_err(|source| FetchError::Mlmodel {
        uri: shown.to_string(),
        source,
    })?;
    let builtin = parsed.builtin_flavor().is_some();
    Ok(Flavors::new(parsed.flavors.into_keys().collect(), builtin).note())
}

/// A file or folder on a mounted volume, and the folder's `MLmodel` text if it has one.
fn local(uri: &str, path: &Path) -> Result<(Found, Option<String>), FetchError> {
    let found = local_found(uri, path)?;
    let mlmodel = path.join(MLMODEL_FILE);
    let small = std::fs::metadata(&mlmodel).is_ok_and(|m| m.is_file() && m.len() <= MLMODEL_MAX);
    let text = small
        .then(|| std::fs::read_to_string(&mlmodel).map_err(io("reading", &mlmodel)))
        .transpose()?;
    Ok((found, text))
}

fn local_found(uri: &str, path: &Path) -> Result<Found, FetchError> {
    if !path.exists() {
        return Err(FetchError::Missing {
            uri: uri.to_string(),
            path: path.to_path_buf(),
        });
    }
    let mut found = Found {
        objects: 0,
        bytes: Some(0),
    };
    let mut pending = vec![path.to_path_buf()];
    while let Some(next) = pending.pop() {
        let meta = std::fs::metadata(&next).map_err(io("reading", &next))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&next).map_err(io("reading", &next))? {
                pending.push(entry.map_err(io("reading", &next))?.path());
            }
        } else {
            // Readable, not only listed.
            std::fs::File::open(&next).map_err(io("opening", &next))?;
            found.objects += 1;
            found.bytes = found.bytes.map(|b| b + meta.len());
        }
    }
    Ok(found)
}

/// One object, or every object under the prefix (and the prefix's `MLmodel` text, if it has
/// one).
async fn store(uri: &str) -> Result<(Found, Option<String>), FetchError> {
    let failed = |message: String| FetchError::Store {
        uri: uri.to_string(),
        message,
    };
    let opened = TableStore::open(uri, &[]).map_err(|e| failed(e.to_string()))?;
    let (store, prefix) = opened.parts();
    if !prefix.as_ref().is_empty()
        && let Ok(meta) = store.head(prefix).await
    {
        let found = Found {
            objects: 1,
            bytes: Some(meta.size),
        };
        return Ok((found, None));
    }
    let mut listing = store.list(Some(prefix));
    let mut found = Found {
        objects: 0,
        bytes: Some(0),
    };
    let mlmodel = prefix.clone().join(MLMODEL_FILE);
    let mut mlmodel_found = false;
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| failed(e.to_string()))?;
        found.objects += 1;
        found.bytes = found.bytes.map(|b| b + meta.size);
        mlmodel_found |= meta.location == mlmodel && meta.size <= MLMODEL_MAX;
    }
    if found.objects == 0 {
        return Err(FetchError::Missing {
            uri: uri.to_string(),
            path: prefix.as_ref().into(),
        });
    }
    let text = if mlmodel_found {
        let bytes = store
            .get(&mlmodel)
            .await
            .map_err(|e| failed(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| failed(e.to_string()))?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        None
    };
    Ok((found, text))
}

/// The first byte of the file: a HEAD is refused by some presigned URLs, a one-byte GET is not.
async fn web(uri: &str, shown: &str, transfer: &Transfer) -> Result<Found, FetchError> {
    let failed = |source| FetchError::Http {
        uri: shown.to_string(),
        attempts: 1,
        source,
    };
    let url = reqwest::Url::parse(uri).map_err(|e| failed(HttpError::Url(e)))?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| failed(HttpError::Transport(e.without_url())))?;
    let request = client
        .get(url)
        .header(reqwest::header::RANGE, "bytes=0-0")
        .send();
    let response = tokio::time::timeout(transfer.stall_timeout, request)
        .await
        .map_err(|_| failed(HttpError::NoResponse(transfer.stall_timeout)))?
        .map_err(|e| failed(HttpError::Transport(e.without_url())))?;
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
    };
    let bytes = match status {
        StatusCode::PARTIAL_CONTENT => header(reqwest::header::CONTENT_RANGE)
            .and_then(|r| r.rsplit_once('/'))
            .and_then(|(_, total)| total.parse().ok()),
        StatusCode::OK => header(reqwest::header::CONTENT_LENGTH).and_then(|l| l.parse().ok()),
        StatusCode::NOT_FOUND => return Err(failed(HttpError::NotFound)),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            return Err(failed(HttpError::Denied(status.as_u16())));
        }
        other => return Err(failed(HttpError::Status(other.as_u16()))),
    };
    Ok(Found { objects: 1, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_found_reads_well() {
        let found = Found {
            objects: 2,
            bytes: Some(3 * 1024 * 1024 / 2),
        };
        assert_eq!(found.to_string(), "2 objects, 1.5 MiB");
        let one = Found {
            objects: 1,
            bytes: None,
        };
        assert_eq!(one.to_string(), "1 object");
        assert_eq!(human(12), "12 B");
    }

    #[tokio::test]
    async fn a_local_folder_is_counted_and_a_missing_one_named() {
        let root = std::env::temp_dir().join(format!("sluice-check-{}", std::process::id()));
        std::fs::create_dir_all(root.join("model/sub")).expect("folder");
        std::fs::write(root.join("model/a"), b"abc").expect("a");
        std::fs::write(root.join("model/sub/b"), b"de").expect("b");
        let args = |uri: String| FetchArgs {
            uri,
            dest: root.join("dest"),
            pvc_root: root.clone(),
            mlflow_tracking_uri: None,
        };
        let transfer = Transfer {
            stall_timeout: std::time::Duration::from_secs(5),
            progress_every: std::time::Duration::from_secs(5),
            retry_delay: std::time::Duration::from_secs(1),
            hash: false,
        };
        let summary = check(&args("pvc://model".into()), &transfer)
            .await
            .expect("checked");
        assert_eq!(summary, "pvc://model: readable, 2 objects, 5 B");
        std::fs::write(
            root.join("model/MLmodel"),
            "flavors:\n  python_function: {loader_module: mlflow.sklearn}\n  sklearn: {}\n",
        )
        .expect("MLmodel");
        let summary = check(&args("pvc://model".into()), &transfer)
            .await
            .expect("checked");
        assert_eq!(
            summary,
            "pvc://model: readable, 3 objects, 79 B; MLmodel flavors python_function, sklearn \
             (runtime mlflow)"
        );
        std::fs::write(root.join("model/MLmodel"), "flavors: [not, a, map]\n").expect("MLmodel");
        let err = check(&args("pvc://model".into()), &transfer)
            .await
            .expect_err("broken MLmodel");
        assert!(
            err.to_string()
                .starts_with("pvc://model: its MLmodel does not parse"),
            "{err}"
        );
        let err = check(&args("pvc://absent/x".into()), &transfer)
            .await
            .expect_err("missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!root.join("dest").exists(), "a check writes nothing");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
