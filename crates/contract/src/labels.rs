//! Labels, names and ports of the objects the operator renders for an entity, which the gateway
//! and the operator's own watches select by.

/// `app.kubernetes.io/managed-by` value on every child.
pub const MANAGED_BY: &str = "sluice";
/// The `app.kubernetes.io/managed-by` label selector of every child.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=sluice";
/// Label naming the endpoint a child belongs to.
pub const LABEL_ENDPOINT: &str = "serving.sluice.dev/endpoint";
/// Label naming the served entity.
pub const LABEL_ENTITY: &str = "serving.sluice.dev/entity";
/// Label naming the entity revision (published as `servedEntities[].revision`).
pub const LABEL_REVISION: &str = "serving.sluice.dev/revision";
/// Pod annotation naming the registered model an entity pod serves.
pub const ANNOTATION_MODEL: &str = "serving.sluice.dev/model";
/// Pod annotation naming the model version an entity pod serves.
pub const ANNOTATION_MODEL_VERSION: &str = "serving.sluice.dev/model-version";
/// Annotation on a recorder's pod template: the provider of the external model it records.
pub const ANNOTATION_PROVIDER: &str = "serving.sluice.dev/provider";
/// Label of a ModelVersion the operator mirrors from an MLflow registry: the mirror's name.
pub const LABEL_REGISTRY: &str = "serving.sluice.dev/registry";
/// Annotation of a mirrored ModelVersion: the registered model's name as MLflow spells it.
pub const ANNOTATION_REGISTERED_NAME: &str = "serving.sluice.dev/registered-name";
/// Annotation of a mirrored ModelVersion whose version was deleted in the registry: when and
/// what was seen. The version is kept (endpoints may serve it) and reported.
pub const ANNOTATION_REGISTRY_DELETED: &str = "serving.sluice.dev/registry-deleted";

/// The labels an equality selector (`a=b,c==d`) requires, so objects made for an installation
/// carry them and its watches see them. Other terms (`!a`, `a in (…)`, `a!=b`) name no one
/// value and are left out.
pub fn selector_labels(selector: &str) -> std::collections::BTreeMap<String, String> {
    selector
        .split(',')
        .filter(|term| !term.contains("!="))
        .filter_map(|term| {
            let (key, value) = term.split_once("==").or_else(|| term.split_once('='))?;
            let key = key.trim();
            (!key.is_empty()).then(|| (key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Name of the container port that fronts an entity pod (the capture sidecar, or the model
/// container when capture is off); the gateway routes to it.
pub const FRONT_PORT_NAME: &str = "http";
/// Port of the model container (builtin runtime) inside every entity pod.
pub const MODEL_PORT: i32 = 8081;
/// Port of the capture sidecar, the pod's front door when capture is on.
pub const CAPTURE_PORT: i32 = 8080;

/// The number of `pod`'s container port named `name` (the first container that has one).
pub fn container_port(pod: &k8s_openapi::api::core::v1::Pod, name: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// The name of an entity revision's Deployment, Service and NetworkPolicy:
/// `<endpoint>-<entity>-<revision>`. Readers take the revision from status, never from this
/// name.
pub fn child_name(endpoint: &str, entity: &str, revision: &str) -> String {
    format!("{endpoint}-{entity}-{revision}")
}

/// The revision of a rendered pod template (its JSON): a short, stable hash, equal exactly
/// when the pods would be equal. FNV-1a, stable across Rust releases unlike the std hasher.
pub fn revision_of(rendered: &[u8]) -> String {
    let hash = rendered.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{:05x}", hash & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_equality_selector_names_the_labels_of_made_objects() {
        let labels =
            super::selector_labels("sluice.dev/installation=prod, tier==gold,!legacy,x!=y");
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert_eq!(labels["sluice.dev/installation"], "prod");
        assert_eq!(labels["tier"], "gold");
    }
}
