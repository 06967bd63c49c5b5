//! The API contract, offline: generated CRDs match the types, every example is valid and
//! deserialises into the Rust types, every invalid fixture is rejected with the exact message a
//! user sees. `control_plane_api.rs` proves the same fixtures against the real kube-apiserver.

use serde_json::{Value, json};
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_tests::{
    manifests::{read_documents, read_expectation, yaml_files},
    repo_root,
    schema::SchemaValidator,
};

fn validator() -> SchemaValidator {
    SchemaValidator::from_dir(&repo_root().join("crds/generated")).expect("generated CRDs load")
}

#[test]
fn committed_crds_match_the_types() {
    for (name, text) in sluice_crds::generate::crd_files().expect("CRDs render") {
        let path = repo_root().join("crds/generated").join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is out of date: run `cargo run -p sluice-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}

/// Deserialises a known object into its Rust type, so examples cannot drift from the types.
fn deserialise_typed(doc: &Value) -> Result<(), String> {
    let result = match doc["kind"].as_str() {
        Some("ServingEndpoint") => serde_json::from_value::<ServingEndpoint>(doc.clone()).map(drop),
        Some("ModelVersion") => serde_json::from_value::<ModelVersion>(doc.clone()).map(drop),
        _ => Ok(()),
    };
    result.map_err(|e| e.to_string())
}

#[test]
fn every_example_validates_and_deserialises() {
    let v = validator();
    let files = yaml_files(&repo_root().join("examples")).expect("examples folder");
    let capabilities = [
        "minimal-cpu",
        "ab-test",
        "canary-alias",
        "shadow-traffic",
        "gpu-llm-vllm",
        "scale-to-zero",
        "auto-capture",
        "rate-limits",
        "external-model",
    ];
    for cap in capabilities {
        assert!(
            files
                .iter()
                .any(|f| f.file_stem().is_some_and(|s| s == cap)),
            "examples/{cap}.yaml is missing"
        );
    }
    for file in files {
        let docs = read_documents(&file).expect("example parses");
        assert!(
            docs.iter().any(|d| d["kind"] == "ServingEndpoint"),
            "{} has no ServingEndpoint",
            file.display()
        );
        for doc in docs
            .iter()
            .filter(|d| v.knows(d["kind"].as_str().unwrap_or_default()))
        {
            if let Err(errors) = v.validate(doc, None) {
                panic!(
                    "{} ({}) is invalid: {errors:#?}",
                    file.display(),
                    doc["metadata"]["name"]
                );
            }
            deserialise_typed(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
}

#[test]
fn every_invalid_manifest_is_rejected_with_its_message() {
    let v = validator();
    let files = yaml_files(&repo_root().join("tests/invalid")).expect("invalid fixtures");
    assert!(
        files.len() >= 20,
        "expected the full set of invalid fixtures, found {}",
        files.len()
    );
    for file in files {
        let expect = read_expectation(&file).expect("fixture header");
        let offline = std::fs::read_to_string(&file)
            .expect("fixture")
            .lines()
            .find_map(|l| {
                l.strip_prefix("# expect-offline:")
                    .map(|s| s.trim().to_string())
            });
        let doc = read_documents(&file).expect("fixture parses").remove(0);
        let errors = v
            .validate(&doc, None)
            .expect_err(&format!("{} was accepted", file.display()));
        let matched = errors.iter().any(|e| {
            e.field == expect.field
                && match &offline {
                    // Schema (non-CEL) errors are worded differently offline than by the API
                    // server; the fixture names both wordings.
                    Some(fragment) => e.message.contains(fragment.as_str()),
                    None => e.message == expect.message,
                }
        });
        assert!(
            matched,
            "{}: expected `{}: {}`, got {errors:#?}",
            file.display(),
            expect.field,
            expect.message
        );
    }
}

#[test]
fn model_version_identity_is_immutable_but_aliases_move() {
    let v = validator();
    let old = json!({
        "apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": "m-1"},
        "spec": {"model": "m", "version": 1, "aliases": ["champion"], "source": {"uri": "s3://b/m/1"}, "format": "onnx"}
    });
    let mut moved_alias = old.clone();
    moved_alias["spec"]["aliases"] = json!(["challenger"]);
    v.validate(&moved_alias, Some(&old))
        .expect("aliases are mutable");

    let mut new_version = old.clone();
    new_version["spec"]["version"] = json!(2);
    let errors = v
        .validate(&new_version, Some(&old))
        .expect_err("version change must be refused");
    assert!(
        errors
            .iter()
            .any(|e| e.message == "version is immutable; create a new ModelVersion instead"),
        "{errors:#?}"
    );
}

#[test]
fn generated_crds_pass_kubernetes_validate_strict() {
    let tool = sluice_tests::venv_tool("kubernetes-validate");
    let files = yaml_files(&repo_root().join("crds/generated")).expect("generated CRDs");
    let out = std::process::Command::new(tool)
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "kubernetes-validate rejected the CRDs:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
