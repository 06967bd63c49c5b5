//! Reading capture tables back as a user would: the endpoint deleted and its pods drained (each
//! capture sidecar writes what it spooled on SIGTERM), then the table's files read by DuckDB
//! from the claim that holds the lake.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams},
};
use sluice_crds::ServingEndpoint;

/// Deletes endpoint `name` in `ns` and waits until its pods are gone.
pub async fn delete_and_drain(client: &Client, ns: &str, name: &str, logs: impl Fn() -> String) {
    Api::<ServingEndpoint>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::foreground())
        .await
        .unwrap_or_else(|e| panic!("deleting endpoint {name}: {e}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("serving.sluice.dev/endpoint={name}");
    crate::wait::eventually(
        &format!("the pods of endpoint {name} gone"),
        Duration::from_secs(120),
        logs,
        || {
            let (pods, selector) = (pods.clone(), selector.clone());
            async move {
                let left = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                left.items.is_empty().then_some(())
            }
        },
    )
    .await;
}

/// The host folder of the PersistentVolume bound to claim `claim` of `ns`.
pub async fn claim_folder(client: &Client, ns: &str, claim: &str) -> PathBuf {
    let volume = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(claim)
        .await
        .unwrap_or_else(|e| panic!("claim {claim}: {e}"))
        .spec
        .and_then(|s| s.volume_name)
        .unwrap_or_else(|| panic!("claim {claim} is not bound"));
    crate::pvc::folder_of(client, &volume).await
}

/// Runs `sql` with DuckDB (from the project's virtual environment) and returns the first row
/// as Python prints it, e.g. `(25, 25)`. Panics with DuckDB's error when the query fails.
pub fn duckdb_row(sql: &str) -> String {
    let script = "import duckdb, sys; print(duckdb.sql(sys.argv[1]).fetchall()[0])";
    let out = std::process::Command::new(crate::venv_tool("python"))
        .args(["-c", script, sql])
        .output()
        .unwrap_or_else(|e| panic!("running DuckDB: {e}"));
    assert!(
        out.status.success(),
        "DuckDB failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `read_parquet` over every Parquet file of a Hive-partitioned table in `folder`.
pub fn parquet_table(folder: &std::path::Path) -> String {
    format!(
        "read_parquet('{}/**/*.parquet', hive_partitioning = true)",
        folder.display()
    )
}
