//! The Helm chart (`charts/sluice`) with the pinned Helm v4 binary: `helm lint --strict`, every
//! values file rendered and checked by `kubernetes-validate --strict`, bad values refused by
//! `values.schema.json` with a message naming the value, the CRDs identical to
//! `crds/generated/`, the operator config read by the operator's own type, restricted containers
//! and RBAC rules taken from the rules files.

mod helm_support;

use std::{collections::BTreeSet, path::Path, process::Command};

use helm_support::{chart, documents, helm_run, object, of_kind, template, values_files};
use serde_json::{Value, json};
use sluice_contract::config::OperatorConfig;
use sluice_tests::{binaries, repo_root, venv_tool};

fn render(values: &[&Path], sets: &[&str]) -> Vec<Value> {
    documents(&template(values, sets).unwrap_or_else(|e| panic!("helm template failed:\n{e}")))
}

fn paths(files: &[std::path::PathBuf]) -> Vec<&Path> {
    files.iter().map(|p| p.as_path()).collect()
}

#[test]
fn helm_lint_strict_passes_with_every_values_file() {
    let chart = chart().display().to_string();
    for (name, files) in values_files() {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        for f in &files {
            args.extend(["--values", f.as_str()]);
        }
        let out = helm_run(&args).unwrap_or_else(|e| panic!("helm lint --strict ({name}):\n{e}"));
        assert!(out.contains("0 chart(s) failed"), "{name}: {out}");
    }
}

/// Kinds whose schemas kubernetes-validate does not bundle (Prometheus Operator CRDs); it
/// reports them as unknown and they are checked for shape by the other tests only.
const CUSTOM_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

#[test]
fn every_values_file_renders_manifests_that_pass_kubernetes_validate_strict() {
    let validate = venv_tool("kubernetes-validate");
    let dir = std::env::temp_dir().join(format!("sluice-helm-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (i, (name, files)) in values_files().into_iter().enumerate() {
        let rendered = template(&paths(&files), &[])
            .unwrap_or_else(|e| panic!("helm template ({name}):\n{e}"));
        let docs = documents(&rendered);
        assert!(docs.len() >= 10, "{name}: only {} objects", docs.len());
        let file = dir.join(format!("rendered-{i}.yaml"));
        std::fs::write(&file, &rendered).expect("write rendered");
        let out = Command::new(&validate)
            .args(["--strict", "--quiet", "--kubernetes-version", "1.37.0"])
            .arg(&file)
            .output()
            .expect("running kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{name}: kubernetes-validate --strict failed:\n{text}"
        );
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let expected_unknown = line.contains("Couldn't find schema")
                && CUSTOM_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} ")));
            assert!(expected_unknown, "{name}: unexpected output: {line}");
        }
        // Every object is namespaced to the release or cluster-scoped on purpose.
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let cluster_scoped = matches!(
                kind,
                "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
            );
            assert_eq!(
                doc["metadata"]["namespace"].as_str().is_none(),
                cluster_scoped,
                "{name}: {kind} {} namespace",
                doc["metadata"]["name"]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_values_are_refused_by_the_schema_with_a_message_naming_the_value() {
    let cases: &[(&[&str], &str)] = &[
        (&["operator.replicas=two"], "/operator/replicas"),
        (&["operator.replicas=0"], "/operator/replicas"),
        (
            &[
                "operator.replicas=2",
                "operator.leaderElection.enabled=false",
            ],
            "/operator/leaderElection/enabled",
        ),
        (&["gateway.port=70000"], "/gateway/port"),
        (&["gateway.replicas=-1"], "/gateway/replicas"),
        (&["gateway.service.type=Ingress"], "/gateway/service/type"),
        (
            &["images.operator.pullPolicy=Sometimes"],
            "/images/operator/pullPolicy",
        ),
        (
            &["images.inferenceServer.tag=has space"],
            "/images/inferenceServer/tag",
        ),
        (
            &["images.operator.digest=md5:abc"],
            "/images/operator/digest",
        ),
        (&["listenHost=localhost"], "/listenHost"),
        (&["operator.config.lakeRot=s3://x"], "lakeRot"),
        (
            &["operator.config.lakeRoot=/no/scheme"],
            "/operator/config/lakeRoot",
        ),
        (
            &["operator.config.workloadTypes.GPU_TINY.gpuCount=1"],
            "GPU_TINY",
        ),
        (
            // An unquoted number: the operator reads quantities as strings.
            &["operator.config.workloadTypes.CPU.cpu=1"],
            "/operator/config/workloadTypes/CPU/cpu",
        ),
        (
            &["operator.config.workloadTypes.GPU_SMALL.gpuCount=-1"],
            "/operator/config/workloadTypes/GPU_SMALL/gpuCount",
        ),
        (&["operator.config.workloadSizes.Huge.min=1"], "Huge"),
        (
            &["operator.config.autoscaling.perReplicaConcurrency=0"],
            "/operator/config/autoscaling/perReplicaConcurrency",
        ),
        (
            &["gateway.podDisruptionBudget.minAvailable=half"],
            "/gateway/podDisruptionBudget/minAvailable",
        ),
        (
            &["monitoring.serviceMonitor.interval=often"],
            "/monitoring/serviceMonitor/interval",
        ),
        (&["crds.install=maybe"], "/crds/install"),
        (&["gatewy.replicas=3"], "gatewy"),
    ];
    for (sets, named) in cases {
        let err = match template(&[], sets) {
            Ok(_) => panic!("{sets:?} was accepted"),
            Err(e) => e,
        };
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{sets:?} refused for another reason:\n{err}"
        );
        assert!(
            err.contains(named),
            "{sets:?}: the message does not name {named}:\n{err}"
        );
    }
}

#[test]
fn the_crds_in_the_chart_are_byte_identical_to_crds_generated() {
    let generated = repo_root().join("crds/generated");
    let copied = chart().join("files/crds");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect()
    };
    let fix = "fix: cp crds/generated/*.yaml charts/sluice/files/crds/";
    assert_eq!(
        names(&generated),
        names(&copied),
        "the chart's CRD files differ from crds/generated ({fix})"
    );
    for name in names(&generated) {
        let a = std::fs::read(generated.join(&name)).expect("generated CRD");
        let b = std::fs::read(copied.join(&name)).expect("chart CRD");
        assert!(
            a == b,
            "charts/sluice/files/crds/{name} drifted from crds/generated/{name} ({fix})"
        );
    }

    // What Helm renders is the same CRD, plus the keep annotations and the chart's labels.
    let docs = render(&[], &[]);
    let rendered = of_kind(&docs, "CustomResourceDefinition");
    assert_eq!(rendered.len(), names(&generated).len());
    for name in names(&generated) {
        let source = &sluice_tests::manifests::read_documents(&generated.join(&name))
            .expect("generated CRD")[0];
        let crd_name = source["metadata"]["name"].as_str().expect("CRD name");
        let out = object(&docs, "CustomResourceDefinition", crd_name);
        assert_eq!(
            out["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{crd_name} must survive helm uninstall"
        );
        assert_eq!(
            out["metadata"]["annotations"]["argocd.argoproj.io/sync-options"],
            "Delete=false"
        );
        assert_eq!(
            out["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "sluice"
        );
        let mut without_meta = out.clone();
        let mut source_meta = source.clone();
        without_meta["metadata"] = Value::Null;
        source_meta["metadata"] = Value::Null;
        assert!(
            numbers_as_f64(&without_meta) == numbers_as_f64(&source_meta),
            "rendered {crd_name} differs from crds/generated/{name}"
        );
    }

    // Off means off; keep=false drops the annotations.
    let docs = render(&[], &["crds.install=false"]);
    assert!(of_kind(&docs, "CustomResourceDefinition").is_empty());
    let docs = render(&[], &["crds.keep=false"]);
    for crd in of_kind(&docs, "CustomResourceDefinition") {
        assert!(
            crd["metadata"]["annotations"]
                .get("helm.sh/resource-policy")
                .is_none()
        );
    }
}

/// JSON numbers compared by value (Helm prints `1.0` as `1`).
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn operator_config(docs: &[Value]) -> OperatorConfig {
    let cm = object(docs, "ConfigMap", "sluice-operator");
    let text = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    OperatorConfig::parse(text, "rendered ConfigMap sluice-operator")
        .unwrap_or_else(|e| panic!("the operator refuses the rendered config: {e}\n{text}"))
}

#[test]
fn the_rendered_operator_config_is_read_by_the_operators_own_type() {
    // The chart's defaults are the operator's defaults, so an install without values behaves
    // like an operator without a config file; except that the NetworkPolicies name this
    // release's gateways (its namespace and selector labels), which only the chart knows.
    let mut config = operator_config(&render(&[], &[]));
    let policy = std::mem::take(&mut config.network_policy);
    assert_eq!(policy.gateway_namespace.as_deref(), Some("sluice-system"));
    assert_eq!(
        policy
            .gateway_labels
            .get("app.kubernetes.io/instance")
            .map(String::as_str),
        Some("sluice")
    );
    assert_eq!(
        policy
            .gateway_labels
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("gateway")
    );
    config.network_policy = sluice_contract::config::NetworkPolicyConfig {
        gateway_namespace: None,
        gateway_labels: OperatorConfig::default().network_policy.gateway_labels,
        ..policy
    };
    assert_eq!(config, OperatorConfig::default());

    for (name, files) in values_files() {
        let config = operator_config(&render(&paths(&files), &[]));
        assert!(
            config
                .images
                .inference_server
                .starts_with("ghcr.io/sluice-dev/inference-server"),
            "{name}: {}",
            config.images.inference_server
        );
    }

    // Admin edits arrive as typed values: a prod GPU class with its own pool and runtime.
    let prod = repo_root().join("examples/gitops/values-prod.yaml");
    let config = operator_config(&render(&[&prod], &[]));
    let small = config.workload_class(sluice_crds::WorkloadType::GPU_SMALL);
    assert_eq!(small.runtime_class_name.as_deref(), Some("nvidia"));
    assert_eq!(
        small
            .node_selector
            .get("cloud.google.com/gke-accelerator")
            .map(String::as_str),
        Some("nvidia-l4")
    );
    assert!(!small.node_selector.contains_key("nvidia.com/gpu.present"));
    assert_eq!(config.lake_root, "s3://acme-ml-prod/sluice/lake");

    // The image of entity pods follows the chart's data-plane image.
    let config = operator_config(&render(
        &[],
        &[
            "images.inferenceServer.repository=registry.example.com/sluice/inference-server",
            "images.inferenceServer.tag=1.2.3",
        ],
    ));
    assert_eq!(
        config.images.inference_server,
        "registry.example.com/sluice/inference-server:1.2.3"
    );
}

fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod_spec[*k].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn every_container_is_restricted_with_resources_and_probes() {
    for (name, files) in values_files() {
        let docs = render(&paths(&files), &[]);
        let deployments = of_kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 2, "{name}: operator and gateway");
        for d in deployments {
            let who = format!("{name}: Deployment {}", d["metadata"]["name"]);
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{who}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{who}"
            );
            assert!(pod["serviceAccountName"].as_str().is_some(), "{who}");
            for c in containers(pod) {
                let sc = &c["securityContext"];
                let who = format!("{who} container {}", c["name"]);
                assert_eq!(sc["runAsNonRoot"], true, "{who}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{who}"
                );
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{who}");
                assert!(
                    c["resources"]["requests"]["cpu"].is_string(),
                    "{who}: cpu request"
                );
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{who}: memory limit"
                );
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    assert!(c[probe]["httpGet"]["path"].is_string(), "{who}: {probe}");
                }
                assert!(
                    c["image"]
                        .as_str()
                        .is_some_and(|i| i.starts_with("ghcr.io/sluice-dev/")),
                    "{who}: image {}",
                    c["image"]
                );
            }
        }
        if object(&docs, "Deployment", "sluice-gateway")["spec"]["replicas"].as_i64() > Some(1) {
            let pdb = object(&docs, "PodDisruptionBudget", "sluice-gateway");
            assert!(pdb["spec"]["selector"]["matchLabels"].is_object(), "{name}");
        }
    }
}

fn rules_file(name: &str) -> Vec<Value> {
    let path = chart().join("files").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let rules: Vec<Value> =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name} is not a rule list: {e}"));
    // Each rule is commented with why (the line above it).
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("- ") {
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "{name} line {}: a rule without a comment saying why",
                i + 1
            );
        }
    }
    rules
}

#[test]
fn rbac_rules_come_from_the_rules_files() {
    let docs = render(&[], &[]);
    let operator_rules = rules_file("operator-rbac.yaml");
    let is_lease = |r: &&Value| {
        r["apiGroups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "coordination.k8s.io"))
    };
    let (leases, cluster): (Vec<&Value>, Vec<&Value>) = operator_rules.iter().partition(is_lease);
    let role = object(&docs, "ClusterRole", "sluice-operator");
    assert_eq!(
        role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .collect::<Vec<_>>(),
        cluster
    );
    let lease_role = object(&docs, "Role", "sluice-operator");
    assert_eq!(lease_role["metadata"]["namespace"], "sluice-system");
    assert_eq!(
        lease_role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .collect::<Vec<_>>(),
        leases
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = object(&docs, binding, "sluice-operator");
        assert_eq!(b["subjects"][0]["name"], "sluice-operator");
        assert_eq!(b["subjects"][0]["namespace"], "sluice-system");
    }
    let gateway = object(&docs, "ClusterRole", "sluice-gateway");
    assert_eq!(
        gateway["rules"].as_array().expect("rules"),
        &rules_file("gateway-rbac.yaml")
    );
    // No wildcard anywhere, and the gateway never writes.
    for rule in operator_rules
        .iter()
        .chain(rules_file("gateway-rbac.yaml").iter())
    {
        for key in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[key].as_array().expect(key).iter().any(|v| v == "*"),
                "wildcard in {rule}"
            );
        }
    }
    for rule in rules_file("gateway-rbac.yaml") {
        for verb in rule["verbs"].as_array().expect("verbs") {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str().unwrap_or_default()),
                "gateway rule {rule} writes"
            );
        }
    }
    let docs = render(&[], &["rbac.create=false"]);
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "Role").is_empty());
}

/// With `scope.namespaces`, an installation holds no ClusterRole: the operator's rules are a
/// Role in each managed namespace, its Lease (and the gateway pods it reads demand from) a Role
/// in the release namespace; the gateway's rules a Role in each managed namespace. No rule, in
/// any form, reads Secrets.
#[test]
fn a_scoped_installation_gets_roles_and_no_cluster_wide_permission() {
    let docs = render(
        &[],
        &[
            "scope.namespaces={ml-a,ml-b}",
            "scope.selector=sluice.dev/installation=a",
        ],
    );
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    let operator_rules = rules_file("operator-rbac.yaml");
    let managed: Vec<&Value> = operator_rules
        .iter()
        .filter(|r| r["apiGroups"][0] != "coordination.k8s.io")
        .collect();
    let roles = of_kind(&docs, "Role");
    for ns in ["ml-a", "ml-b"] {
        let in_ns = |name: &str| {
            roles
                .iter()
                .find(|r| r["metadata"]["name"] == name && r["metadata"]["namespace"] == ns)
                .unwrap_or_else(|| panic!("no Role {name} in {ns}"))
        };
        let operator = in_ns("sluice-operator-managed");
        assert_eq!(
            operator["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .collect::<Vec<_>>(),
            managed
        );
        let gateway = in_ns("sluice-gateway");
        assert_eq!(
            gateway["rules"].as_array().expect("rules"),
            &rules_file("gateway-rbac.yaml")
        );
    }
    let home = object(&docs, "Role", "sluice-operator");
    assert_eq!(home["metadata"]["namespace"], "sluice-system");
    let home_resources: Vec<&Value> = home["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| r["resources"].as_array().expect("resources"))
        .collect();
    assert_eq!(home_resources, [&json!("leases"), &json!("pods")]);
    for deployment in ["sluice-operator", "sluice-gateway"] {
        let d = object(&docs, "Deployment", deployment);
        let args = d["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        for flag in [
            "--namespace=ml-a",
            "--namespace=ml-b",
            "--selector=sluice.dev/installation=a",
        ] {
            assert!(args.contains(flag), "{deployment} lacks {flag}: {args}");
        }
    }
    for rule in operator_rules
        .iter()
        .chain(rules_file("gateway-rbac.yaml").iter())
    {
        assert!(
            !rule["resources"]
                .as_array()
                .expect("resources")
                .iter()
                .any(|r| r == "secrets"),
            "a rule on Secrets: {rule}"
        );
    }
}

/// The gateway's admin port serves `/demand`, which the autoscaler trusts: a NetworkPolicy lets
/// only this release's operator pods (and the namespaces listed, for a scraper) reach it, while
/// the serving port stays open to every caller.
#[test]
fn only_the_releases_operator_reaches_the_gateway_admin_port() {
    let docs = render(
        &[],
        &["gateway.networkPolicy.adminAllowedNamespaces={monitoring}"],
    );
    let policy = object(&docs, "NetworkPolicy", "sluice-gateway");
    let labels_of = |name: &str| {
        object(&docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"].clone()
    };
    let port_of = |name: &str, port: &str| {
        object(&docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == port)
            .map(|p| p["containerPort"].clone())
            .expect("port")
    };
    let selects = |selector: &Value, labels: &Value| {
        selector
            .as_object()
            .expect("matchLabels")
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &labels_of("sluice-gateway")
    ));
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 2, "{policy}");
    assert!(
        ingress[0].get("from").is_none(),
        "the serving port is open to callers"
    );
    assert_eq!(
        ingress[0]["ports"][0]["port"],
        port_of("sluice-gateway", "http")
    );
    assert_eq!(
        ingress[1]["ports"][0]["port"],
        port_of("sluice-gateway", "admin")
    );
    let from = ingress[1]["from"].as_array().expect("from");
    assert_eq!(from.len(), 2, "{policy}");
    assert!(selects(
        &from[0]["podSelector"]["matchLabels"],
        &labels_of("sluice-operator")
    ));
    assert!(!selects(
        &from[0]["podSelector"]["matchLabels"],
        &labels_of("sluice-gateway")
    ));
    assert_eq!(
        from[1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let off = render(&[], &["gateway.networkPolicy.enabled=false"]);
    assert!(of_kind(&off, "NetworkPolicy").is_empty());
}

/// The flags the chart passes, as `--name`.
fn flags(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or_default().to_string())
        .collect()
}

fn help(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_flags_the_chart_passes_are_known_to_the_binaries() {
    let operator = binaries::built("sluice-operator", "sluice-operator");
    let server = binaries::built("inference-server", "inference-server");
    let operator_help = help(&operator, &[]);
    let gateway_help = help(&server, &["gateway"]);
    for (name, files) in values_files() {
        let docs = render(&paths(&files), &[]);
        let op = &object(&docs, "Deployment", "sluice-operator")["spec"]["template"]["spec"]["containers"]
            [0];
        for flag in flags(op) {
            assert!(
                operator_help.contains(&flag),
                "{name}: the chart passes {flag} to sluice-operator, which does not know it:\n{operator_help}"
            );
        }
        let gw = &object(&docs, "Deployment", "sluice-gateway")["spec"]["template"]["spec"]["containers"]
            [0];
        assert_eq!(gw["args"][0], "gateway", "{name}");
        for flag in flags(gw) {
            assert!(
                gateway_help.contains(&flag),
                "{name}: the chart passes {flag} to `inference-server gateway`, which does not know it:\n{gateway_help}"
            );
        }
    }
}

#[test]
fn notes_tell_the_next_step() {
    let chart = chart().display().to_string();
    let notes = |extra: &[&str]| {
        let mut args = vec![
            "install",
            "sluice",
            chart.as_str(),
            "--dry-run=client",
            "--namespace",
            "sluice-system",
        ];
        args.extend_from_slice(extra);
        let out = helm_run(&args).unwrap_or_else(|e| panic!("helm install --dry-run: {e}"));
        out.split_once("NOTES:")
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| panic!("no NOTES:\n{out}"))
    };
    let default = notes(&[]);
    for expected in [
        "kubectl -n sluice-system get deploy,pods -l app.kubernetes.io/instance=sluice",
        "examples/minimal-cpu.yaml",
        "port-forward svc/sluice-gateway 8000:80",
        "/serving-endpoints/iris/invocations",
    ] {
        assert!(
            default.contains(expected),
            "NOTES lack {expected:?}:\n{default}"
        );
    }
    assert!(!default.contains("WARNING"), "{default}");
    let single = notes(&["--set", "gateway.replicas=1"]);
    assert!(single.contains("WARNING: gateway.replicas=1"), "{single}");
}
