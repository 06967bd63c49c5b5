//! Creating arbitrary manifests the way `kubectl create` does: a POST of the object with strict
//! field validation, so unknown fields are refused as users see them refused.

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::Value;

/// The API resource of a manifest's apiVersion and kind, for the kinds tests create.
pub fn api_resource(doc: &Value) -> anyhow::Result<ApiResource> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = match kind {
        "ServingEndpoint" => "servingendpoints",
        "ModelVersion" => "modelversions",
        "Secret" => "secrets",
        "ConfigMap" => "configmaps",
        "ServiceAccount" => "serviceaccounts",
        "Deployment" => "deployments",
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding" => "validatingadmissionpolicybindings",
        other => anyhow::bail!("tests do not know the plural of kind {other:?}"),
    };
    Ok(ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// POSTs one manifest into `namespace` with `fieldValidation=Strict`; on refusal returns the
/// API server's message.
pub async fn create_strict(
    client: &Client,
    namespace: &str,
    doc: &Value,
) -> anyhow::Result<Result<(), String>> {
    let ar = api_resource(doc)?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let request = http::Request::post(format!("{}?fieldValidation=Strict", api.resource_url()))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(doc)?)?;
    match client.request::<Value>(request).await {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(status)) => Ok(Err(status.message.clone())),
        Err(e) => Err(e.into()),
    }
}
