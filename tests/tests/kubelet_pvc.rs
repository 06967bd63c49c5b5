//! PersistentVolumes on the test cluster: the test kubelet's local provisioner makes a hostPath
//! volume for a claim of its `local-path` class, the real controller-manager's PV controller
//! hands the claim over and binds the two, and deleting the claim deletes the volume and its
//! folder.

use std::{os::unix::fs::PermissionsExt, time::Duration};

use k8s_openapi::{
    api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use sluice_tests::{
    cluster::{LocalNodes, fresh_namespace, shared, shared_nodes},
    kubelet::{PROVISIONER, STORAGE_CLASS},
    pvc,
    wait::on_cluster,
};

/// How long each step may take. On timeout the wait prints the control plane's logs (the PV
/// controller's among them) and each test's `logs_on_panic` guard the kubelet's.
const WAIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (&'static LocalNodes, Client, String) {
    let nodes = shared_nodes();
    let client = shared().client().await.expect("client");
    let ns = fresh_namespace(&client, prefix).await;
    (nodes, client, ns)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_is_provisioned_bound_by_the_pv_controller_and_reclaimed_on_delete() {
    let (nodes, client, ns) = setup("pvc").await;
    let _logs = nodes.kubelet.logs_on_panic();
    // No storageClassName: the DefaultStorageClass admission plugin gives it `local-path`.
    let folder = pvc::bound_claim(&client, &ns, "data", "ReadWriteOnce").await;

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim = claims.get("data").await.expect("claim");
    let spec = claim.spec.clone().expect("claim spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some(STORAGE_CLASS));
    let annotations = claim.annotations();
    // Both set by the real PV controller: it handed the claim to our provisioner, then bound it.
    assert_eq!(
        annotations
            .get("volume.kubernetes.io/storage-provisioner")
            .map(String::as_str),
        Some(PROVISIONER),
        "{annotations:?}"
    );
    assert_eq!(
        annotations
            .get("pv.kubernetes.io/bind-completed")
            .map(String::as_str),
        Some("yes"),
        "{annotations:?}"
    );
    let uid = claim.uid().expect("uid");
    let volume = format!("pvc-{uid}");
    assert_eq!(spec.volume_name.as_deref(), Some(volume.as_str()));
    let capacity = claim.status.and_then(|s| s.capacity).unwrap_or_default();
    assert_eq!(capacity.get("storage"), Some(&Quantity("1Gi".into())));

    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = volumes.get(&volume).await.expect("volume");
    assert_eq!(
        pv.annotations()
            .get("pv.kubernetes.io/provisioned-by")
            .map(String::as_str),
        Some(PROVISIONER)
    );
    assert_eq!(
        pv.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Bound")
    );
    let pv_spec = pv.spec.expect("volume spec");
    let claim_ref = pv_spec.claim_ref.expect("claimRef");
    assert_eq!(
        (claim_ref.namespace, claim_ref.name, claim_ref.uid),
        (
            Some(ns.clone()),
            Some("data".to_string()),
            Some(uid.clone())
        )
    );
    assert_eq!(
        (
            pv_spec.persistent_volume_reclaim_policy.as_deref(),
            pv_spec.storage_class_name.as_deref(),
            pv_spec.access_modes
        ),
        (
            Some("Delete"),
            Some(STORAGE_CLASS),
            Some(vec!["ReadWriteOnce".to_string()])
        )
    );

    let root = nodes.kubelet.state_dir().join("pv");
    assert_eq!(folder, root.join(format!("{ns}_data_{uid}")));
    let mode = std::fs::metadata(&folder)
        .expect("folder")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o777, "any container user may write");
    // As a user copies files onto a volume.
    std::fs::create_dir_all(folder.join("iris/1")).expect("mkdir");
    std::fs::write(folder.join("iris/1/model.onnx"), b"onnx").expect("write");

    claims
        .delete("data", &DeleteParams::default())
        .await
        .expect("delete claim");
    on_cluster("the released volume deleted", WAIT, || async {
        let gone = volumes.get_opt(&volume).await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    assert!(!folder.exists(), "{} is removed", folder.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_of_another_class_is_left_to_its_provisioner() {
    let (nodes, client, ns) = setup("pvc-other").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "fast"},
        "spec": {
            "storageClassName": "fast-ssd",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }))
    .expect("claim");
    let claim = claims
        .create(&PostParams::default(), &claim)
        .await
        .expect("create claim");
    // The PV controller looked at it (and found no such class)...
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    on_cluster(
        "the PV controller's ProvisioningFailed event",
        WAIT,
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.involved_object.name.as_deref() == Some("fast")
                        && e.reason.as_deref() == Some("ProvisioningFailed")
                })
                .then_some(())
        },
    )
    .await;
    // ... and the local provisioner, watching the same claim, made nothing for it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let volume = format!("pvc-{}", claim.uid().expect("uid"));
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get_opt(&volume)
        .await
        .expect("get volume");
    assert!(pv.is_none(), "{volume} was provisioned for a foreign class");
    let claim = claims.get("fast").await.expect("claim");
    assert_eq!(
        claim.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
}
