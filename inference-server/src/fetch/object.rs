//! Artifacts on object stores (`s3://`, `gs://`, `az://`, `abfss://`): one object, or every
//! object under a prefix (a model folder), streamed to disk chunk by chunk (memory stays at one
//! chunk whatever the size), with progress in the log (bytes, total, rate) at most every
//! [`PROGRESS_EVERY`]. The store comes from the same URI resolution as the inference table's
//! ([`crate::table::store::TableStore`]): credentials and settings from the cloud's usual
//! environment variables (`AWS_*` with `AWS_ENDPOINT_URL` for an S3-compatible server,
//! `GOOGLE_*`, `AZURE_*`), which the pod gets from the ModelVersion's `secretRef`; short
//! connect/request timeouts and the client's retries with backoff.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, path::Path as StorePath};
use tokio::io::AsyncWriteExt;

use super::{FetchError, io};
use crate::table::store::TableStore;

/// How often a long download logs its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// A download that receives nothing for this long fails (a read timeout; connecting has its own
/// short one, and a whole transfer may take hours).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Client settings for artifacts: the table's short per-request timeout would cut a
/// multi-gigabyte download, so a request may last hours; stalls are caught by
/// [`STALL_TIMEOUT`] instead.
fn client_options() -> Vec<(String, String)> {
    vec![
        ("timeout".into(), "6h".into()),
        ("connect_timeout".into(), "10s".into()),
    ]
}

fn store_err(uri: &str) -> impl Fn(object_store::Error) -> FetchError + '_ {
    move |source| FetchError::Store {
        uri: uri.to_string(),
        message: source.to_string(),
    }
}

/// Copies the object `uri` names, or every object under it, into `staging`.
pub async fn fetch(uri: &str, staging: &Path) -> Result<(), FetchError> {
    let opened = TableStore::open(uri, &client_options()).map_err(|e| FetchError::Store {
        uri: uri.to_string(),
        message: e.to_string(),
    })?;
    let (store, prefix) = opened.parts();
    // One object: the URI names it exactly.
    if !prefix.as_ref().is_empty()
        && let Ok(meta) = store.head(prefix).await
    {
        let name = prefix.filename().unwrap_or("model").to_string();
        return copy_object(
            uri,
            store.as_ref(),
            &meta.location,
            meta.size,
            &staging.join(name),
        )
        .await;
    }
    let mut listing = store.list(Some(prefix));
    let mut objects = Vec::new();
    while let Some(meta) = listing.next().await {
        objects.push(meta.map_err(store_err(uri))?);
    }
    if objects.is_empty() {
        return Err(FetchError::Missing {
            uri: uri.to_string(),
            path: prefix.as_ref().into(),
        });
    }
    let total: u64 = objects.iter().map(|m| m.size).sum();
    tracing::info!(%uri, objects = objects.len(), bytes = total, "downloading a folder");
    for meta in objects {
        let relative: Vec<_> = meta
            .location
            .prefix_match(prefix)
            .into_iter()
            .flatten()
            .collect();
        let mut target = staging.to_path_buf();
        for part in &relative {
            target.push(part.as_ref());
        }
        if relative.is_empty() {
            continue;
        }
        copy_object(uri, store.as_ref(), &meta.location, meta.size, &target).await?;
    }
    Ok(())
}

/// Streams one object to `target`.
async fn copy_object(
    uri: &str,
    store: &dyn ObjectStore,
    location: &StorePath,
    size: u64,
    target: &Path,
) -> Result<(), FetchError> {
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io("creating", parent))?;
    }
    let mut file = tokio::fs::File::create(target)
        .await
        .map_err(io("creating", target))?;
    let mut stream = store
        .get(location)
        .await
        .map_err(store_err(uri))?
        .into_stream();
    let started = Instant::now();
    let mut last_report = started;
    let mut written: u64 = 0;
    loop {
        let next = tokio::time::timeout(STALL_TIMEOUT, stream.next())
            .await
            .map_err(|_| FetchError::Store {
                uri: uri.to_string(),
                message: format!(
                    "{location}: no data for {} s after {written} of {size} bytes",
                    STALL_TIMEOUT.as_secs()
                ),
            })?;
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(store_err(uri))?;
        file.write_all(&chunk)
            .await
            .map_err(io("writing", target))?;
        written += chunk.len() as u64;
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            progress(location, written, size, started);
        }
    }
    file.flush().await.map_err(io("writing", target))?;
    if written != size {
        return Err(FetchError::Store {
            uri: uri.to_string(),
            message: format!("{location}: got {written} bytes of {size}"),
        });
    }
    progress(location, written, size, started);
    Ok(())
}

fn progress(location: &StorePath, written: u64, size: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(
        object = %location,
        bytes = written,
        total = size,
        mib_per_s = format!("{:.1}", written as f64 / seconds / 1_048_576.0),
        "download progress"
    );
}
