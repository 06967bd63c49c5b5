//! Model artifacts for end-to-end tests, put where a user would put them: on a
//! PersistentVolumeClaim of the pod's namespace, which the operator mounts into the fetch step
//! (`pvc://<claim>/<path>`). Nothing is read from a host path a pod did not mount.

use kube::Client;

use crate::repo_root;

/// The claim model artifacts go on, in each test namespace.
pub const CLAIM: &str = "models";

/// Copies the iris classifier model folder (examples/models/iris: ONNX + sluice-model.yaml)
/// onto the claim [`CLAIM`] of `ns` (made and bound first) as `iris/`, and returns its URI,
/// `pvc://models/iris` (what `examples/quickstart.yaml` names).
pub async fn iris_on_claim(client: &Client, ns: &str) -> String {
    let folder = crate::pvc::bound_claim(client, ns, CLAIM, "ReadWriteMany").await;
    let dir = folder.join("iris");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let source = repo_root().join("examples/models/iris");
    for file in ["iris.onnx", "sluice-model.yaml"] {
        std::fs::copy(source.join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("copying {file} to {}: {e}", dir.display()));
    }
    format!("pvc://{CLAIM}/iris")
}

/// [`iris_on_claim`], then ModelVersion `iris-1` (model `iris`, version 1, ONNX, `predict`)
/// naming it, applied as `test-user`.
pub async fn iris_version_1(client: &Client, ns: &str) {
    use kube::api::{Api, Patch, PatchParams};
    let uri = iris_on_claim(client, ns).await;
    Api::<sluice_crds::ModelVersion>::namespaced(client.clone(), ns)
        .patch(
            "iris-1",
            &PatchParams::apply("test-user"),
            &Patch::Apply(serde_json::json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
                "metadata": {"name": "iris-1"},
                "spec": {"model": "iris", "version": 1, "source": {"uri": uri}, "format": "onnx", "task": "predict"}})),
        )
        .await
        .expect("model version iris-1");
}
