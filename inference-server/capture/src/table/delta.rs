//! The optional Delta Lake table over the same part files (`capture --table-format delta`),
//! through the `deltalake` crate (`deltalake-core`: the transaction log, no query engine).
//!
//! Each spool segment's files are written first, then added to the table in one commit that
//! carries an application transaction `txn { appId: <sidecar instance>, version: <segment> }`.
//! Before writing a segment the sidecar asks the table for its own last transaction version:
//! a segment at or below it was committed already (the sidecar died between the commit and
//! removing the segment from its spool), so it is skipped and no row is added twice.
//!
//! Many sidecars append to one table: their commits are blind appends with distinct app ids,
//! which `deltalake` retries on a version conflict (the log entry is written with put-if-absent,
//! so two writers never both take a version). That needs a store with conditional put: a local
//! folder or PVC, GCS, Azure, and S3 (or an S3-compatible server) that honours `If-None-Match`.
//!
//! The table is partitioned by `date` (each add names its `date=YYYY-MM-DD/` folder's value);
//! the files also keep `date` as a column, so the plain Hive-folder readers see the same rows.

use std::sync::Arc;

use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, StructType, Transaction};
use deltalake_core::logstore::{
    LogStoreFactory, LogStoreRef, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories,
};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use sluice_store::{StoreError, TableStore};
use tokio::sync::Mutex;
use url::Url;

use super::{PartFile, TableKind};

/// Commit attempts before a commit fails (each conflict with another sidecar's commit costs
/// one); the pipeline then retries the whole segment with backoff.
const MAX_COMMIT_ATTEMPTS: usize = 50;

/// Why the Delta table could not be read or appended to. Always worth a retry: the files are
/// rewritten idempotently and the commit is skipped once it took.
#[derive(Debug, thiserror::Error)]
#[error("Delta table at {uri:?}: {what}: {source}")]
pub struct DeltaError {
    /// The table location.
    pub uri: String,
    /// What was being done.
    pub what: &'static str,
    /// The `deltalake` error.
    #[source]
    pub source: Box<DeltaTableError>,
}

/// What committing a segment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The table version of the commit.
    pub version: i64,
    /// Commit attempts lost to other writers' commits before this one took.
    pub conflicts: u64,
}

/// The Delta log of one sidecar's table.
pub struct DeltaLog {
    kind: TableKind,
    uri: String,
    app_id: String,
    root: ObjectStoreRef,
    location: Url,
    table: Mutex<Option<DeltaTable>>,
}

impl std::fmt::Debug for DeltaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaLog")
            .field("uri", &self.uri)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// `deltalake` knows only local and in-memory stores by itself; cloud stores are opened by
/// [`TableStore`] and get the default log store (put-if-absent commits) here.
#[derive(Debug)]
struct ConditionalPutLogStores;

impl LogStoreFactory for ConditionalPutLogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake_core::DeltaResult<LogStoreRef> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_cloud_log_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let registry = logstore_factories();
        for scheme in ["s3://", "gs://", "az://", "abfss://"] {
            if let Ok(url) = Url::parse(scheme) {
                registry.insert(url, Arc::new(ConditionalPutLogStores));
            }
        }
    });
}

impl DeltaLog {
    /// The Delta log of the table at `store`, written as application `app_id` (the sidecar's
    /// stable instance id). Nothing is read until the first commit.
    pub fn new(store: &TableStore, app_id: &str, kind: TableKind) -> Result<Self, StoreError> {
        register_cloud_log_stores();
        let (root, location) = store.root_and_url()?;
        Ok(Self {
            kind,
            uri: store.uri().to_string(),
            app_id: app_id.to_string(),
            root,
            location,
            table: Mutex::new(None),
        })
    }

    fn error(&self, what: &'static str) -> impl FnOnce(DeltaTableError) -> DeltaError + '_ {
        move |source| DeltaError {
            uri: self.uri.clone(),
            what,
            source: Box::new(source),
        }
    }

    fn builder(&self) -> Result<DeltaTableBuilder, DeltaError> {
        Ok(DeltaTableBuilder::from_url(self.location.clone())
            .map_err(self.error("opening"))?
            .with_storage_backend(self.root.clone(), self.location.clone()))
    }

    /// The table at its newest version, created (empty, with the record schema) if there is
    /// none yet; another sidecar creating it at the same moment is fine.
    async fn load_or_create(&self) -> Result<DeltaTable, DeltaError> {
        match self.builder()?.load().await {
            Ok(table) => return Ok(table),
            Err(DeltaTableError::NotATable(_)) => {}
            Err(other) => return Err(self.error("loading")(other)),
        }
        let schema: StructType = (self.kind.schema)()
            .try_into_kernel()
            .map_err(|e| self.error("converting the schema")(e.into()))?;
        let log_store = self
            .builder()?
            .build_storage()
            .map_err(self.error("opening"))?;
        let created = CreateBuilder::new()
            .with_log_store(log_store)
            .with_table_name(self.kind.name)
            .with_comment(self.kind.comment)
            .with_columns(schema.fields().cloned())
            .with_partition_columns(["date"])
            .with_save_mode(SaveMode::Ignore)
            // Version 0 or nothing: a create retried at the next version (after another
            // sidecar took 0) would add a second CREATE TABLE commit to the log.
            .with_commit_properties(CommitProperties::default().with_max_retries(0))
            .await;
        match created {
            Ok(table) => Ok(table),
            // Another sidecar committed version 0 first: use its table.
            Err(_) => self.builder()?.load().await.map_err(self.error("loading")),
        }
    }

    /// Whether spool segment `seq` of this sidecar is in the table already.
    pub async fn has_segment(&self, seq: u64) -> Result<bool, DeltaError> {
        let mut guard = self.table.lock().await;
        let table = self.table(&mut guard, true).await?;
        let committed = table
            .snapshot()
            .map_err(self.error("reading the snapshot"))?
            .transaction_version(table.log_store().as_ref(), &self.app_id)
            .await
            .map_err(self.error("reading the application transaction"))?;
        Ok(committed.is_some_and(|v| v >= seq_version(seq)))
    }

    /// The table, loaded (or created) on first use; with `refresh`, brought to the newest
    /// version when it was loaded before.
    async fn table<'a>(
        &self,
        guard: &'a mut Option<DeltaTable>,
        refresh: bool,
    ) -> Result<&'a mut DeltaTable, DeltaError> {
        match guard {
            Some(table) if refresh => table
                .update_state()
                .await
                .map_err(self.error("refreshing"))?,
            Some(_) => {}
            None => *guard = Some(self.load_or_create().await?),
        }
        guard
            .as_mut()
            .ok_or_else(|| self.error("loading")(DeltaTableError::generic("no table")))
    }

    /// Adds the (already written) files of segment `seq` to the table in one commit. The
    /// snapshot is the one [`has_segment`](Self::has_segment) just refreshed: a commit another
    /// sidecar made since is found and retried past by the commit itself, so the log is not
    /// read twice per segment.
    pub async fn commit(&self, seq: u64, files: &[PartFile]) -> Result<Committed, DeltaError> {
        let mut guard = self.table.lock().await;
        let table = self.table(&mut guard, false).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let adds = files
            .iter()
            .map(|file| {
                Action::Add(Add {
                    path: file.path.clone(),
                    size: i64::try_from(file.bytes.len()).unwrap_or(i64::MAX),
                    modification_time: now_ms,
                    data_change: true,
                    partition_values: [("date".to_string(), partition_date(&file.path))]
                        .into_iter()
                        .collect(),
                    stats: Some(serde_json::json!({ "numRecords": file.rows }).to_string()),
                    ..Default::default()
                })
            })
            .collect();
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, seq_version(seq)));
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec!["date".to_string()]),
            predicate: None,
        };
        let snapshot = table
            .snapshot()
            .map_err(self.error("reading the snapshot"))?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(adds)
            .with_max_retries(MAX_COMMIT_ATTEMPTS)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(self.error("committing"))?;
        Ok(Committed {
            version: i64::try_from(finalized.version()).unwrap_or(i64::MAX),
            conflicts: finalized.metrics.num_retries,
        })
    }
}

/// The `date` of a part file from its `date=YYYY-MM-DD/` folder.
fn partition_date(path: &str) -> Option<String> {
    let folder = path.split('/').next()?;
    folder.strip_prefix("date=").map(str::to_string)
}

fn seq_version(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}
