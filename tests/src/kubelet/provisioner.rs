//! A local volume provisioner, as `local-path-provisioner` runs on small clusters: the
//! StorageClass [`STORAGE_CLASS`] (the cluster's default), and for every Pending claim of that
//! class a PersistentVolume `pvc-<claim uid>` whose `hostPath` is a fresh folder under
//! `<state_dir>/pv/`, pre-bound to the claim through `claimRef`; the real controller-manager's
//! PV controller binds the two. A Released volume of ours (its claim deleted) is deleted with
//! its folder, as the `Delete` reclaim policy says.
//!
//! It follows the external-provisioner protocol: the PV controller first names the provisioner
//! of a claim's class in the claim's `volume.kubernetes.io/storage-provisioner` annotation, and
//! only such claims get a volume; for volumes whose `pv.kubernetes.io/provisioned-by` is not an
//! in-tree plugin, the PV controller leaves deletion to the provisioner.

use std::{
    collections::{BTreeMap, HashSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
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
    api::{DeleteParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tracing::warn;

use super::{KubeletError, Shared, io_err, kube_err};

/// The StorageClass of local volumes.
pub const STORAGE_CLASS: &str = "local-path";
/// Its provisioner name (`pv.kubernetes.io/provisioned-by` on every volume it makes).
pub const PROVISIONER: &str = "sluice.dev/local-path";
/// Set on a claim by the PV controller: the provisioner that is to make its volume.
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// Set on a volume by its provisioner.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// How often the provisioner looks again without a watch event (a failed step is retried).
const RESYNC: Duration = Duration::from_secs(5);

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

/// Whether this provisioner should make a volume for `claim` now: a Pending, unbound claim of
/// the class that the PV controller handed to [`PROVISIONER`].
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
    let handed_to_us = claim
        .annotations()
        .get(STORAGE_PROVISIONER)
        .map(String::as_str)
        == Some(PROVISIONER);
    class == Some(STORAGE_CLASS)
        && handed_to_us
        && unbound
        && pending
        && claim.metadata.deletion_timestamp.is_none()
}

/// The name of the volume made for `claim`.
fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.uid().unwrap_or_default())
}

/// The folder of `claim`'s volume under `root`.
fn folder_for(root: &Path, claim: &PersistentVolumeClaim) -> PathBuf {
    root.join(format!(
        "{}_{}_{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any(),
        claim.uid().unwrap_or_default()
    ))
}

/// The folder of `pv` if this provisioner made it (annotation, and a hostPath under `root`)
/// and its claim is gone (`Released`), so both are to be deleted.
fn released_folder(pv: &PersistentVolume, root: &Path) -> Option<PathBuf> {
    let ours = pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let folder = pv
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| PathBuf::from(&h.path))
        .filter(|f| f.starts_with(root))?;
    (ours && released && pv.metadata.deletion_timestamp.is_none()).then_some(folder)
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
            name: Some(volume_name(claim)),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
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

/// Creates the StorageClass unless it exists, retrying until the API server takes it.
async fn ensure_class(shared: &Shared) {
    let classes: Api<StorageClass> = Api::all(shared.client.clone());
    loop {
        match classes
            .create(&PostParams::default(), &storage_class())
            .await
        {
            Ok(_) => return shared.note(&format!("created StorageClass {STORAGE_CLASS}")),
            Err(kube::Error::Api(e)) if e.code == 409 => return,
            Err(e) => warn!(error = %e, "creating the {STORAGE_CLASS} StorageClass; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the provisioner until aborted: the StorageClass first, then a look at every claim and
/// volume on each change of one (and every [`RESYNC`], which retries what failed).
pub async fn run(shared: Arc<Shared>) {
    ensure_class(&shared).await;
    let (claims, claim_writer) = reflector::store::<PersistentVolumeClaim>();
    let (volumes, volume_writer) = reflector::store::<PersistentVolume>();
    let config = watcher::Config::default;
    let claim_events = watcher(Api::all(shared.client.clone()), config())
        .default_backoff()
        .reflect(claim_writer)
        .map(|e| e.map(drop))
        .boxed();
    let volume_events = watcher(Api::all(shared.client.clone()), config())
        .default_backoff()
        .reflect(volume_writer)
        .map(|e| e.map(drop))
        .boxed();
    let mut changes = futures::stream::select(claim_events, volume_events);
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    warn!(error = %e, "local volume provisioner: watch failed; retrying");
                    continue;
                }
                None => return,
            },
            _ = resync.tick() => {}
        }
        step(&shared, &claims.state(), &volumes.state()).await;
    }
}

/// Makes the volumes that Pending claims lack and reclaims the Released ones; a failure is
/// logged and retried at the next look.
async fn step(
    shared: &Shared,
    claims: &[Arc<PersistentVolumeClaim>],
    volumes: &[Arc<PersistentVolume>],
) {
    let root = shared.config.state_dir.join("pv");
    let api: Api<PersistentVolume> = Api::all(shared.client.clone());
    let existing: HashSet<String> = volumes.iter().map(|v| v.name_any()).collect();
    for claim in claims.iter().filter(|c| wants_volume(c)) {
        if existing.contains(&volume_name(claim)) {
            continue; // made; the PV controller binds it
        }
        if let Err(e) = provision(shared, &api, claim, &folder_for(&root, claim)).await {
            shared.note(&format!("local volume provisioner: {e}"));
        }
    }
    for pv in volumes {
        if let Some(folder) = released_folder(pv, &root)
            && let Err(e) = reclaim(shared, &api, pv, &folder).await
        {
            shared.note(&format!("local volume provisioner: {e}"));
        }
    }
}

/// Makes `claim`'s folder (writable by any user, as local-path-provisioner's are) and its
/// volume, pre-bound to it.
async fn provision(
    shared: &Shared,
    api: &Api<PersistentVolume>,
    claim: &PersistentVolumeClaim,
    folder: &Path,
) -> Result<(), KubeletError> {
    std::fs::create_dir_all(folder).map_err(io_err(format!("creating {}", folder.display())))?;
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o777))
        .map_err(io_err(format!("chmod {}", folder.display())))?;
    let key = format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    );
    match api
        .create(&PostParams::default(), &volume_for(claim, folder))
        .await
    {
        Ok(pv) => shared.note(&format!(
            "provisioned {} for claim {key} at {}",
            pv.name_any(),
            folder.display()
        )),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            return Err(kube_err(format!(
                "creating the PersistentVolume of claim {key}"
            ))(e));
        }
    }
    Ok(())
}

/// Deletes a Released volume of ours: its folder, then the object.
async fn reclaim(
    shared: &Shared,
    api: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    folder: &Path,
) -> Result<(), KubeletError> {
    let name = pv.name_any();
    if folder.exists() {
        std::fs::remove_dir_all(folder)
            .map_err(io_err(format!("removing {}", folder.display())))?;
    }
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => shared.note(&format!(
            "deleted released volume {name} and {}",
            folder.display()
        )),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            return Err(kube_err(format!(
                "deleting released PersistentVolume {name}"
            ))(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeStatus,
        VolumeResourceRequirements,
    };

    use super::*;

    /// A claim of `class` that the PV controller handed to `provisioner`.
    fn claim(
        class: Option<&str>,
        provisioner: Option<&str>,
        phase: Option<&str>,
    ) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("models".into()),
                namespace: Some("ml".into()),
                uid: Some("u-1".into()),
                annotations: provisioner
                    .map(|p| BTreeMap::from([(STORAGE_PROVISIONER.to_string(), p.to_string())])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: class.map(String::from),
                access_modes: Some(vec!["ReadWriteMany".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity("2Gi".into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: phase.map(|p| PersistentVolumeClaimStatus {
                phase: Some(p.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_pending_claims_handed_to_this_provisioner_get_a_volume() {
        let ours = (Some(STORAGE_CLASS), Some(PROVISIONER));
        assert!(wants_volume(&claim(ours.0, ours.1, Some("Pending"))));
        assert!(wants_volume(&claim(ours.0, ours.1, None)));
        assert!(!wants_volume(&claim(ours.0, ours.1, Some("Bound"))));
        assert!(
            !wants_volume(&claim(ours.0, None, Some("Pending"))),
            "the PV controller has not handed it over yet"
        );
        assert!(!wants_volume(&claim(
            Some("gp3"),
            Some("ebs.csi.aws.com"),
            Some("Pending")
        )));
    }

    #[test]
    fn the_volume_is_a_pre_bound_host_path_of_the_claims_size_and_modes() {
        let c = claim(Some(STORAGE_CLASS), Some(PROVISIONER), None);
        let folder = folder_for(Path::new("/state/pv"), &c);
        assert_eq!(folder, Path::new("/state/pv/ml_models_u-1"));
        let pv = volume_for(&c, &folder);
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u-1"));
        assert_eq!(pv.annotations()[PROVISIONED_BY], PROVISIONER);
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
            Quantity("2Gi".into())
        );
        assert_eq!(
            (
                spec.persistent_volume_reclaim_policy.as_deref(),
                spec.storage_class_name.as_deref()
            ),
            (Some("Delete"), Some(STORAGE_CLASS))
        );
        assert_eq!(
            spec.host_path.map(|h| h.path),
            Some("/state/pv/ml_models_u-1".to_string())
        );
    }

    #[test]
    fn only_released_volumes_of_ours_are_reclaimed() {
        let c = claim(Some(STORAGE_CLASS), Some(PROVISIONER), None);
        let root = Path::new("/state/pv");
        let with_phase = |phase: &str| PersistentVolume {
            status: Some(PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..volume_for(&c, &folder_for(root, &c))
        };
        assert_eq!(
            released_folder(&with_phase("Released"), root),
            Some(folder_for(root, &c))
        );
        assert_eq!(released_folder(&with_phase("Bound"), root), None);
        let mut theirs = with_phase("Released");
        theirs.metadata.annotations = None;
        assert_eq!(released_folder(&theirs, root), None, "not provisioned here");
        let elsewhere = volume_for(&c, Path::new("/data/models"));
        let elsewhere = PersistentVolume {
            status: with_phase("Released").status,
            ..elsewhere
        };
        assert_eq!(released_folder(&elsewhere, root), None, "outside the root");
    }
}
