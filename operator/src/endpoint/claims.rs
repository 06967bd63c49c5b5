//! The PersistentVolumeClaims the operator creates for capture, rendered (pure) and created in
//! the endpoint's namespace when they do not exist yet: the claim of a `pvc://` inference table
//! (from the operator's `lakeVolume` template) and an endpoint's persistent capture spool
//! (`spec.autoCapture.spool`). Neither has an owner reference and the operator never deletes
//! them: the table outlives the endpoint, as should rows spooled for it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{Api, Client, ResourceExt, api::PostParams};
use sluice_contract::claim::ClaimUri;
use sluice_contract::config::LakeVolume;
use sluice_contract::labels::{LABEL_ENDPOINT, MANAGED_BY};
use sluice_crds::ResolvedSpool;

use super::desired::BuildContext;
use crate::error::{Error, kube_err};
/// Every capture sidecar of the endpoint, on any node, mounts the spool claim.
const SPOOL_ACCESS_MODE: &str = "ReadWriteMany";

/// A claim the endpoint's pods mount, to exist before they start.
#[derive(Clone, Debug, PartialEq)]
pub struct WantedClaim {
    /// The claim, as created when missing.
    pub claim: PersistentVolumeClaim,
    /// What it holds, for the log.
    pub holds: &'static str,
}

/// The claims the children rendered in `ctx` mount: one per claim a `pvc://` table names (the
/// inference and usage tables may share one) and the endpoint's persistent spool.
pub fn wanted(ctx: &BuildContext<'_>) -> Vec<WantedClaim> {
    let mut lakes: Vec<ClaimUri> = Vec::new();
    let tables = [
        ctx.capture.map(|c| c.table_uri.as_str()),
        ctx.usage.map(|u| u.table_uri.as_str()),
    ];
    for uri in tables.into_iter().flatten() {
        if let Some(table) = ClaimUri::of(uri)
            && !lakes.iter().any(|l| l.claim == table.claim)
        {
            lakes.push(table);
        }
    }
    let mut wanted: Vec<WantedClaim> = lakes
        .iter()
        .map(|table| WantedClaim {
            claim: lake(table, ctx.lake_volume, ctx.namespace),
            holds: "the inference table",
        })
        .collect();
    if let Some(persistent) = ctx.capture.and_then(|c| c.spool.as_ref()) {
        wanted.push(WantedClaim {
            claim: spool(ctx.endpoint, persistent, ctx.namespace),
            holds: "the capture spool",
        });
    }
    wanted
}

/// The claim of a `pvc://` table, `<claim>` of the URI, from `template`, in `namespace`.
pub fn lake(lake: &ClaimUri, template: &LakeVolume, namespace: &str) -> PersistentVolumeClaim {
    claim(
        &lake.claim,
        namespace,
        BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            "sluice-lake".to_string(),
        )]),
        &template.size,
        template.storage_class_name.as_deref(),
        template.access_modes.clone(),
    )
}

/// The persistent spool claim of `endpoint`, in `namespace`.
pub fn spool(endpoint: &str, spool: &ResolvedSpool, namespace: &str) -> PersistentVolumeClaim {
    claim(
        &spool.claim_name,
        namespace,
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_string(),
                "sluice-capture-spool".to_string(),
            ),
            (LABEL_ENDPOINT.to_string(), endpoint.to_string()),
        ]),
        &spool.size,
        spool.storage_class_name.as_deref(),
        vec![SPOOL_ACCESS_MODE.to_string()],
    )
}

fn claim(
    name: &str,
    namespace: &str,
    mut labels: BTreeMap<String, String>,
    size: &str,
    storage_class_name: Option<&str>,
    access_modes: Vec<String>,
) -> PersistentVolumeClaim {
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGED_BY.to_string(),
    );
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes),
            storage_class_name: storage_class_name.map(str::to_string),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates `wanted` (the claim of `purpose`) unless a claim of its name exists in its
/// namespace; an existing claim is left as it is. Returns whether it was created.
pub async fn ensure(
    client: &Client,
    wanted: &PersistentVolumeClaim,
    purpose: &str,
) -> Result<bool, Error> {
    let namespace = wanted.namespace().unwrap_or_default();
    let name = wanted.name_any();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let action = format!("reading PersistentVolumeClaim {namespace}/{name}");
    if claims
        .get_metadata_opt(&name)
        .await
        .map_err(kube_err(action))?
        .is_some()
    {
        return Ok(false);
    }
    match claims.create(&PostParams::default(), wanted).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(kube_err(format!(
            "creating PersistentVolumeClaim {namespace}/{name} for {purpose}"
        ))(e)),
    }
}

#[cfg(test)]
mod tests {
    use sluice_contract::resolve::{DEFAULT_SPOOL_SIZE, resolve_spool};
    use sluice_crds::CaptureSpool;

    use super::*;

    #[test]
    fn the_lake_claim_follows_the_template_and_has_no_owner() {
        let uri = ClaimUri::of("pvc://sluice-lake/default/default/iris_payload").expect("pvc");
        assert_eq!(uri.claim, "sluice-lake");
        assert_eq!(uri.path, "default/default/iris_payload");
        assert_eq!(
            uri.file_uri(),
            "file:///mnt/lake/sluice-lake/default/default/iris_payload"
        );
        let c = lake(&uri, &LakeVolume::default(), "ml");
        assert_eq!(c.metadata.name.as_deref(), Some("sluice-lake"));
        assert!(c.metadata.owner_references.is_none());
        let spec = c.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(spec.storage_class_name, None);
        let size = spec.resources.and_then(|r| r.requests).expect("requests");
        assert_eq!(size["storage"], Quantity("20Gi".into()));
        assert!(ClaimUri::of("s3://bucket/t").is_none());
    }

    #[test]
    fn a_persistent_spool_is_one_shared_claim_of_the_endpoint_with_no_owner() {
        assert_eq!(resolve_spool("fraud", None), None);
        let off = CaptureSpool {
            persistent: false,
            size: Some("5Gi".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve_spool("fraud", Some(&off)),
            None,
            "only when persistent"
        );
        let on = CaptureSpool {
            persistent: true,
            ..Default::default()
        };
        let resolved = resolve_spool("fraud", Some(&on)).expect("persistent");
        assert_eq!(
            resolved,
            ResolvedSpool {
                claim_name: "fraud-capture-spool".into(),
                size: DEFAULT_SPOOL_SIZE.into(),
                storage_class_name: None,
            }
        );
        let c = spool("fraud", &resolved, "ml");
        assert_eq!(c.metadata.name.as_deref(), Some("fraud-capture-spool"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("ml"));
        assert!(
            c.metadata.owner_references.is_none(),
            "never deleted with the endpoint"
        );
        let labels = c.metadata.labels.expect("labels");
        assert_eq!(labels[LABEL_ENDPOINT], "fraud");
        assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGED_BY);
        let spec = c.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        let size = spec.resources.and_then(|r| r.requests).expect("requests");
        assert_eq!(size["storage"], Quantity("1Gi".into()));
    }
}
