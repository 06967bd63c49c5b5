//! The Argo CD health checks of ServingEndpoint and ModelVersion
//! (`charts/sluice/argocd/serving.sluice.dev/<Kind>/health.lua`), run by a real Lua 5.1
//! interpreter (the language level of Argo CD's gopher-lua, with the same `obj` global and
//! without `os`/`io`), against:
//! - the samples of their Argo CD test files (`health_test.yaml`), each checked against the CRD
//!   schema and the Rust types first, so the samples cannot drift from the real status shape;
//! - statuses made by the operator's own pure reconcile steps (`evaluate`, `resolve`, `plan`)
//!   through a rollout, a failed update and an unresolvable spec.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_contract::{config::OperatorConfig, resolve::resolve};
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_operator::{
    endpoint::{
        desired::BuildContext,
        plan::{ChildState, plan},
    },
    model_version::{evaluate, source_check::Verdict},
};
use sluice_tests::{manifests::read_documents, repo_root, schema::SchemaValidator};

fn checks_dir() -> PathBuf {
    repo_root().join("charts/sluice/argocd/serving.sluice.dev")
}

/// `lua5.1` (Argo CD's Lua level), or `SLUICE_LUA`.
fn lua() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_LUA") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("lua5.1"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| panic!("lua5.1 not found: run `bash .ci/setup` (apt package lua5.1)"))
}

/// A JSON value as a Lua table constructor.
fn lua_literal(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => lua_string(s, out),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (k, item) in map {
                out.push('[');
                lua_string(k, out);
                out.push_str("]=");
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
    }
}

fn lua_string(s: &str, out: &mut String) {
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
}

/// Runs a health script on `obj` the way Argo CD does: `obj` is a global, the script returns
/// `{status, message}`; no `os`, `io` or file loading inside the script.
fn health(kind: &str, obj: &Value) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("sluice-argocd-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = checks_dir().join(kind).join("health.lua");
    let mut object = String::from("return ");
    lua_literal(obj, &mut object);
    let object_file = dir.join(format!(
        "{kind}-{}.lua",
        sluice_tests::cluster::random_suffix()
    ));
    std::fs::write(&object_file, object).expect("write object");
    let driver = format!(
        r#"
local write = io.write
local check = assert(loadfile({script}))
obj = assert(loadfile({object}))()
os, io, require, dofile, loadfile, load, loadstring, module, package, debug =
  nil, nil, nil, nil, nil, nil, nil, nil, nil, nil
local hs = check()
assert(type(hs) == "table", "the script returned no table")
write(tostring(hs.status), "\n", tostring(hs.message))
"#,
        script = lua_quoted(&script),
        object = lua_quoted(&object_file),
    );
    let out = Command::new(lua())
        .arg("-e")
        .arg(driver)
        .output()
        .unwrap_or_else(|e| panic!("running lua: {e}"));
    let _ = std::fs::remove_file(&object_file);
    assert!(
        out.status.success(),
        "{kind}/health.lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

fn lua_quoted(path: &Path) -> String {
    let mut s = String::new();
    lua_string(&path.display().to_string(), &mut s);
    s
}

fn validator() -> SchemaValidator {
    SchemaValidator::from_dir(&repo_root().join("crds/generated")).expect("CRD schemas")
}

#[derive(Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: Expected,
    input_path: String,
}

#[derive(Deserialize)]
struct Expected {
    status: String,
    message: String,
}

#[test]
fn health_checks_pass_their_argocd_test_files_on_schema_valid_samples() {
    let validator = validator();
    let mut seen = BTreeMap::<String, usize>::new();
    for kind in ["ServingEndpoint", "ModelVersion"] {
        let dir = checks_dir().join(kind);
        let text = std::fs::read_to_string(dir.join("health_test.yaml")).expect("health_test.yaml");
        let cases: HealthTests = serde_norway::from_str(&text).expect("health_test.yaml format");
        for case in cases.tests {
            let path = dir.join(&case.input_path);
            let obj = read_documents(&path).expect("sample").remove(0);
            validator
                .validate(&obj, None)
                .unwrap_or_else(|e| panic!("{} is not a valid {kind}: {e:?}", path.display()));
            match kind {
                "ServingEndpoint" => {
                    drop(serde_json::from_value::<ServingEndpoint>(obj.clone()).expect("typed"))
                }
                _ => drop(serde_json::from_value::<ModelVersion>(obj.clone()).expect("typed")),
            }
            let (status, message) = health(kind, &obj);
            assert_eq!(
                (status.as_str(), message.as_str()),
                (
                    case.health_status.status.as_str(),
                    case.health_status.message.as_str()
                ),
                "{kind} {}",
                case.input_path
            );
            *seen.entry(format!("{kind} {status}")).or_default() += 1;
        }
    }
    for kind in ["ServingEndpoint", "ModelVersion"] {
        for status in ["Healthy", "Progressing", "Degraded"] {
            assert!(
                seen.contains_key(&format!("{kind} {status}")),
                "no {status} sample for {kind}"
            );
        }
    }
}

// ---- statuses made by the operator's own code ----

fn now() -> Timestamp {
    Timestamp::from_second(1_762_077_600).expect("timestamp")
}

/// The quickstart example's objects, as the API server would hold them.
fn quickstart() -> (ModelVersion, ServingEndpoint) {
    let docs = read_documents(&repo_root().join("examples/minimal-cpu.yaml")).expect("example");
    let mut mv: ModelVersion = serde_json::from_value(docs[0].clone()).expect("ModelVersion");
    let mut ep: ServingEndpoint = serde_json::from_value(docs[1].clone()).expect("ServingEndpoint");
    for meta in [&mut mv.metadata, &mut ep.metadata] {
        meta.namespace = Some("ml-prod".into());
        meta.generation = Some(1);
        meta.uid = Some(format!("uid-{}", meta.name.clone().unwrap_or_default()));
    }
    (mv, ep)
}

/// `mv` after its source check: `source`, or by default one that found the artifact.
fn checked(
    mut mv: ModelVersion,
    siblings: &[ModelVersion],
    source: Option<Verdict>,
) -> ModelVersion {
    let source = source.unwrap_or_else(|| {
        Verdict::Reachable(format!("{}: readable, 1 object", mv.spec.source.uri))
    });
    mv.status = Some(evaluate(&mv, siblings, &source, now()));
    mv
}

fn another_version(mv: &ModelVersion, version: i64) -> ModelVersion {
    let mut next = mv.clone();
    next.metadata.name = Some(format!("{}-{version}", mv.spec.model));
    next.metadata.uid = Some(format!("uid-{version}"));
    next.spec.version = version;
    next.spec.source.uri = format!("s3://models/{}/{version}", mv.spec.model);
    next
}

/// One reconcile of `ep` as the controller runs it: resolve, then plan; the status it would
/// write.
fn reconcile(
    ep: &ServingEndpoint,
    models: &[ModelVersion],
    children: &BTreeMap<String, ChildState>,
) -> (ServingEndpoint, Vec<String>) {
    let previous: BTreeMap<String, i64> = ep
        .status
        .iter()
        .flat_map(|s| s.config.iter())
        .flat_map(|c| c.served_entities.iter())
        .filter_map(|e| Some((e.name.clone(), e.version?)))
        .collect();
    let config = OperatorConfig::default();
    let resolved = resolve(ep, models, &previous, &config);
    let ctx = BuildContext::of(ep, &config, None, None).expect("a created endpoint");
    let planned = plan(ep, resolved, &ctx, children, now());
    let mut next = ep.clone();
    next.status = Some(planned.status);
    (next, planned.apply.into_iter().map(|w| w.child).collect())
}

fn judged(kind: &str, obj: &impl serde::Serialize) -> (String, String) {
    let value = serde_json::to_value(obj).expect("serialize");
    let mut full = value.clone();
    full["apiVersion"] = json!("serving.sluice.dev/v1alpha1");
    full["kind"] = json!(kind);
    validator()
        .validate(&full, None)
        .unwrap_or_else(|e| panic!("the operator's status is not a valid {kind}: {e:?}\n{full:#}"));
    health(kind, &full)
}

fn children(
    names: &[String],
    desired: i32,
    ready: i32,
    failed: Option<&str>,
) -> BTreeMap<String, ChildState> {
    names
        .iter()
        .map(|n| {
            (
                n.clone(),
                ChildState {
                    desired,
                    ready,
                    failed: failed.map(str::to_string),
                    ..ChildState::default()
                },
            )
        })
        .collect()
}

#[test]
fn model_version_health_follows_the_operators_evaluation() {
    let (mv, _) = quickstart();
    let (status, message) = judged("ModelVersion", &mv);
    assert_eq!(status, "Progressing", "{message}");

    let ready = checked(mv.clone(), &[], None);
    let (status, message) = judged("ModelVersion", &ready);
    assert_eq!(status, "Healthy", "{message}");
    assert!(
        message.contains("s3://models/iris-classifier/1"),
        "{message}"
    );

    // A spec change the operator has not seen yet.
    let mut stale = ready.clone();
    stale.metadata.generation = Some(2);
    assert_eq!(judged("ModelVersion", &stale).0, "Progressing");

    let mut with_secret = mv.clone();
    with_secret.spec.source.secret_ref =
        serde_json::from_value(json!({"name": "s3-credentials"})).ok();
    let missing = checked(
        with_secret,
        &[],
        Some(Verdict::SecretMissing(
            "secret \"s3-credentials\" not found".into(),
        )),
    );
    let (status, message) = judged("ModelVersion", &missing);
    assert_eq!(status, "Degraded");
    assert!(
        message.starts_with("SecretNotFound: ") && message.contains("s3-credentials"),
        "{message}"
    );

    // Two versions claim `champion`: the later one is reported, never guessed.
    let mut first = mv.clone();
    first.spec.aliases = vec!["champion".into()];
    first.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let mut second = another_version(&first, 2);
    second.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            now()
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(60))
                .expect("time"),
        ));
    let siblings = [first.clone(), second.clone()];
    let verdicts: Vec<(String, String)> = siblings
        .iter()
        .map(|v| judged("ModelVersion", &checked(v.clone(), &siblings, None)))
        .collect();
    assert!(
        verdicts.iter().any(|(s, m)| s == "Degraded"
            && m.starts_with("Alias conflict: ")
            && m.contains("champion")),
        "{verdicts:?}"
    );
}

#[test]
fn serving_endpoint_health_follows_a_rollout_made_by_the_operators_plan() {
    let (mv, ep) = quickstart();
    let v1 = checked(mv.clone(), &[], None);
    let models = vec![v1.clone()];

    // Applied, no status yet.
    assert_eq!(judged("ServingEndpoint", &ep).0, "Progressing");

    // First reconcile: config 1 pending, its pods are coming.
    let (ep, wanted) = reconcile(&ep, &models, &BTreeMap::new());
    let (status, message) = judged("ServingEndpoint", &ep);
    assert_eq!(status, "Progressing", "{message}");
    let (ep, _) = reconcile(&ep, &models, &children(&wanted, 1, 0, None));
    assert_eq!(judged("ServingEndpoint", &ep).0, "Progressing");

    // Pods ready: promoted, READY.
    let (ep, _) = reconcile(&ep, &models, &children(&wanted, 1, 1, None));
    let state = ep
        .status
        .as_ref()
        .and_then(|s| s.state.clone())
        .expect("state");
    assert_eq!(format!("{:?}", state.ready), "READY", "{:?}", ep.status);
    let (status, message) = judged("ServingEndpoint", &ep);
    assert_eq!(status, "Healthy", "{message}");
    let healthy = ep.clone();
    let v1_children = children(&wanted, 1, 1, None);

    // A new version rolls out blue/green: Progressing while the old config serves.
    let v2 = checked(another_version(&mv, 2), &[], None);
    let models = vec![v1.clone(), v2];
    let mut ep = healthy.clone();
    ep.spec.served_entities[0].version = Some(2);
    ep.spec.served_entities[0].name = "iris-v2".into();
    ep.metadata.generation = Some(2);
    assert_eq!(
        judged("ServingEndpoint", &ep).0,
        "Progressing",
        "generation not observed yet"
    );
    let (ep, wanted_v2) = reconcile(&ep, &models, &v1_children);
    let (status, message) = judged("ServingEndpoint", &ep);
    assert_eq!(status, "Progressing", "{message}");
    assert!(message.starts_with("Rolling out config 2"), "{message}");

    // Its pods never become ready: the update fails, the old config keeps serving.
    let mut failing = v1_children.clone();
    failing.extend(children(&wanted_v2, 1, 0, Some("ProgressDeadlineExceeded")));
    let (ep, _) = reconcile(&ep, &models, &failing);
    let (status, message) = judged("ServingEndpoint", &ep);
    assert_eq!(status, "Degraded", "{message} {:?}", ep.status);
    assert!(
        message.contains("previous config keeps serving"),
        "{message}"
    );

    // A spec naming a version that does not exist cannot be resolved.
    let (_, mut missing) = quickstart();
    missing.spec.served_entities[0].version = Some(9);
    let (missing, _) = reconcile(&missing, &[v1], &BTreeMap::new());
    let (status, message) = judged("ServingEndpoint", &missing);
    assert_eq!(status, "Degraded", "{message}");
    assert!(
        message.starts_with("Spec cannot be resolved: "),
        "{message}"
    );
}

#[test]
fn the_argocd_cm_example_carries_the_same_lua() {
    let path = repo_root().join("examples/gitops/argocd/argocd-cm-health.yaml");
    let cm = &read_documents(&path).expect("argocd-cm example")[0];
    for kind in ["ServingEndpoint", "ModelVersion"] {
        let key = format!("resource.customizations.health.serving.sluice.dev_{kind}");
        let lua = std::fs::read_to_string(checks_dir().join(kind).join("health.lua")).expect("lua");
        assert_eq!(
            cm["data"][&key].as_str(),
            Some(lua.as_str()),
            "{} carries another {kind} health check than charts/sluice/argocd/serving.sluice.dev/{kind}/health.lua",
            path.display()
        );
    }
}
