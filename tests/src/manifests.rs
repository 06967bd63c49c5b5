//! Reading multi-document YAML manifests (the `examples/` and the invalid fixtures).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// Every YAML document in a file, as JSON values (empty documents skipped).
pub fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(doc)
            .map_err(|e| anyhow::anyhow!("{} document {i}: {e}", path.display()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The `# expect-field:` and `# expect-message:` header lines of an invalid fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// Field path the API server names.
    pub field: String,
    /// The rule's message, exactly as the user sees it.
    pub message: String,
}

/// Parses the expectation header of an invalid manifest.
pub fn read_expectation(path: &Path) -> anyhow::Result<Expectation> {
    let text = std::fs::read_to_string(path)?;
    let header = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .ok_or_else(|| anyhow::anyhow!("{} lacks a `{key}` line", path.display()))
    };
    Ok(Expectation {
        field: header("# expect-field:")?,
        message: header("# expect-message:")?,
    })
}

/// `*.yaml` files of a folder, sorted.
pub fn yaml_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}
