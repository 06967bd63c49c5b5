//! Object-store locations: a location URI resolved to an [`ObjectStore`] through the
//! `object_store` crate, with its credentials and settings. The capture sidecar's inference table
//! lives at one (and writes its finished Parquet files into it); `fetch` reads model artifacts
//! from one.
//!
//! | URI | store | credentials and settings |
//! |---|---|---|
//! | `/abs/path`, `file:///abs/path` | local disk or a mounted PVC (atomic rename on write) | — |
//! | `s3://bucket/prefix` | S3 or any S3-compatible server | `AWS_*` env, or options such as `aws_endpoint=http://…`, `aws_allow_http=true` |
//! | `gs://bucket/prefix` | Google Cloud Storage | `GOOGLE_*` env or options |
//! | `az://container/prefix`, `abfss://container@account.dfs.core.windows.net/prefix` | Azure Blob / ADLS Gen2 | `AZURE_*` env or options |
//!
//! The client-side retries of `object_store` are kept short: the capture pipeline retries a
//! failed file itself, with its own backoff, and keeps the rows spooled meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, RetryConfig,
};
use url::Url;

/// Why a table location could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URI does not parse, or names a scheme no store serves.
    #[error("table location {uri:?}: {reason}")]
    Location {
        /// The location as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `key=value` option is not one the store knows.
    #[error("table location {uri:?}: option {key:?}: {source}")]
    Option {
        /// The location as given.
        uri: String,
        /// The option key.
        key: String,
        /// The store's complaint.
        source: Box<object_store::Error>,
    },
    /// The local table folder could not be created.
    #[error("creating the table folder {path}: {source}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store refused to be built (bad credentials setup, bad URL).
    #[error("opening table location {uri:?}: {source}")]
    Open {
        /// The location as given.
        uri: String,
        /// The store's error.
        source: Box<object_store::Error>,
    },
    /// Writing one object failed.
    #[error("writing {location} to the table at {uri:?}: {source}")]
    Put {
        /// The location as given.
        uri: String,
        /// The object written.
        location: String,
        /// The store's error.
        source: Box<object_store::Error>,
    },
}

/// An opened table location: a store and the prefix of the table inside it.
#[derive(Clone, Debug)]
pub struct TableStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    uri: String,
}

/// Longest a single attempt may take before the pipeline's own retry takes over.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn client_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
    }
}

/// Applies the client defaults (short timeouts), then the user's options (which may override
/// them), to a cloud store builder; environment settings read by `from_env` stay unless
/// an option overrides them.
fn configure<B, K>(
    uri: &str,
    mut builder: B,
    options: &[(String, String)],
    set: fn(B, K, String) -> B,
) -> Result<B, StoreError>
where
    K: std::str::FromStr<Err = object_store::Error>,
{
    let defaults = [
        ("timeout", format!("{}s", REQUEST_TIMEOUT.as_secs())),
        ("connect_timeout", format!("{}s", CONNECT_TIMEOUT.as_secs())),
    ];
    let options = defaults
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .chain(
            options
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
    for (key, value) in options {
        let parsed = key.parse().map_err(|source| StoreError::Option {
            uri: uri.to_string(),
            key: key.to_string(),
            source: Box::new(source),
        })?;
        builder = set(builder, parsed, value.to_string());
    }
    Ok(builder)
}

impl TableStore {
    /// Opens the table at `uri` with store `options` (`key=value` pairs such as
    /// `aws_endpoint`); cloud stores also read their usual environment variables.
    pub fn open(uri: &str, options: &[(String, String)]) -> Result<Self, StoreError> {
        let location = |reason: String| StoreError::Location {
            uri: uri.to_string(),
            reason,
        };
        let url = match Url::parse(uri) {
            Ok(url) => url,
            // A bare path: a local folder.
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                return Self::local(uri, PathBuf::from(uri));
            }
            Err(error) => return Err(location(error.to_string())),
        };
        let (scheme, prefix) = ObjectStoreScheme::parse(&url)
            .map_err(|error| location(format!("unsupported location: {error}")))?;
        let open = |source| StoreError::Open {
            uri: uri.to_string(),
            source: Box::new(source),
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                let path = url
                    .to_file_path()
                    .map_err(|()| location("not a local path".into()))?;
                return Self::local(uri, path);
            }
            ObjectStoreScheme::AmazonS3 => Arc::new(
                configure(
                    uri,
                    AmazonS3Builder::from_env().with_url(uri),
                    options,
                    AmazonS3Builder::with_config,
                )?
                .with_retry(client_retry())
                .build()
                .map_err(open)?,
            ),
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                configure(
                    uri,
                    GoogleCloudStorageBuilder::from_env().with_url(uri),
                    options,
                    GoogleCloudStorageBuilder::with_config,
                )?
                .with_retry(client_retry())
                .build()
                .map_err(open)?,
            ),
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                configure(
                    uri,
                    MicrosoftAzureBuilder::from_env().with_url(uri),
                    options,
                    MicrosoftAzureBuilder::with_config,
                )?
                .with_retry(client_retry())
                .build()
                .map_err(open)?,
            ),
            other => {
                return Err(location(format!(
                    "{other:?} is not a table store (use a path, file://, s3://, gs:// or az://)"
                )));
            }
        };
        Ok(Self {
            store,
            prefix,
            uri: uri.to_string(),
        })
    }

    fn local(uri: &str, path: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&path).map_err(|source| StoreError::CreateDir {
            path: path.clone(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&path).map_err(|source| StoreError::Open {
            uri: uri.to_string(),
            source: Box::new(source),
        })?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::default(),
            uri: uri.to_string(),
        })
    }

    /// The store and the location's prefix inside it (what `fetch` reads artifacts through).
    pub fn parts(&self) -> (&std::sync::Arc<dyn ObjectStore>, &Path) {
        (&self.store, &self.prefix)
    }

    /// The location as given.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The store with `/` at its root and the table's URL in it, as the Delta log wants them:
    /// for a local folder the file system root and a `file://` URL of the folder.
    pub fn root_and_url(&self) -> Result<(Arc<dyn ObjectStore>, Url), StoreError> {
        let location = |reason: &str| StoreError::Location {
            uri: self.uri.clone(),
            reason: reason.to_string(),
        };
        match Url::parse(&self.uri) {
            Ok(url) if url.scheme() != "file" => Ok((self.store.clone(), url)),
            parsed => {
                let path = match parsed {
                    Ok(url) => url
                        .to_file_path()
                        .map_err(|()| location("not a local path"))?,
                    Err(_) => PathBuf::from(&self.uri),
                };
                let path = std::path::absolute(&path)
                    .map_err(|_| location("cannot make the path absolute"))?;
                let url = Url::from_directory_path(&path)
                    .map_err(|()| location("not an absolute local path"))?;
                Ok((Arc::new(LocalFileSystem::new()), url))
            }
        }
    }

    /// Writes one object at `relative` (such as `date=2026-11-26/part-….parquet`) under the
    /// table prefix, replacing any object of that name: a retried write never duplicates rows.
    pub async fn put(&self, relative: &str, bytes: Bytes) -> Result<(), StoreError> {
        let location = self
            .prefix
            .parts()
            .chain(Path::from(relative).parts())
            .collect::<Path>();
        self.store
            .put(&location, PutPayload::from_bytes(bytes))
            .await
            .map(drop)
            .map_err(|source| StoreError::Put {
                uri: self.uri.clone(),
                location: location.to_string(),
                source: Box::new(source),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_locations_keep_their_prefix() {
        let options = vec![
            ("aws_endpoint".to_string(), "http://127.0.0.1:9".to_string()),
            ("aws_allow_http".to_string(), "true".to_string()),
            ("aws_region".to_string(), "us-east-1".to_string()),
        ];
        let store = TableStore::open("s3://lake/main/fraud_payload", &options).unwrap();
        assert_eq!(store.prefix.as_ref(), "main/fraud_payload");
    }

    #[test]
    fn unknown_options_and_schemes_are_errors() {
        let bad = vec![("no_such_option".to_string(), "1".to_string())];
        assert!(matches!(
            TableStore::open("s3://lake/t", &bad),
            Err(StoreError::Option { .. })
        ));
        assert!(matches!(
            TableStore::open("ftp://host/t", &[]),
            Err(StoreError::Location { .. })
        ));
    }

    #[tokio::test]
    async fn local_tables_write_files_under_the_folder() {
        let dir = std::env::temp_dir().join(format!("sluice-table-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = TableStore::open(dir.to_str().unwrap(), &[]).unwrap();
        store
            .put("date=2026-11-26/part-a.parquet", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(dir.join("date=2026-11-26/part-a.parquet").is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
