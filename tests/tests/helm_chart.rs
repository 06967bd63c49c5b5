//! The Helm chart (`charts/sluice`) with the pinned Helm v4 binary: `helm lint --strict`, every
//! values file rendered and checked by `kubernetes-validate --strict`, bad values refused by
//! `values.schema.json` with a message naming the value, the CRDs identical to
//! `crds/generated/`, the operator config read by the operator's own type, restricted containers
//! and RBAC rules taken from the rules files; the gateway's Ingress, HTTPRoute (checked against
//! the pinned Gateway API CRD's schema and CEL rules) and HorizontalPodAutoscaler.

mod helm_support;

use std::{collections::BTreeSet, path::Path, process::Command};

use helm_support::{
    chart, check_jsonschema, crd_json_schema, documents, helm_run, httproute_crd, object, of_kind,
    template, values_files,
};
use serde::Deserialize;
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

/// Kinds whose schemas kubernetes-validate does not bundle; it reports them as unknown and
/// passes them. The Prometheus Operator CRDs are checked for shape by the other tests only;
/// HTTPRoute (Gateway API) is checked against its own CRD's schema by
/// `every_values_files_httproutes_pass_the_gateway_api_crd_schema`, which is why it may be
/// skipped here. Ingress and HorizontalPodAutoscaler are core kinds and validated strictly here.
const CUSTOM_KINDS: [&str; 3] = ["ServiceMonitor", "PrometheusRule", "HTTPRoute"];

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
        (
            &["gateway.ingress.enabled=maybe"],
            "/gateway/ingress/enabled",
        ),
        (
            &["gateway.ingress.hosts[0].paths[0].pathType=Regex"],
            "/gateway/ingress/hosts/0/paths/0/pathType",
        ),
        (
            &["gateway.ingress.hosts[0].host=Not_A_Host"],
            "/gateway/ingress/hosts/0/host",
        ),
        (
            &["gateway.ingress.certManager.clusterIssur=letsencrypt"],
            "clusterIssur",
        ),
        (
            &["gateway.httpRoute.parentRefs[0].namespace=gateway-system"],
            "/gateway/httpRoute/parentRefs/0",
        ),
        (
            &["gateway.httpRoute.rules[0].matches[0].path.type=Prefix"],
            "/gateway/httpRoute/rules/0/matches/0/path/type",
        ),
        (
            &["gateway.httpRoute.timeouts.request=10 minutes"],
            "/gateway/httpRoute/timeouts/request",
        ),
        (&["gateway.httpRoute.tls=true"], "tls"),
        (
            &["gateway.autoscaling.minReplicas=0"],
            "/gateway/autoscaling/minReplicas",
        ),
        (
            &["gateway.autoscaling.targetCPUUtilizationPercentage=high"],
            "/gateway/autoscaling/targetCPUUtilizationPercentage",
        ),
        (
            &["gateway.autoscaling.behavior.scaleSideways.periodSeconds=60"],
            "scaleSideways",
        ),
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

/// The gateway's rules: its rules file, and the management API's when it is on.
fn gateway_rules(management: bool) -> Vec<Value> {
    let mut rules = rules_file("gateway-rbac.yaml");
    if management {
        rules.extend(rules_file("gateway-management-rbac.yaml"));
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
        &gateway_rules(true)
    );
    // Without the management API the gateway writes nothing.
    let docs = render(&[], &["gateway.managementApi.enabled=false"]);
    let gateway = object(&docs, "ClusterRole", "sluice-gateway");
    assert_eq!(
        gateway["rules"].as_array().expect("rules"),
        &gateway_rules(false)
    );
    let args =
        object(&docs, "Deployment", "sluice-gateway")["spec"]["template"]["spec"]["containers"][0]
            ["args"]
            .to_string();
    assert!(args.contains("--management-api=false"), "{args}");
    for rule in gateway_rules(false) {
        let verbs = rule["verbs"].as_array().expect("verbs");
        assert!(verbs.iter().all(|v| v == "list" || v == "watch"), "{rule}");
    }
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
    // External entities' provider keys: `get` on Secrets by name, never list or watch; off
    // with gateway.providerKeys.enabled=false.
    assert_eq!(
        object(&docs, "ClusterRole", "sluice-gateway-provider-keys")["rules"]
            .as_array()
            .expect("rules"),
        &rules_file("gateway-provider-keys-rbac.yaml")
    );
    let without = render(&[], &["gateway.providerKeys.enabled=false"]);
    assert!(
        !of_kind(&without, "ClusterRole")
            .iter()
            .any(|r| r["metadata"]["name"] == "sluice-gateway-provider-keys")
    );
    let docs = render(&[], &["rbac.create=false"]);
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "Role").is_empty());
}

/// With `scope.namespaces`, an installation holds no ClusterRole: the operator's rules are a
/// Role in each managed namespace, its Lease (and the gateway pods it reads demand from) a Role
/// in the release namespace; the gateway's rules a Role in each managed namespace. Only the
/// gateway reads Secrets: API keys in the release namespace, provider keys by name.
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
    // One cluster-wide binding, to the built-in system:auth-delegator (create on TokenReviews
    // and SubjectAccessReviews, which are cluster-scoped): the gateway's checks of callers.
    let bindings = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(bindings[0]["roleRef"]["name"], "system:auth-delegator");
    assert_eq!(bindings[0]["subjects"][0]["name"], "sluice-gateway");
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
            &gateway_rules(true)
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
    // Only the gateway reads Secrets, read-only: its callers' API keys in the release namespace,
    // and by name only (`get`) the provider keys of external entities in the managed namespaces.
    let readers: Vec<(String, String)> = of_kind(&docs, "Role")
        .into_iter()
        .filter(|r| {
            r["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|rule| rule["resources"].to_string().contains("secrets"))
        })
        .map(|r| {
            (
                r["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("sluice-gateway-api-keys", "sluice-system"),
        ("sluice-gateway-provider-keys", "ml-a"),
        ("sluice-gateway-provider-keys", "ml-b"),
    ]
    .iter()
    .map(|(n, ns)| (n.to_string(), ns.to_string()))
    .collect();
    assert_eq!(readers, expected);
    assert_eq!(
        object(&docs, "Role", "sluice-gateway-api-keys")["rules"]
            .as_array()
            .expect("rules"),
        &rules_file("gateway-keys-rbac.yaml")
    );
    let provider_keys = rules_file("gateway-provider-keys-rbac.yaml");
    assert_eq!(
        provider_keys,
        [json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})]
    );
    for role in of_kind(&docs, "Role")
        .into_iter()
        .filter(|r| r["metadata"]["name"] == "sluice-gateway-provider-keys")
    {
        assert_eq!(role["rules"].as_array().expect("rules"), &provider_keys);
    }
}

/// Who may call and change endpoints: `<release>-view` reads them, `-edit` changes them,
/// `-query` calls them through the gateway (the verb the gateway's SubjectAccessReview asks
/// about), aggregated into Kubernetes' own view / edit / admin roles.
#[test]
fn user_roles_aggregate_into_view_edit_and_admin() {
    let docs = render(&[], &[]);
    let aggregated = |name: &str, into: &str| {
        object(&docs, "ClusterRole", name)["metadata"]["labels"]
            [format!("rbac.authorization.k8s.io/aggregate-to-{into}")]
            == "true"
    };
    for into in ["view", "edit", "admin"] {
        assert!(aggregated("sluice-view", into), "view into {into}");
    }
    for into in ["edit", "admin"] {
        assert!(aggregated("sluice-edit", into), "edit into {into}");
        assert!(aggregated("sluice-query", into), "query into {into}");
    }
    assert!(
        !aggregated("sluice-query", "view"),
        "view users may not call endpoints"
    );
    assert!(!aggregated("sluice-edit", "view"));
    let query = object(&docs, "ClusterRole", "sluice-query");
    assert_eq!(
        query["rules"],
        json!([{"apiGroups": ["serving.sluice.dev"], "resources": ["servingendpoints"], "verbs": ["query"]}])
    );
    let gateway = object(&docs, "Deployment", "sluice-gateway");
    let args = gateway["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--api-keys-namespace=sluice-system"),
        "{args}"
    );
    assert!(
        !args.contains("--allow-anonymous"),
        "anonymous calls are off by default"
    );
    let binding = object(&docs, "ClusterRoleBinding", "sluice-gateway-auth-delegator");
    assert_eq!(binding["roleRef"]["name"], "system:auth-delegator");
}

/// The gateway's admin port serves `/demand`, which the autoscaler trusts: a NetworkPolicy lets
/// only this release's operator pods (and the namespaces listed, for a scraper) reach it, while
/// the serving port stays open to every caller.
#[test]
fn only_the_releases_operator_and_test_pod_reach_the_gateway_admin_port() {
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
    assert_eq!(from.len(), 3, "{policy}");
    assert!(selects(
        &from[0]["podSelector"]["matchLabels"],
        &labels_of("sluice-operator")
    ));
    assert!(!selects(
        &from[0]["podSelector"]["matchLabels"],
        &labels_of("sluice-gateway")
    ));
    // The `helm test` pod asks each gateway's /readyz on the admin port.
    let test_pod = &object(&docs, "Pod", "sluice-test")["metadata"]["labels"];
    assert!(selects(&from[1]["podSelector"]["matchLabels"], test_pod));
    assert!(!selects(
        &from[1]["podSelector"]["matchLabels"],
        &labels_of("sluice-operator")
    ));
    assert_eq!(
        from[2]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let untested = render(&[], &["tests.enabled=false"]);
    let policy = object(&untested, "NetworkPolicy", "sluice-gateway");
    assert_eq!(
        policy["spec"]["ingress"][1]["from"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "without helm test, only the operator: {policy}"
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
    let check_help = help(&server, &["check"]);
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
        let check = &object(&docs, "Pod", "sluice-test")["spec"]["containers"][0];
        assert_eq!(check["args"][0], "check", "{name}");
        for flag in flags(check) {
            assert!(
                check_help.contains(&flag),
                "{name}: the chart passes {flag} to `inference-server check`, which does not know it:\n{check_help}"
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
    let version = chart_version();
    for expected in [
        "kubectl -n sluice-system get deploy,pods -l app.kubernetes.io/instance=sluice",
        "helm test sluice -n sluice-system",
        "port-forward svc/sluice-gateway 8000:80",
        "/serving-endpoints/iris/invocations",
        "--clusterrole=sluice-query --serviceaccount=ml:iris-caller",
        "-H \"Authorization: Bearer $TOKEN\"",
        &format!("operator          ghcr.io/sluice-dev/operator:{version}"),
        "a release's chart pins both by digest",
    ] {
        assert!(
            default.contains(expected),
            "NOTES lack {expected:?}:\n{default}"
        );
    }
    assert!(!default.contains("WARNING"), "{default}");
    // The first endpoint, as printed, is what the CRDs accept, and its model is the asset the
    // release workflow attaches.
    let manifest = first_endpoint(&default);
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&manifest)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .collect();
    assert_eq!(docs.len(), 2, "{manifest}");
    let mv: sluice_crds::ModelVersion =
        serde_json::from_value(docs[0].clone()).expect("a ModelVersion");
    let ep: sluice_crds::ServingEndpoint =
        serde_json::from_value(docs[1].clone()).expect("a ServingEndpoint");
    assert_eq!(
        mv.spec.source.uri,
        format!("https://github.com/sluice-dev/sluice/releases/download/v{version}/iris.tar.gz")
    );
    assert_eq!(ep.spec.served_entities[0].model.as_deref(), Some("iris"));
    let release = std::fs::read_to_string(repo_root().join(".github/workflows/release.yml"))
        .expect("release workflow");
    assert!(
        release.contains("tar czf dist/iris.tar.gz -C examples/models iris")
            && release.contains("dist/iris.tar.gz"),
        "the release workflow attaches iris.tar.gz"
    );

    // A release's values: the images by digest, no tag note.
    let digest = format!("sha256:{}", "a".repeat(64));
    let pinned = notes(&[
        "--set",
        &format!("images.operator.digest={digest}"),
        "--set",
        &format!("images.inferenceServer.digest={digest}"),
    ]);
    assert!(
        pinned.contains(&format!("ghcr.io/sluice-dev/inference-server@{digest}")),
        "{pinned}"
    );
    assert!(!pinned.contains("named by tag"), "{pinned}");

    let single = notes(&["--set", "gateway.replicas=1"]);
    assert!(single.contains("WARNING: gateway.replicas=1"), "{single}");
    let scaled = notes(&[
        "--set",
        "gateway.autoscaling.enabled=true",
        "--set",
        "gateway.autoscaling.minReplicas=1",
    ]);
    assert!(
        scaled.contains("WARNING: gateway.autoscaling.minReplicas=1"),
        "{scaled}"
    );
    let ingress = notes(&[
        "--set",
        "gateway.ingress.enabled=true",
        "--set",
        "gateway.ingress.hosts[0].host=models.example.org",
        "--set",
        "gateway.ingress.hosts[0].paths[0].path=/",
    ]);
    assert!(
        ingress.contains("GATEWAY=http://models.example.org"),
        "{ingress}"
    );
    let route = |section: &str| {
        notes(&[
            "--set",
            "gateway.httpRoute.enabled=true",
            "--set",
            "gateway.httpRoute.hostnames[0]=models.example.org",
            "--set",
            &format!(
                "gateway.httpRoute.parentRefs[0].name=public,gateway.httpRoute.parentRefs[0].sectionName={section}"
            ),
        ])
    };
    let secure = route("https");
    assert!(
        secure.contains("GATEWAY=https://models.example.org"),
        "{secure}"
    );
    let plain = route("web");
    assert!(
        plain.contains("GATEWAY=http://models.example.org"),
        "{plain}"
    );
}

/// The gateway's Service takes the type and annotations of `gateway.service`.
#[test]
fn the_gateway_service_takes_its_type_and_annotations_from_values() {
    let plain = render(&[], &[]);
    let service = object(&plain, "Service", "sluice-gateway");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    let exposed = render(
        &[],
        &[
            "gateway.service.type=LoadBalancer",
            "gateway.service.annotations.service\\.beta\\.kubernetes\\.io/aws-load-balancer-type=nlb",
        ],
    );
    let service = object(&exposed, "Service", "sluice-gateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(
        service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"],
        "nlb",
        "{service}"
    );
}

/// The chart's version (Chart.yaml), which is the release version.
fn chart_version() -> String {
    let chart: Value = serde_norway::from_str(
        &std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    chart["version"].as_str().expect("version").to_string()
}

/// The manifest NOTES.txt prints for the first endpoint: the indented block from its
/// `apiVersion:` line to the last entity line, dedented.
fn first_endpoint(notes: &str) -> String {
    let lines: Vec<&str> = notes.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("apiVersion: serving.sluice.dev"))
        .expect("a manifest in NOTES");
    let indent = lines[start].len() - lines[start].trim_start().len();
    lines[start..]
        .iter()
        .take_while(|l| l.len() > indent && l[..indent].trim().is_empty())
        .map(|l| &l[indent..])
        .collect::<Vec<_>>()
        .join("\n")
}

/// `helm test`: a hook pod of the release's own data-plane image checks the release's own
/// operator and gateway pods (the selectors and ports the Deployments use), with a Role that
/// can only read pods in the release namespace, and nothing of it renders when off.
#[test]
fn helm_test_checks_the_releases_own_pods() {
    let docs = render(&[], &["tests.queryEndpoint=iris"]);
    let pod = object(&docs, "Pod", "sluice-test");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["serviceAccountName"], "sluice-test");
    let container = &pod["spec"]["containers"][0];
    let gateway = object(&docs, "Deployment", "sluice-gateway");
    assert_eq!(
        container["image"], gateway["spec"]["template"]["spec"]["containers"][0]["image"],
        "the test runs the release's own data-plane image"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let arg = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
            .unwrap_or_else(|| panic!("no --{flag} in {args:?}"))
            .to_string()
    };
    for (component, flag) in [
        ("operator", "operator-selector"),
        ("gateway", "gateway-selector"),
    ] {
        let deployment = object(&docs, "Deployment", &format!("sluice-{component}"));
        let mut wanted: Vec<String> = deployment["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels")
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        wanted.sort();
        assert_eq!(arg(flag), wanted.join(","), "{component} selector");
    }
    let port_of = |deployment: &str, port: &str| {
        object(&docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
            ["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == port)
            .map(|p| p["containerPort"].to_string())
            .expect("port")
    };
    assert_eq!(arg("operator-port"), port_of("sluice-operator", "probes"));
    assert_eq!(
        arg("gateway-admin-port"),
        port_of("sluice-gateway", "admin")
    );
    assert_eq!(arg("gateway-port"), port_of("sluice-gateway", "http"));
    assert_eq!(arg("query-endpoint"), "iris");
    let body: Value = serde_json::from_str(&arg("query-body")).expect("the query body is JSON");
    assert!(body["inputs"].is_array(), "{body}");

    let role = object(&docs, "Role", "sluice-test");
    assert_eq!(role["metadata"]["namespace"], "sluice-system");
    assert_eq!(
        role["rules"].as_array().expect("rules"),
        &rules_file("test-rbac.yaml")
    );
    let binding = object(&docs, "RoleBinding", "sluice-test");
    assert_eq!(binding["subjects"][0]["name"], "sluice-test");
    // Only the pod is a hook, deleted when it passed; its account is a release object, so
    // `helm uninstall` removes it (Helm leaves hooks behind).
    assert_eq!(
        pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"],
        "before-hook-creation,hook-succeeded"
    );
    for kind in ["ServiceAccount", "Role", "RoleBinding"] {
        let object = object(&docs, kind, "sluice-test");
        assert!(
            object["metadata"]["annotations"]["helm.sh/hook"].is_null(),
            "{kind}"
        );
    }

    let default = render(&[], &[]);
    let args = object(&default, "Pod", "sluice-test")["spec"]["containers"][0]["args"].clone();
    assert!(
        !args.to_string().contains("--query-endpoint"),
        "no query without tests.queryEndpoint: {args}"
    );
    let off = render(&[], &["tests.enabled=false"]);
    for kind in ["Pod", "Role", "RoleBinding"] {
        assert!(
            of_kind(&off, kind)
                .iter()
                .all(|o| o["metadata"]["name"] != "sluice-test"),
            "{kind} sluice-test rendered with tests.enabled=false"
        );
    }
}

/// A scratch folder for one test (tests run in parallel in one process).
fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-helm-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The JSON Schema of the HTTPRoute CRD's version `api_version` (from the pinned Gateway API
/// module), written into `dir`.
fn httproute_schema_file(dir: &Path, api_version: &str) -> std::path::PathBuf {
    let schema = crd_json_schema(&httproute_crd(), api_version);
    let file = dir.join(format!("{}.schema.json", api_version.replace('/', "_")));
    std::fs::write(&file, serde_json::to_vec_pretty(&schema).expect("json")).expect("write schema");
    file
}

/// The suite's offline API-server validator (schema, unknown fields and CEL rules) for the
/// HTTPRoute CRD alone, loaded from a copy in `dir`.
fn httproute_validator(dir: &Path) -> sluice_tests::schema::SchemaValidator {
    let crds = dir.join("crds");
    std::fs::create_dir_all(&crds).expect("crds dir");
    std::fs::copy(httproute_crd(), crds.join("httproutes.yaml")).expect("copy the CRD");
    sluice_tests::schema::SchemaValidator::from_dir(&crds)
        .unwrap_or_else(|e| panic!("the HTTPRoute CRD: {e}"))
}

/// The HTTPRoute of the all-features values.
fn all_features_httproute() -> Value {
    let docs = render(&[&chart().join("ci/all-features-values.yaml")], &[]);
    object(&docs, "HTTPRoute", "sluice-gateway").clone()
}

/// kubernetes-validate knows no Gateway API kinds, so the rendered HTTPRoutes are checked here
/// against the `openAPIV3Schema` of the HTTPRoute CRD (the served version the chart renders) of
/// the pinned Gateway API release, with unknown fields refused, by `check-jsonschema`; then the
/// CRD's CEL rules by the suite's own validator. The all-features values render one, so this
/// cannot pass with nothing checked.
#[test]
fn every_values_files_httproutes_pass_the_gateway_api_crd_schema() {
    let dir = scratch("httproute");
    let mut schemas = std::collections::BTreeMap::new();
    let mut checked = Vec::new();
    for (i, (name, files)) in values_files().into_iter().enumerate() {
        let docs = render(&paths(&files), &[]);
        let routes = of_kind(&docs, "HTTPRoute");
        if name == "ci/all-features-values.yaml" {
            assert_eq!(routes.len(), 1, "{name} renders no HTTPRoute");
        }
        for (j, route) in routes.into_iter().enumerate() {
            let api_version = route["apiVersion"]
                .as_str()
                .expect("apiVersion")
                .to_string();
            let schema = schemas
                .entry(api_version.clone())
                .or_insert_with(|| httproute_schema_file(&dir, &api_version))
                .clone();
            let file = dir.join(format!("route-{i}-{j}.json"));
            std::fs::write(&file, serde_json::to_vec_pretty(route).expect("json"))
                .expect("write route");
            checked.push((name.clone(), schema, file));
        }
    }
    assert!(!checked.is_empty(), "no values file renders an HTTPRoute");
    // The CRD's CEL rules too (`x-kubernetes-validations`, which are not JSON Schema), with the
    // suite's own offline API-server validator.
    let validator = httproute_validator(&dir);
    for (name, _, file) in &checked {
        let route: Value =
            serde_json::from_slice(&std::fs::read(file).expect("read route")).expect("route");
        if let Err(errors) = validator.validate(&route, None) {
            panic!("{name}: the HTTPRoute breaks the CRD's rules: {errors:?}");
        }
    }
    for (name, schema, file) in &checked {
        let out = check_jsonschema(schema, std::slice::from_ref(file)).unwrap_or_else(|e| {
            panic!(
                "{name}: the HTTPRoute fails the Gateway API CRD schema:\n{e}\n{}",
                std::fs::read_to_string(file).unwrap_or_default()
            )
        });
        assert!(out.contains("ok -- validation done"), "{name}: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checks above really validate: a rendered HTTPRoute passes, and each broken copy of it
/// fails with a message naming what is wrong (check-jsonschema for the schema, the suite's
/// validator for a CEL rule the schema cannot express).
#[test]
fn the_httproute_schema_check_refuses_broken_routes() {
    let dir = scratch("httproute-broken");
    let route = all_features_httproute();
    let api_version = route["apiVersion"]
        .as_str()
        .expect("apiVersion")
        .to_string();
    let schema = httproute_schema_file(&dir, &api_version);
    let good = dir.join("good.json");
    std::fs::write(&good, route.to_string()).expect("write");
    check_jsonschema(&schema, &[good]).unwrap_or_else(|e| panic!("the rendered route fails:\n{e}"));

    type Breakage = fn(&mut Value);
    let cases: &[(&str, Breakage, &str)] = &[
        (
            "a parentRef without name",
            |r| {
                r["spec"]["parentRefs"][0]
                    .as_object_mut()
                    .expect("parentRef")
                    .remove("name");
            },
            "'name' is a required property",
        ),
        (
            "path type Bogus",
            |r| r["spec"]["rules"][0]["matches"][0]["path"]["type"] = json!("Bogus"),
            "'Bogus' is not one of",
        ),
        (
            "a misspelt field",
            |r| r["spec"]["rules"][0]["backendRef"] = json!([{"name": "x", "port": 80}]),
            "'backendRef' was unexpected",
        ),
        (
            "a timeout that is not a Gateway API duration",
            |r| r["spec"]["rules"][0]["timeouts"]["request"] = json!("10 minutes"),
            "'10 minutes' does not match",
        ),
        (
            "a backend port out of range",
            |r| r["spec"]["rules"][0]["backendRefs"][0]["port"] = json!(70000),
            "70000 is greater than the maximum of 65535",
        ),
        (
            "an unserved apiVersion",
            |r| r["apiVersion"] = json!("gateway.networking.k8s.io/v1alpha1"),
            "'gateway.networking.k8s.io/v1' was expected",
        ),
    ];
    for (i, (what, breaks, message)) in cases.iter().enumerate() {
        let mut broken = route.clone();
        breaks(&mut broken);
        let file = dir.join(format!("broken-{i}.json"));
        std::fs::write(&file, broken.to_string()).expect("write");
        match check_jsonschema(&schema, &[file]) {
            Ok(out) => panic!("{what}: accepted:\n{out}"),
            Err(out) => assert!(out.contains(message), "{what}: no {message:?} in:\n{out}"),
        }
    }
    // A CEL rule, which JSON Schema cannot express, caught by the second check.
    let validator = httproute_validator(&dir);
    validator
        .validate(&route, None)
        .unwrap_or_else(|e| panic!("the rendered route breaks the CRD's rules: {e:?}"));
    let mut portless = route.clone();
    portless["spec"]["rules"][0]["backendRefs"][0]
        .as_object_mut()
        .expect("backendRef")
        .remove("port");
    let good = dir.join("portless.json");
    std::fs::write(&good, portless.to_string()).expect("write");
    check_jsonschema(&schema, &[good]).expect("a Service backend without port is valid JSON");
    let errors = validator
        .validate(&portless, None)
        .expect_err("a Service backendRef without port was accepted");
    assert!(
        errors
            .iter()
            .any(|e| e.message == "Must have port for Service reference"),
        "{errors:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `gateway.autoscaling.enabled` the HorizontalPodAutoscaler owns the gateway's replica
/// count: the Deployment sets none, and the HPA scales exactly that Deployment within the bounds
/// given, above the PodDisruptionBudget's minAvailable.
#[test]
fn gateway_autoscaling_leaves_the_replica_count_to_an_hpa() {
    let fixed = render(&[], &[]);
    assert_eq!(
        object(&fixed, "Deployment", "sluice-gateway")["spec"]["replicas"],
        2
    );
    assert!(of_kind(&fixed, "HorizontalPodAutoscaler").is_empty());

    let docs = render(
        &[],
        &[
            "gateway.autoscaling.enabled=true",
            "gateway.autoscaling.minReplicas=3",
            "gateway.autoscaling.maxReplicas=7",
            "gateway.autoscaling.targetMemoryUtilizationPercentage=85",
        ],
    );
    let deployment = object(&docs, "Deployment", "sluice-gateway");
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the Deployment sets replicas under an HPA: {}",
        deployment["spec"]
    );
    let hpa = object(&docs, "HorizontalPodAutoscaler", "sluice-gateway");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": deployment["apiVersion"], "kind": "Deployment", "name": deployment["metadata"]["name"]})
    );
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["maxReplicas"], 7);
    let target = |resource: &str, percent: i64| json!({"type": "Resource", "resource": {"name": resource, "target": {"type": "Utilization", "averageUtilization": percent}}});
    assert_eq!(
        hpa["spec"]["metrics"],
        json!([target("cpu", 70), target("memory", 85)])
    );
    assert!(hpa["spec"].get("behavior").is_none(), "{}", hpa["spec"]);
    let pdb = object(&docs, "PodDisruptionBudget", "sluice-gateway");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert!(
        pdb["spec"]["minAvailable"].as_i64().expect("minAvailable")
            < hpa["spec"]["minReplicas"].as_i64().expect("minReplicas"),
        "the PodDisruptionBudget would block every drain at minReplicas"
    );
    // Only the memory target; the behavior of the all-features values passes through.
    let memory_only = render(
        &[&chart().join("ci/all-features-values.yaml")],
        &["gateway.autoscaling.targetCPUUtilizationPercentage=null"],
    );
    let hpa = object(&memory_only, "HorizontalPodAutoscaler", "sluice-gateway");
    assert_eq!(hpa["spec"]["metrics"], json!([target("memory", 80)]));
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
}

/// The Ingress sends every host and path to the gateway Service's serving port; with
/// `certManager` it carries cert-manager's annotation and the tls entries it fills.
#[test]
fn gateway_ingress_routes_to_the_service_port_with_cert_manager_tls() {
    let defaults = render(&[], &[]);
    assert!(of_kind(&defaults, "Ingress").is_empty());
    let values = chart().join("ci/all-features-values.yaml");
    let docs = render(&[&values], &[]);
    let service = object(&docs, "Service", "sluice-gateway");
    let http_port = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "http")
        .map(|p| p["port"].clone())
        .expect("http port");
    let ingress = object(&docs, "Ingress", "sluice-gateway");
    assert_eq!(ingress["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    let annotations = &ingress["metadata"]["annotations"];
    assert_eq!(
        annotations["cert-manager.io/cluster-issuer"],
        "letsencrypt-prod"
    );
    assert!(annotations.get("cert-manager.io/issuer").is_none());
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "600"
    );
    assert_eq!(
        ingress["spec"]["tls"],
        json!([{"secretName": "sluice-gateway-tls", "hosts": ["sluice.example.com", "*.sluice.example.com"]}])
    );
    let rules = ingress["spec"]["rules"].as_array().expect("rules");
    let hosts: Vec<&Value> = rules.iter().map(|r| &r["host"]).collect();
    assert_eq!(
        hosts,
        [&json!("sluice.example.com"), &json!("*.sluice.example.com")]
    );
    for rule in rules {
        for path in rule["http"]["paths"].as_array().expect("paths") {
            assert_eq!(path["pathType"], "Prefix", "{path}");
            assert_eq!(
                path["backend"]["service"],
                json!({"name": service["metadata"]["name"], "port": {"number": http_port}})
            );
        }
    }
    // An Issuer instead, on the defaults' host.
    let issuer = render(
        &[],
        &[
            "gateway.ingress.enabled=true",
            "gateway.ingress.certManager.issuer=internal-ca",
            "gateway.ingress.tls[0].secretName=sluice-tls",
            "gateway.ingress.tls[0].hosts[0]=sluice.example.com",
        ],
    );
    let ingress = object(&issuer, "Ingress", "sluice-gateway");
    assert_eq!(
        ingress["metadata"]["annotations"],
        json!({"cert-manager.io/issuer": "internal-ca"})
    );
    assert_eq!(ingress["spec"]["rules"][0]["host"], "sluice.example.com");
    assert!(ingress["spec"].get("ingressClassName").is_none());
}

/// The HTTPRoute attaches to the Gateways named and sends every rule to the gateway Service's
/// serving port, with the timeouts given.
#[test]
fn gateway_httproute_routes_to_the_service_port() {
    assert!(of_kind(&render(&[], &[]), "HTTPRoute").is_empty());
    let docs = render(&[&chart().join("ci/all-features-values.yaml")], &[]);
    let service = object(&docs, "Service", "sluice-gateway");
    let route = object(&docs, "HTTPRoute", "sluice-gateway");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["metadata"]["labels"]["exposure"], "public");
    assert_eq!(
        route["spec"]["parentRefs"],
        json!([{"name": "public", "namespace": "gateway-system", "sectionName": "https"}])
    );
    assert_eq!(route["spec"]["hostnames"], json!(["sluice.example.com"]));
    let rules = route["spec"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 2);
    for rule in rules {
        assert_eq!(
            rule["backendRefs"],
            json!([{"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}])
        );
        assert_eq!(
            rule["timeouts"],
            json!({"request": "600s", "backendRequest": "590s"})
        );
    }
    assert_eq!(
        rules[1]["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/v1"}, "method": "POST"}])
    );
    // The defaults: one rule for every path, no timeouts.
    let minimal = render(
        &[],
        &[
            "gateway.httpRoute.enabled=true",
            "gateway.httpRoute.parentRefs[0].name=public",
        ],
    );
    let route = object(&minimal, "HTTPRoute", "sluice-gateway");
    assert_eq!(
        route["spec"]["rules"],
        json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"name": "sluice-gateway", "port": 80}],
        }])
    );
}

/// Exposure values the schema cannot judge alone are refused while rendering, with a message
/// naming the values to change.
#[test]
fn gateway_exposure_values_that_cannot_work_are_refused_by_name() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[
                "gateway.ingress.enabled=true",
                "gateway.ingress.certManager.clusterIssuer=letsencrypt-prod",
            ],
            &["gateway.ingress.certManager", "gateway.ingress.tls"],
        ),
        (
            &[
                "gateway.ingress.enabled=true",
                "gateway.ingress.certManager.clusterIssuer=letsencrypt-prod",
                "gateway.ingress.tls[0].secretName=sluice-tls",
            ],
            &["gateway.ingress.tls[0]", "hosts"],
        ),
        (
            &[
                "gateway.ingress.enabled=true",
                "gateway.ingress.certManager.issuer=internal-ca",
                "gateway.ingress.certManager.clusterIssuer=letsencrypt-prod",
                "gateway.ingress.tls[0].secretName=sluice-tls",
                "gateway.ingress.tls[0].hosts[0]=sluice.example.com",
            ],
            &["gateway.ingress.certManager", "not both"],
        ),
        (
            &["gateway.httpRoute.enabled=true"],
            &["gateway.httpRoute.parentRefs"],
        ),
        (
            &[
                "gateway.autoscaling.enabled=true",
                "gateway.autoscaling.minReplicas=5",
                "gateway.autoscaling.maxReplicas=4",
            ],
            &[
                "gateway.autoscaling.minReplicas",
                "gateway.autoscaling.maxReplicas",
            ],
        ),
        (
            &[
                "gateway.autoscaling.enabled=true",
                "gateway.autoscaling.targetCPUUtilizationPercentage=null",
            ],
            &[
                "targetCPUUtilizationPercentage",
                "targetMemoryUtilizationPercentage",
            ],
        ),
        (
            &[
                "gateway.autoscaling.enabled=true",
                "gateway.resources.requests.cpu=null",
            ],
            &[
                "gateway.autoscaling.targetCPUUtilizationPercentage",
                "gateway.resources.requests.cpu",
            ],
        ),
    ];
    for (sets, named) in cases {
        let err = match template(&[], sets) {
            Ok(_) => panic!("{sets:?} was accepted"),
            Err(e) => e,
        };
        assert!(
            err.contains("execution error"),
            "{sets:?} refused for another reason:\n{err}"
        );
        for name in *named {
            assert!(
                err.contains(name),
                "{sets:?}: the message does not name {name}:\n{err}"
            );
        }
    }
}

/// The gateway's rate-limit flags and environment: a share of each budget per replica without
/// Redis (of maxReplicas under an HPA), the URL from values, from a Secret, or of the in-chart
/// Redis, which only the gateway pods may reach.
#[test]
fn rate_limit_budgets_are_shared_through_redis_or_split_by_replicas() {
    let gateway = |docs: &[Value]| {
        let deployment = object(docs, "Deployment", "sluice-gateway");
        let pod = &deployment["spec"]["template"]["spec"];
        containers(pod)[0].clone()
    };
    let arg = |container: &Value, name: &str| {
        container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string))
    };
    let redis_env = |container: &Value| {
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "SLUICE_GATEWAY_RATE_LIMIT_REDIS")
            .cloned()
    };

    let split = gateway(&render(&[], &[]));
    assert_eq!(arg(&split, "--rate-limit-replicas").as_deref(), Some("2"));
    assert_eq!(
        arg(&split, "--rate-limit-fail-mode").as_deref(),
        Some("open")
    );
    assert!(redis_env(&split).is_none());
    let scaled = gateway(&render(
        &[],
        &[
            "gateway.autoscaling.enabled=true",
            "gateway.autoscaling.maxReplicas=9",
        ],
    ));
    assert_eq!(arg(&scaled, "--rate-limit-replicas").as_deref(), Some("9"));

    let url = gateway(&render(
        &[],
        &[
            "gateway.rateLimits.redis.url=redis://redis.infra:6379/0",
            "gateway.rateLimits.failMode=closed",
        ],
    ));
    assert_eq!(
        arg(&url, "--rate-limit-replicas"),
        None,
        "Redis holds the whole budget"
    );
    assert_eq!(
        arg(&url, "--rate-limit-fail-mode").as_deref(),
        Some("closed")
    );
    assert_eq!(
        redis_env(&url).expect("env")["value"],
        "redis://redis.infra:6379/0"
    );
    let secret = gateway(&render(
        &[],
        &["gateway.rateLimits.redis.existingSecret=budgets"],
    ));
    assert_eq!(
        redis_env(&secret).expect("env")["valueFrom"]["secretKeyRef"],
        json!({"name": "budgets", "key": "url"})
    );

    let docs = render(&[], &["gateway.rateLimits.redis.deploy.enabled=true"]);
    assert_eq!(
        redis_env(&gateway(&docs)).expect("env")["value"],
        "redis://sluice-redis:6379"
    );
    let redis = object(&docs, "Deployment", "sluice-redis");
    let pod = &redis["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &containers(pod)[0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(container["resources"]["limits"]["memory"].is_string());
    let service = object(&docs, "Service", "sluice-redis");
    assert_eq!(
        service["spec"]["selector"],
        redis["spec"]["selector"]["matchLabels"]
    );
    let policy = object(&docs, "NetworkPolicy", "sluice-redis");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        object(&docs, "Deployment", "sluice-gateway")["spec"]["selector"]["matchLabels"]
    );

    let refused =
        template(&[], &["gateway.rateLimits.failMode=maybe"]).expect_err("an unknown fail mode");
    assert!(refused.contains("failMode"), "{refused}");
}

/// The metric names a PromQL query reads, or why it does not parse.
fn promql_metrics(query: &str) -> Result<BTreeSet<String>, String> {
    use promql_parser::parser::Expr;
    struct Names(BTreeSet<String>);
    impl promql_parser::util::ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            match expr {
                Expr::VectorSelector(vs) => self.0.extend(vs.name.clone()),
                Expr::MatrixSelector(ms) => self.0.extend(ms.vs.name.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let expr = promql_parser::parser::parse(query)?;
    let mut names = Names(BTreeSet::new());
    promql_parser::util::walk_expr(&mut names, &expr)?;
    Ok(names.0)
}

/// The Prometheus objects work together: the ServiceMonitor keeps the series' own `namespace`
/// and `endpoint` labels (`honorLabels`), every alert rule and dashboard query parses as PromQL
/// (Grafana's `$__rate_interval` read as a duration), and every monitoring series they read is
/// one the operator exports.
#[test]
fn prometheus_rules_and_dashboard_queries_parse_and_read_exported_series() {
    let docs = render(
        &[],
        &[
            "monitoring.serviceMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.grafanaDashboard.enabled=true",
        ],
    );
    let monitor = of_kind(&docs, "ServiceMonitor");
    assert_eq!(monitor.len(), 1);
    let endpoints = monitor[0]["spec"]["endpoints"]
        .as_array()
        .expect("endpoints");
    assert!(endpoints.len() >= 2, "gateway and operator: {endpoints:?}");
    for endpoint in endpoints {
        assert_eq!(endpoint["honorLabels"], true, "{endpoint}");
    }

    let mut queries = Vec::new();
    for rule in of_kind(&docs, "PrometheusRule") {
        for group in rule["spec"]["groups"].as_array().expect("groups") {
            for rule in group["rules"].as_array().expect("rules") {
                let name = rule["alert"].as_str().expect("alert").to_string();
                queries.push((name, rule["expr"].as_str().expect("expr").to_string()));
            }
        }
    }
    let dashboard_map = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|cm| cm["data"]["sluice.json"].is_string())
        .expect("the dashboard ConfigMap");
    let dashboard: Value =
        serde_json::from_str(dashboard_map["data"]["sluice.json"].as_str().unwrap())
            .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            let expr = target["expr"].as_str().expect("expr");
            queries.push((title, expr.replace("$__rate_interval", "5m")));
        }
    }
    let exported: BTreeSet<String> = sluice_operator::monitoring_metrics::Gauge::ALL
        .iter()
        .map(|gauge| format!("sluice_operator_{}", gauge.name()))
        .collect();
    let mut read = BTreeSet::new();
    for (name, query) in &queries {
        let metrics = promql_metrics(query)
            .unwrap_or_else(|e| panic!("{name}: {query:?} is not PromQL: {e}"));
        for metric in metrics {
            if metric.starts_with("sluice_operator_monitoring_") {
                assert!(
                    exported.contains(&metric),
                    "{name} reads {metric}, which the operator does not export"
                );
                read.insert(metric);
            }
        }
    }
    for wanted in [
        "sluice_operator_monitoring_alert_firing",
        "sluice_operator_monitoring_drift",
        "sluice_operator_monitoring_quality",
        "sluice_operator_monitoring_last_refresh_failed",
        "sluice_operator_monitoring_last_refresh_timestamp_seconds",
    ] {
        assert!(read.contains(wanted), "no rule or panel reads {wanted}");
    }
    // The parser refuses what Prometheus refuses.
    assert!(promql_metrics("sum by (namespace (up)").is_err());
}
