//! PersistentVolumeClaims for tests, as a user makes one and copies files onto it: a claim of
//! the test kubelet's default `local-path` class, bound by the real PV controller, and the host
//! folder of its volume.

use std::{path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

/// Creates (or keeps) claim `name` in `ns` and waits until it is Bound; returns its volume's
/// host folder, where a test puts the files a user would copy onto the volume.
pub async fn bound_claim(client: &Client, ns: &str, name: &str, access: &str) -> PathBuf {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": [access], "resources": {"requests": {"storage": "1Gi"}}}
    });
    claims
        .patch(name, &PatchParams::apply("test"), &Patch::Apply(&claim))
        .await
        .unwrap_or_else(|e| panic!("creating claim {ns}/{name}: {e}"));
    let volume = crate::wait::eventually(
        &format!("claim {ns}/{name} Bound"),
        Duration::from_secs(60),
        String::new,
        || async {
            let c = claims.get(name).await.ok()?;
            let bound = c.status.as_ref()?.phase.as_deref() == Some("Bound");
            bound.then_some(c.spec?.volume_name?)
        },
    )
    .await;
    folder_of(client, &volume).await
}

/// The host folder of hostPath volume `volume`.
pub async fn folder_of(client: &Client, volume: &str) -> PathBuf {
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(volume)
        .await
        .unwrap_or_else(|e| panic!("reading PersistentVolume {volume}: {e}"));
    pv.spec
        .and_then(|s| s.host_path)
        .map(|h| PathBuf::from(h.path))
        .unwrap_or_else(|| panic!("PersistentVolume {volume} is not a hostPath volume"))
}
