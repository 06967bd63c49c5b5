//! Artifacts on object stores (`s3://`, `gs://`, `az://`, `abfss://`): one object, or every
//! object under a prefix (a model folder), streamed to disk chunk by chunk with a stall timeout
//! and progress in the log ([`super::stream`]). The store comes from the same URI resolution as
//! the inference table's ([`sluice_store::TableStore`]): credentials and settings from the
//! cloud's usual environment variables (`AWS_*` with `AWS_ENDPOINT_URL` for an S3-compatible
//! server, `GOOGLE_*`, `AZURE_*`), which the pod gets from the ModelVersion's `secretRef`; short
//! connect/request timeouts and the client's retries with backoff.

use std::path::Path;

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, path::Path as StorePath};
use sha2::{Digest, Sha256};
use sluice_store::TableStore;
use tokio::io::BufWriter;

use super::{
    FetchError, Staged, io,
    stream::{self, CopyError, Progress, Transfer},
};

/// Client settings for artifacts: the table's short per-request timeout would cut a
/// multi-gigabyte download, so a request may last hours; stalls are caught by
/// [`Transfer::stall_timeout`] instead.
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

/// Copies the object `uri` names (a file), or every object under it (a folder), into `staging`.
pub async fn fetch(uri: &str, staging: &Path, transfer: &Transfer) -> Result<Staged, FetchError> {
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
        let path = staging.join(name);
        let mut hasher = transfer.hash.then(Sha256::new);
        copy_object(
            uri,
            store.as_ref(),
            &meta.location,
            meta.size,
            &path,
            transfer,
            hasher.as_mut(),
        )
        .await?;
        return Ok(Staged::File {
            path,
            sha256: hasher.map(|h| h.finalize().into()),
        });
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
        copy_object(
            uri,
            store.as_ref(),
            &meta.location,
            meta.size,
            &target,
            transfer,
            None,
        )
        .await?;
    }
    Ok(Staged::Folder)
}

/// Streams one object to `target`, feeding `hasher` when given.
async fn copy_object(
    uri: &str,
    store: &dyn ObjectStore,
    location: &StorePath,
    size: u64,
    target: &Path,
    transfer: &Transfer,
    hasher: Option<&mut Sha256>,
) -> Result<(), FetchError> {
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io("creating", parent))?;
    }
    let file = tokio::fs::File::create(target)
        .await
        .map_err(io("creating", target))?;
    let mut file = BufWriter::with_capacity(stream::WRITE_BUFFER, file);
    let mut chunks = store
        .get(location)
        .await
        .map_err(store_err(uri))?
        .into_stream();
    let mut progress = Progress::new(location.to_string(), Some(size), transfer.progress_every);
    let mut written = 0;
    stream::copy(
        &mut chunks,
        &mut file,
        target,
        &mut written,
        transfer.stall_timeout,
        &mut progress,
        hasher,
    )
    .await
    .map_err(|e| match e {
        CopyError::Stalled(stalled) => FetchError::Store {
            uri: uri.to_string(),
            message: format!("{location}: {stalled}"),
        },
        CopyError::Source(source) => store_err(uri)(source),
        CopyError::Write { path, source } => FetchError::Io {
            action: "writing",
            path,
            source,
        },
    })?;
    if written != size {
        return Err(FetchError::Store {
            uri: uri.to_string(),
            message: format!("{location}: got {written} bytes of {size}"),
        });
    }
    progress.done(written);
    Ok(())
}
