//! Model artifacts for end-to-end tests, placed on local disk where the pods' `fetch` step
//! reads them (`file://` URIs).

use std::path::Path;

use crate::repo_root;

/// Copies the iris classifier model folder (examples/models/iris: ONNX + sluice-model.yaml)
/// to `dir` and returns its `file://` URI.
pub fn iris_artifact(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let source = repo_root().join("examples/models/iris");
    for file in ["iris.onnx", "sluice-model.yaml"] {
        std::fs::copy(source.join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("copying {file} to {}: {e}", dir.display()));
    }
    format!("file://{}", dir.display())
}
