//! A local volume provisioner, as `local-path-provisioner` runs on small clusters: the
//! StorageClass [`STORAGE_CLASS`] (the cluster's default), and for every Pending claim of that
//! class a PersistentVolume `pvc-<claim uid>` whose `hostPath` is a fresh folder under
//! `<state_dir>/pv/`, pre-bound to the claim through `claimRef`; the real controller-manager's
//! PV controller binds the two. A Released volume of ours (its claim deleted) is deleted with
//! its folder, as the `Delete` reclaim policy says.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{
            HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
            PersistentVolumeSpec,
        },
        storage::v1::StorageClass,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use tracing::warn;

use super::{KubeletError, Shared, io_err, kube_err};

/// The StorageClass of local volumes.
pub const STORAGE_CLASS: &str = "local-path";
/// Its provisioner name (`pv.kubernetes.io/provisioned-by` on every volume it makes).
pub const PROVISIONER: &str = "sluice.dev/local-path";

/// The StorageClass: default class, `Immediate` binding, `Delete` reclaim.
fn storage_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(STORAGE_CLASS.into()),
            annotations: Some(BTreeMap::from([(
                "storageclass.kubernetes.io/is-default-class".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        ..Default::default()
    }
}

/// Whether this provisioner should make a volume for `claim` now.
fn wants_volume(claim: &PersistentVolumeClaim) -> bool {
    let spec = claim.spec.as_ref();
    let class = spec.and_then(|s| s.storage_class_name.as_deref());
    let unbound = spec
        .and_then(|s| s.volume_name.as_deref())
        .is_none_or(str::is_empty);
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    class == Some(STORAGE_CLASS)
        && unbound
        && pending
        && claim.metadata.deletion_timestamp.is_none()
}

/// The volume for `claim`, its folder at `folder`.
fn volume_for(claim: &PersistentVolumeClaim, folder: &Path) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".into()));
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(format!("pvc-{}", claim.uid().unwrap_or_default())),
            annotations: Some(BTreeMap::from([(
                "pv.kubernetes.io/provisioned-by".to_string(),
                PROVISIONER.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), size)])),
            access_modes: spec.access_modes,
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: Some(STORAGE_CLASS.into()),
            volume_mode: spec.volume_mode,
            host_path: Some(HostPathVolumeSource {
                path: folder.to_string_lossy().into_owned(),
                type_: Some("Directory".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.namespace(),
                name: Some(claim.name_any()),
                uid: claim.uid(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs the provisioner until aborted: the StorageClass first, then a look every 300 ms.
pub async fn run(shared: Arc<Shared>) {
    let classes: Api<StorageClass> = Api::all(shared.client.clone());
    match classes
        .create(&PostParams::default(), &storage_class())
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => warn!(error = %e, "creating the local-path StorageClass"),
    }
    loop {
        if let Err(e) = step(&shared).await {
            warn!(error = %e, "local volume provisioner");
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn step(shared: &Shared) -> Result<(), KubeletError> {
    let root = shared.config.state_dir.join("pv");
    let claims: Api<PersistentVolumeClaim> = Api::all(shared.client.clone());
    let volumes: Api<PersistentVolume> = Api::all(shared.client.clone());
    let pending = claims
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing PersistentVolumeClaims"))?;
    for claim in pending.items.iter().filter(|c| wants_volume(c)) {
        let folder = root.join(format!(
            "{}_{}_{}",
            claim.namespace().unwrap_or_default(),
            claim.name_any(),
            claim.uid().unwrap_or_default()
        ));
        std::fs::create_dir_all(&folder)
            .map_err(io_err(format!("creating {}", folder.display())))?;
        // Any user of any pod may write, as local-path-provisioner's folders allow.
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777))
            .map_err(io_err(format!("chmod {}", folder.display())))?;
        match volumes
            .create(&PostParams::default(), &volume_for(claim, &folder))
            .await
        {
            Ok(pv) => shared.note(&format!(
                "provisioned {} for claim {}/{} at {}",
                pv.name_any(),
                claim.namespace().unwrap_or_default(),
                claim.name_any(),
                folder.display()
            )),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(kube_err("creating a PersistentVolume")(e)),
        }
    }
    let ours = volumes
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing PersistentVolumes"))?;
    for pv in ours.items {
        let provisioned_by = pv
            .annotations()
            .get("pv.kubernetes.io/provisioned-by")
            .map(String::as_str);
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let folder = pv
            .spec
            .as_ref()
            .and_then(|s| s.host_path.as_ref())
            .map(|h| std::path::PathBuf::from(&h.path));
        let Some(folder) = folder.filter(|f| f.starts_with(&root)) else {
            continue;
        };
        if provisioned_by != Some(PROVISIONER) || !released {
            continue;
        }
        if folder.exists() {
            std::fs::remove_dir_all(&folder)
                .map_err(io_err(format!("removing {}", folder.display())))?;
        }
        match volumes
            .delete(&pv.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(kube_err("deleting a released PersistentVolume")(e)),
        }
        shared.note(&format!("deleted released volume {}", pv.name_any()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PersistentVolumeClaimStatus};

    use super::*;

    fn claim(class: Option<&str>, phase: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("models".into()),
                namespace: Some("ml".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: class.map(String::from),
                access_modes: Some(vec!["ReadWriteMany".into()]),
                ..Default::default()
            }),
            status: phase.map(|p| PersistentVolumeClaimStatus {
                phase: Some(p.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pending_claims_of_the_class_get_a_pre_bound_host_path_volume() {
        assert!(wants_volume(&claim(Some(STORAGE_CLASS), Some("Pending"))));
        assert!(wants_volume(&claim(Some(STORAGE_CLASS), None)));
        assert!(!wants_volume(&claim(Some(STORAGE_CLASS), Some("Bound"))));
        assert!(!wants_volume(&claim(Some("gp3"), Some("Pending"))));
        let pv = volume_for(
            &claim(Some(STORAGE_CLASS), None),
            Path::new("/state/pv/ml_models_u-1"),
        );
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u-1"));
        let spec = pv.spec.expect("spec");
        let claim_ref = spec.claim_ref.expect("claimRef");
        assert_eq!(
            (
                claim_ref.namespace.as_deref(),
                claim_ref.name.as_deref(),
                claim_ref.uid.as_deref()
            ),
            (Some("ml"), Some("models"), Some("u-1"))
        );
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(
            spec.capacity.expect("capacity")["storage"],
            Quantity("1Gi".into())
        );
        assert_eq!(
            spec.host_path.map(|h| h.path),
            Some("/state/pv/ml_models_u-1".to_string())
        );
    }
}
