//! `fetch --check`: the source check. The operator runs it, as a Job in the ModelVersion's
//! namespace with the version's Secret, before any endpoint's pod fetches the artifact: it
//! proves the source exists and is readable with the credentials a pod would get, and
//! downloads nothing. What it found ("2 objects, 1.2 MiB") is printed and written to the
//! termination log, where the operator reads it; a failure is the same error `fetch` would give.

use std::path::Path;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use reqwest::StatusCode;
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
        return Ok(format!("{shown}: readable, {found}"));
    }
    let (scheme, rest) = args
        .uri
        .split_once("://")
        .unwrap_or(("", args.uri.as_str()));
    let found = match scheme {
        "file" => local(
            &args.uri,
            Path::new(&format!("/{}", rest.trim_start_matches('/'))),
        )?,
        "pvc" => local(&args.uri, &args.pvc_root.join(rest))?,
        "http" | "https" => web(&args.uri, &shown, transfer).await?,
        "s3" | "s3a" | "gs" | "az" | "abfss" | "adl" | "azure" => store(&args.uri).await?,
        other => {
            return Err(FetchError::Unsupported {
                uri: shown,
                scheme: other.to_string(),
            });
        }
    };
    Ok(format!("{shown}: readable, {found}"))
}

/// A file or folder on a mounted volume.
fn local(uri: &str, path: &Path) -> Result<Found, FetchError> {
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

/// One object, or every object under the prefix.
async fn store(uri: &str) -> Result<Found, FetchError> {
    let failed = |message: String| FetchError::Store {
        uri: uri.to_string(),
        message,
    };
    let opened = TableStore::open(uri, &[]).map_err(|e| failed(e.to_string()))?;
    let (store, prefix) = opened.parts();
    if !prefix.as_ref().is_empty()
        && let Ok(meta) = store.head(prefix).await
    {
        return Ok(Found {
            objects: 1,
            bytes: Some(meta.size),
        });
    }
    let mut listing = store.list(Some(prefix));
    let mut found = Found {
        objects: 0,
        bytes: Some(0),
    };
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| failed(e.to_string()))?;
        found.objects += 1;
        found.bytes = found.bytes.map(|b| b + meta.size);
    }
    if found.objects == 0 {
        return Err(FetchError::Missing {
            uri: uri.to_string(),
            path: prefix.as_ref().into(),
        });
    }
    Ok(found)
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
        let err = check(&args("pvc://absent/x".into()), &transfer)
            .await
            .expect_err("missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!root.join("dest").exists(), "a check writes nothing");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
