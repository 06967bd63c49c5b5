//! What the operator renders for every manifest in `examples/`, as reviewed snapshots
//! (`operator/tests/snapshots/`): the Deployments, Services and NetworkPolicies of the first
//! reconcile, the status it publishes (every entity resolved) and its events. A change to
//! rendering shows as a diff of these files in review.
//!
//! The pure pipeline runs as the controller runs it (resolve → plan) with the default operator
//! config; every ModelVersion is taken as checked and Ready, holding the aliases it claims.
//! Accept an intended change with `INSTA_UPDATE=always cargo test -p sluice-operator --test
//! rendered_examples` (or `cargo insta review`) and commit the snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_contract::config::OperatorConfig;
use sluice_contract::resolve::{resolve, resolve_capture, resolve_usage};
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_operator::endpoint::desired::BuildContext;
use sluice_operator::endpoint::plan::plan;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The ServingEndpoints and ModelVersions of one manifest; other kinds (a Secret) are skipped.
fn read(path: &Path) -> (Vec<ServingEndpoint>, Vec<ModelVersion>) {
    let text = std::fs::read_to_string(path).expect("example");
    let (mut endpoints, mut versions) = (Vec::new(), Vec::new());
    for document in serde_norway::Deserializer::from_str(&text) {
        let value = Value::deserialize(document).expect("YAML");
        match value.get("kind").and_then(Value::as_str) {
            Some("ServingEndpoint") => {
                let mut ep: ServingEndpoint = serde_json::from_value(value).expect("endpoint");
                ep.metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                ep.metadata.generation = Some(1);
                ep.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
                endpoints.push(ep);
            }
            Some("ModelVersion") => {
                let mut mv: ModelVersion = serde_json::from_value(value).expect("version");
                mv.status = Some(
                    serde_json::from_value(json!({
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Checked",
                                        "message": "checked",
                                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                        "effectiveAliases": mv.spec.aliases,
                    }))
                    .expect("status"),
                );
                versions.push(mv);
            }
            _ => {}
        }
    }
    (endpoints, versions)
}

/// The first reconcile of `ep`: its children and status, as one YAML-ready value.
fn render(ep: &ServingEndpoint, versions: &[ModelVersion], config: &OperatorConfig) -> Value {
    let capture = resolve_capture(ep, config);
    let usage = resolve_usage(ep, config);
    let ctx =
        BuildContext::of(ep, config, capture.as_ref(), usage.as_ref()).expect("a created endpoint");
    let resolved = resolve(ep, versions, &BTreeMap::new(), config);
    let planned = plan(ep, resolved, &ctx, &BTreeMap::new(), Timestamp::UNIX_EPOCH);
    let children: Vec<Value> = planned
        .apply
        .iter()
        .map(|w| {
            json!({
                "replicas": format!("{:?}", w.replicas),
                "deployment": w.objects.deployment,
                "service": w.objects.service,
                "networkPolicy": w.objects.network_policy,
            })
        })
        .collect();
    let events: Vec<Value> = planned
        .events
        .iter()
        .map(|e| {
            json!({
                "type": if e.reason.is_warning() { "Warning" } else { "Normal" },
                "reason": e.reason.as_str(),
                "message": e.message,
            })
        })
        .collect();
    json!({"status": planned.status, "children": children, "events": events})
}

#[test]
fn every_example_renders_as_its_snapshot() {
    let config = OperatorConfig::default();
    let files = examples();
    assert!(
        files.len() >= 10,
        "examples/ holds {} manifests",
        files.len()
    );
    for path in files {
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("name");
        let (endpoints, versions) = read(&path);
        assert!(!endpoints.is_empty(), "{stem}: no ServingEndpoint");
        for ep in &endpoints {
            let name = ep.metadata.name.clone().expect("name");
            let rendered = render(ep, &versions, &config);
            insta::assert_yaml_snapshot!(format!("{stem}__{name}"), rendered);
        }
    }
}
