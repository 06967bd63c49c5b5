//! The tables the monitor reads: the live Parquet files of an inference table (every
//! `*.parquet` under it, or a Delta table's live files), registered in DataFusion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use deltalake_core::DeltaTableBuilder;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use sluice_store::TableStore;
use url::Url;

use crate::MonitorError;

/// One data file of a table, as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileVersion {
    /// Size in bytes.
    pub size: u64,
    /// The store's version of the object (ETag, else the modification time).
    pub version: String,
}

/// A table's data files: their URLs (as DataFusion reads them) and versions.
#[derive(Debug)]
pub struct Table {
    /// The table as given.
    pub uri: String,
    root: Arc<dyn ObjectStore>,
    url: Url,
    /// Every live data file, by its URL.
    pub files: BTreeMap<String, FileVersion>,
}

fn file_url(url: &Url, location: &Path) -> String {
    match url.scheme() {
        "file" => format!("file:///{location}"),
        scheme => format!(
            "{scheme}://{}/{location}",
            url.host_str().unwrap_or_default()
        ),
    }
}

impl Table {
    /// Lists the table at `uri` (a Delta table when it has a `_delta_log`).
    pub async fn list(uri: &str, options: &[(String, String)]) -> Result<Self, MonitorError> {
        let store = TableStore::open(uri, options).map_err(|source| MonitorError::Store {
            source: Box::new(source),
        })?;
        let (root, url) = store.root_and_url().map_err(|source| MonitorError::Store {
            source: Box::new(source),
        })?;
        let prefix = Path::from_url_path(url.path()).map_err(|source| MonitorError::List {
            uri: uri.to_string(),
            source: Box::new(source.into()),
        })?;
        let listed: Vec<_> = root
            .list(Some(&prefix))
            .try_collect()
            .await
            .or_else(|error| match error {
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                other => Err(other),
            })
            .map_err(|source| MonitorError::List {
                uri: uri.to_string(),
                source: Box::new(source),
            })?;
        let is_delta = listed
            .iter()
            .any(|meta| meta.location.as_ref().contains("/_delta_log/"));
        let live: Option<BTreeSet<String>> = if is_delta {
            let table = DeltaTableBuilder::from_url(url.clone())
                .map(|builder| builder.with_storage_backend(root.clone(), url.clone()))
                .map_err(|source| MonitorError::Delta {
                    uri: uri.to_string(),
                    source: Box::new(source),
                })?
                .load()
                .await
                .map_err(|source| MonitorError::Delta {
                    uri: uri.to_string(),
                    source: Box::new(source),
                })?;
            let files = table
                .get_file_uris()
                .map_err(|source| MonitorError::Delta {
                    uri: uri.to_string(),
                    source: Box::new(source),
                })?
                .map(|file| {
                    Url::parse(&file)
                        .ok()
                        .and_then(|parsed| Path::from_url_path(parsed.path()).ok())
                        .map_or(file, |path| path.to_string())
                })
                .collect();
            Some(files)
        } else {
            None
        };
        let files = listed
            .into_iter()
            .filter(|meta| {
                let location = meta.location.as_ref();
                location.ends_with(".parquet")
                    && !location.contains("/_delta_log/")
                    && live.as_ref().is_none_or(|live| live.contains(location))
            })
            .map(|meta| {
                let version = meta
                    .e_tag
                    .clone()
                    .unwrap_or_else(|| meta.last_modified.to_rfc3339());
                (
                    file_url(&url, &meta.location),
                    FileVersion {
                        size: meta.size,
                        version,
                    },
                )
            })
            .collect();
        Ok(Self {
            uri: uri.to_string(),
            root,
            url,
            files,
        })
    }

    /// Registers the files named (all of them when `only` is `None`) as table `name`; false
    /// when there is no file to register.
    pub async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
        only: Option<&BTreeSet<String>>,
    ) -> Result<bool, MonitorError> {
        let urls = self
            .files
            .keys()
            .filter(|file| only.is_none_or(|only| only.contains(*file)))
            .map(ListingTableUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Ok(false);
        }
        let mut origin = self.url.clone();
        origin.set_path("/");
        ctx.register_object_store(&origin, self.root.clone());
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await?;
        ctx.deregister_table(name)?;
        ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
        Ok(true)
    }
}
