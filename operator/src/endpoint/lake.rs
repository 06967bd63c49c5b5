//! The claim of a `pvc://` inference table: rendered from the operator's `lakeVolume`
//! template (pure) and created in the endpoint's namespace when it does not exist yet. The
//! claim has no owner reference, so it outlives the endpoint, as the table it holds should.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::{Api, Client, api::PostParams};

use super::desired::MANAGED_BY;
use crate::{
    config::LakeVolume,
    error::{Error, kube_err},
    pvc::ClaimUri,
};

/// The claim `lake` asks for, from `template`, in `namespace`.
pub fn claim(lake: &ClaimUri, template: &LakeVolume, namespace: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(lake.claim.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGED_BY.to_string(),
                ),
                (
                    "app.kubernetes.io/name".to_string(),
                    "sluice-lake".to_string(),
                ),
            ])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(template.access_modes.clone()),
            storage_class_name: template.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(template.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the claim of a `pvc://` table unless it exists. Returns whether it was created.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    lake: &ClaimUri,
    template: &LakeVolume,
) -> Result<bool, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let action = format!("reading PersistentVolumeClaim {namespace}/{}", lake.claim);
    if claims
        .get_metadata_opt(&lake.claim)
        .await
        .map_err(kube_err(action))?
        .is_some()
    {
        return Ok(false);
    }
    let wanted = claim(lake, template, namespace);
    match claims.create(&PostParams::default(), &wanted).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(kube_err(format!(
            "creating PersistentVolumeClaim {namespace}/{} for the inference table",
            lake.claim
        ))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_follows_the_template_and_has_no_owner() {
        let lake = ClaimUri::of("pvc://sluice-lake/default/default/iris_payload").expect("pvc");
        assert_eq!(lake.claim, "sluice-lake");
        assert_eq!(lake.path, "default/default/iris_payload");
        assert_eq!(
            lake.file_uri(),
            "file:///mnt/lake/sluice-lake/default/default/iris_payload"
        );
        let c = claim(&lake, &LakeVolume::default(), "ml");
        assert_eq!(c.metadata.name.as_deref(), Some("sluice-lake"));
        assert!(c.metadata.owner_references.is_none());
        let spec = c.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(spec.storage_class_name, None);
        let size = spec.resources.and_then(|r| r.requests).expect("requests");
        assert_eq!(size["storage"], Quantity("20Gi".into()));
        assert!(ClaimUri::of("s3://bucket/t").is_none());
    }
}
