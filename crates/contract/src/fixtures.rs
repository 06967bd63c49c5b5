//! Test fixtures shared by the pure steps' unit tests.

use sluice_crds::{ModelVersion, ServingEndpoint};

/// A ServingEndpoint `name` in namespace `ns` (generation 1) whose spec is the YAML `spec`,
/// indented by two spaces.
pub fn endpoint(name: &str, spec: &str) -> ServingEndpoint {
    serde_norway::from_str(&format!(
        "apiVersion: serving.sluice.dev/v1alpha1\nkind: ServingEndpoint\nmetadata: {{name: {name}, namespace: ns, generation: 1}}\nspec:\n{spec}"
    ))
    .expect("endpoint fixture")
}

/// ModelVersion `<model>-<v>` (ONNX at `s3://b/<model>/<v>`), checked by the operator: Ready as
/// given, holding `aliases`.
pub fn checked_version(model: &str, v: i64, aliases: &[&str], ready: bool) -> ModelVersion {
    let mut mv: ModelVersion = serde_norway::from_str(&format!(
        "apiVersion: serving.sluice.dev/v1alpha1\nkind: ModelVersion\nmetadata: {{name: {model}-{v}, namespace: ns}}\n\
         spec: {{model: {model}, version: {v}, source: {{uri: 's3://b/{model}/{v}'}}, format: onnx}}"
    ))
    .expect("version fixture");
    mv.status = Some(
        serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}, "reason": "Checked",
                            "message": "checked", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "effectiveAliases": aliases,
        }))
        .expect("status fixture"),
    );
    mv
}
