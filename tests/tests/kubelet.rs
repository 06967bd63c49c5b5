//! The test kubelet on the real control plane: the real scheduler places pods on its CPU and GPU
//! nodes, and it runs them as real containers (podman, runc) on their own loopback addresses,
//! with their images pulled from the loopback registry and their security contexts enforced.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Event, Node, Pod, Secret, Taint},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use sluice_tests::{
    cluster::{LocalNodes, fresh_namespace, images, random_suffix, shared, shared_nodes},
    http,
    kubelet::{Kubelet, KubeletConfig, NodeConfig},
    wait::on_cluster,
};

/// How long a pod step usually may take. On timeout the wait prints the control plane's logs
/// and each test's `logs_on_panic` guard the kubelet's journal and container logs.
const WAIT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (&'static LocalNodes, Client, String) {
    let nodes = shared_nodes();
    let client = shared().client().await.expect("client");
    let ns = fresh_namespace(&client, prefix).await;
    (nodes, client, ns)
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn processes_in(nodes: &LocalNodes, ns: &str) -> usize {
    nodes
        .kubelet
        .running_processes()
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ns}/")))
        .count()
}

async fn create<K>(client: &Client, ns: &str, value: Value) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).expect("object");
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .expect("create")
}

#[tokio::test(flavor = "multi_thread")]
async fn inference_server_replicas_run_as_containers_on_their_own_pod_ips() {
    let (nodes, client, ns) = setup("deploy").await;
    let _logs = nodes.kubelet.logs_on_panic();
    // A real model: the iris ONNX classifier, handed to the pods as a ConfigMap volume.
    let onnx =
        std::fs::read(sluice_tests::repo_root().join("inference-server/tests/fixtures/iris.onnx"))
            .expect("iris.onnx");
    let manifest = "format: onnx\ntask: predict\nfiles: {model: iris.onnx}\n";
    let _: ConfigMap = create(
        &client,
        &ns,
        json!({
            "metadata": {"name": "iris"},
            "data": {"sluice-model.yaml": manifest},
            "binaryData": {"iris.onnx": k8s_openapi::ByteString(onnx)}
        }),
    )
    .await;
    let labels = json!({"app": "web"});
    let _: Deployment = create(&client, &ns, json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                "name": "model", "image": images::inference_server(),
                "args": ["serve", "--model-dir", "/models", "--host", "$(POD_IP)", "--port", "8080"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 5},
                "volumeMounts": [{"name": "model", "mountPath": "/models", "readOnly": true}]
            }], "volumes": [{"name": "model", "configMap": {"name": "iris"}}]}
        }}
    })).await;
    let _: k8s_openapi::api::core::v1::Service = create(&client, &ns, json!({
        "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}
    })).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ips: BTreeSet<String> = on_cluster("two ready pods", WAIT, || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let ready: BTreeSet<String> = list
            .items
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        (ready.len() == 2).then_some(ready)
    })
    .await;
    for ip in &ips {
        assert!(
            ip.starts_with("127.") && ip != "127.0.0.1",
            "pod IPs are their own loopback addresses: {ip}"
        );
        let body = r#"{"inputs": [[5.1, 3.5, 1.4, 0.2]]}"#;
        let (code, answer) = http::post_json(ip, 8080, "/invocations", body)
            .await
            .unwrap_or_else(|| panic!("nothing answers on {ip}:8080"));
        assert_eq!(code, 200, "{answer}");
        assert!(answer.contains("predictions"), "{answer}");
    }
    assert_eq!(processes_in(nodes, &ns), 2);

    // The real API server refuses loopback addresses in EndpointSlices ("may not be in the
    // loopback range"), so the EndpointSlice controller cannot publish these pods; it says so on
    // the Service. Sluice's gateway therefore discovers ready pods from Pods (status.podIP and
    // the Ready condition). This test pins that behaviour so a change in it is noticed.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let refusal = on_cluster(
        "the EndpointSlice controller's report on the Service",
        WAIT,
        || async {
            let list = events
                .list(
                    &ListParams::default()
                        .fields("involvedObject.kind=Service,involvedObject.name=web"),
                )
                .await
                .ok()?;
            list.items
                .into_iter()
                .filter_map(|e| e.message)
                .find(|m| m.contains("loopback"))
        },
    )
    .await;
    assert!(
        refusal.contains("may not be in the loopback range"),
        "{refusal}"
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let listed: BTreeSet<String> = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .expect("slices")
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    assert!(
        listed.is_empty(),
        "no loopback address can be stored in an EndpointSlice: {listed:?}"
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect("scale to 0");
    on_cluster(
        "processes stopped and pods removed after scaling to 0",
        WAIT,
        || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0 && processes_in(nodes, &ns) == 0).then_some(())
        },
    )
    .await;
    for ip in &ips {
        assert!(
            http::get(ip, 8080, "/ping").await.is_none(),
            "{ip} still answers after scale to 0"
        );
    }

    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale to 1");
    on_cluster("one process again", WAIT, || async {
        (processes_in(nodes, &ns) == 1).then_some(())
    })
    .await;
    deployments
        .delete("web", &DeleteParams::foreground())
        .await
        .expect("delete");
    on_cluster(
        "no process left after deleting the Deployment",
        WAIT,
        || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0 && processes_in(nodes, &ns) == 0).then_some(())
        },
    )
    .await;
}

fn sleeper(name: &str, resources: Value, tolerate_gpu: bool) -> Value {
    let tolerations = if tolerate_gpu {
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "tolerations": tolerations, "containers": [{
            "name": "main", "image": images::tools(), "command": ["/bin/sh", "-c", "sleep 300"], "resources": resources
        }]}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_places_gpu_pods_on_the_gpu_node_only() {
    let (nodes, client, ns) = setup("gpu").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let gpu = json!({"limits": {"nvidia.com/gpu": "1"}});
    let _: Pod = create(&client, &ns, sleeper("wants-gpu", gpu, true)).await;
    let _: Pod = create(&client, &ns, sleeper("cpu-only", json!({}), false)).await;
    let _: Pod = create(
        &client,
        &ns,
        sleeper(
            "too-many-gpus",
            json!({"limits": {"nvidia.com/gpu": "8"}}),
            true,
        ),
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let node_of = |name: &'static str| {
        let pods = pods.clone();
        async move { pods.get(name).await.ok()?.spec?.node_name }
    };
    let on = on_cluster("the GPU pod to be bound", WAIT, || node_of("wants-gpu")).await;
    assert_eq!(on, nodes.gpu_node);
    let on = on_cluster("the CPU pod to be bound", WAIT, || node_of("cpu-only")).await;
    assert_eq!(
        on, nodes.cpu_node,
        "a pod without the GPU toleration never lands on the tainted GPU node"
    );

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let message = on_cluster(
        "FailedScheduling for the pod asking for 8 GPUs",
        WAIT,
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=too-many-gpus"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
                .and_then(|e| e.message)
        },
    )
    .await;
    assert!(message.contains("nvidia.com/gpu"), "{message}");
    let pending = pods.get("too-many-gpus").await.expect("pod");
    assert!(pending.spec.and_then(|s| s.node_name).is_none());
    assert_eq!(
        pending.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_exits_is_restarted_and_counted() {
    let (nodes, client, ns) = setup("restart").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "main", "image": images::tools(), "command": ["/bin/sh", "-c", "echo started; exit 3"]}]}
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = on_cluster("two restarts", WAIT, || async {
        let s = pods.get("crasher").await.ok()?.status?;
        let c = s.container_statuses.as_ref()?.first()?.clone();
        (c.restart_count >= 2).then_some(c)
    })
    .await;
    let last = status
        .last_state
        .and_then(|s| s.terminated)
        .expect("last termination recorded");
    assert_eq!(last.exit_code, 3);
    let log = log_of(nodes, &ns, "crasher", "main");
    assert!(log.matches("started").count() >= 2, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_volumes_and_the_service_account_token_are_what_kubernetes_gives() {
    let (nodes, client, ns) = setup("env").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let _: ConfigMap = create(&client, &ns, json!({"metadata": {"name": "cfg"}, "data": {"mode": "fast", "file.txt": "from-configmap"}})).await;
    let _: Secret = create(
        &client,
        &ns,
        json!({"metadata": {"name": "sec"}, "stringData": {"token": "s3cret"}}),
    )
    .await;
    let script = r#"
import json, os, ssl, sys, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
names = ["POD_NAME", "POD_IP", "POD_UID", "NS", "NODE", "SA_NAME", "HOST_IP", "TEAM", "SECRET", "MODE",
         "CFG_mode", "GREETING", "MEM_MI", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"]
out = {k: os.environ.get(k) for k in names}
out["service_links"] = sorted(k for k in os.environ if k.endswith("_SERVICE_HOST"))
out["argv"] = sys.argv[1:]
out["cwd"] = os.getcwd()
out["cm_file"] = open("/config/cfg/file.txt").read()
out["cm_item"] = open("/config/items/renamed/mode.txt").read()
out["sub_path"] = open("/config/app.conf").read()
out["secret_file"] = open("/secrets/sec/token").read()
out["labels"] = open("/podinfo/labels").read()
out["namespace"] = open(sa + "/namespace").read()
try:
    open("/config/cfg/new", "w")
    out["cm_writable"] = True
except OSError:
    out["cm_writable"] = False
open("scratch.txt", "w").write("kept")
out["scratch"] = open("/scratch/scratch.txt").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request("https://%s:%s/api" % (os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]),
                             headers={"Authorization": "Bearer " + open(sa + "/token").read()})
out["api_status"] = urllib.request.urlopen(req, context=ctx).status
print("RESULT " + json.dumps(out), flush=True)
"#;
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "inspect", "labels": {"team": "ml"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": images::tools(), "command": ["python3"],
            "args": ["-c", script, "$(POD_NAME)-arg", "$$(POD_NAME)"],
            "workingDir": "/scratch",
            "resources": {"limits": {"memory": "256Mi"}},
            "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "cfg"}}],
            "env": [
                field("POD_NAME", "metadata.name"),
                field("POD_IP", "status.podIP"),
                field("POD_UID", "metadata.uid"),
                field("NS", "metadata.namespace"),
                field("NODE", "spec.nodeName"),
                field("SA_NAME", "spec.serviceAccountName"),
                field("HOST_IP", "status.hostIP"),
                field("TEAM", "metadata.labels['team']"),
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "GREETING", "value": "hello $(POD_NAME) $$(POD_NAME)"},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}
            ],
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/config/cfg", "readOnly": true},
                {"name": "items", "mountPath": "/config/items"},
                {"name": "cfg", "mountPath": "/config/app.conf", "subPath": "file.txt"},
                {"name": "sec", "mountPath": "/secrets/sec", "readOnly": true},
                {"name": "podinfo", "mountPath": "/podinfo"},
                {"name": "scratch", "mountPath": "/scratch"}
            ]
        }],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "items", "configMap": {"name": "cfg", "items": [{"key": "mode", "path": "renamed/mode.txt"}]}},
            {"name": "sec", "secret": {"secretName": "sec"}},
            {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels['team']"}}]}},
            {"name": "scratch", "emptyDir": {}}
        ]}
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    on_cluster("the inspecting pod to succeed", WAIT, || async {
        let phase = pods.get("inspect").await.ok()?.status?.phase?;
        (phase == "Succeeded").then_some(())
    })
    .await;
    let log = log_of(nodes, &ns, "inspect", "main");
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no result in log:\n{log}"));
    let got: Value = serde_json::from_str(line).expect("json");
    let pod = pods.get("inspect").await.expect("pod");
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod ip");
    let status = pod.status.clone().unwrap_or_default();
    let listed: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .collect();
    assert_eq!(listed, std::slice::from_ref(&ip), "podIPs");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    let conditions: BTreeMap<String, String> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    assert_eq!(
        conditions.get("PodScheduled").map(String::as_str),
        Some("True"),
        "the scheduler's condition stays: {conditions:?}"
    );
    assert_eq!(
        conditions.get("Initialized").map(String::as_str),
        Some("True"),
        "{conditions:?}"
    );
    assert_eq!(
        conditions.get("Ready").map(String::as_str),
        Some("False"),
        "a completed pod is not ready: {conditions:?}"
    );
    assert_eq!(got["POD_NAME"], "inspect");
    assert_eq!(got["POD_IP"], ip.as_str());
    assert_eq!(
        got["POD_UID"],
        pod.metadata.uid.as_deref().unwrap_or_default()
    );
    assert_eq!(got["NS"], ns.as_str());
    assert_eq!(got["NODE"], nodes.cpu_node.as_str());
    assert_eq!(got["SA_NAME"], "default");
    assert_eq!(got["HOST_IP"], "127.0.0.1");
    assert_eq!(got["TEAM"], "ml");
    assert_eq!(got["SECRET"], "s3cret");
    assert_eq!(got["MODE"], "fast");
    assert_eq!(got["CFG_mode"], "fast", "envFrom with a prefix");
    assert_eq!(
        got["GREETING"], "hello inspect $(POD_NAME)",
        "$(VAR) expansion"
    );
    assert_eq!(got["MEM_MI"], "256", "resourceFieldRef with a divisor");
    assert_eq!(got["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
    assert_eq!(
        got["KUBERNETES_SERVICE_PORT"],
        shared().apiserver_port().to_string().as_str()
    );
    assert_eq!(
        got["service_links"],
        json!(["KUBERNETES_SERVICE_HOST"]),
        "no Service links but the API server's"
    );
    assert_eq!(got["argv"], json!(["inspect-arg", "$(POD_NAME)"]));
    assert_eq!(got["cwd"], "/scratch");
    assert_eq!(got["cm_file"], "from-configmap");
    assert_eq!(got["cm_item"], "fast", "configMap items");
    assert_eq!(got["sub_path"], "from-configmap", "subPath of a configMap");
    assert_eq!(got["cm_writable"], false, "configMap volumes are read-only");
    assert_eq!(got["scratch"], "kept");
    assert_eq!(got["secret_file"], "s3cret");
    assert_eq!(got["labels"], "ml");
    assert_eq!(got["namespace"], ns.as_str());
    assert_eq!(
        got["api_status"], 200,
        "the projected service-account token authenticates"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_waits_for_the_configmaps_and_secrets_it_needs() {
    let (nodes, client, ns) = setup("late").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "patient"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": images::tools(),
            "command": ["/bin/sh", "-c", "echo \"$TOKEN $(cat /late/word)\""],
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}],
            "volumeMounts": [{"name": "late", "mountPath": "/late"}]
        }], "volumes": [{"name": "late", "configMap": {"name": "late"}}]}
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let waiting = |reason: &'static str| {
        let pods = pods.clone();
        async move {
            let s = pods.get("patient").await.ok()?.status?;
            let w = s.container_statuses?.first()?.state.clone()?.waiting?;
            (w.reason.as_deref() == Some(reason)).then(|| w.message.unwrap_or_default())
        }
    };
    let message = on_cluster("ContainerCreating for the missing ConfigMap", WAIT, || {
        waiting("ContainerCreating")
    })
    .await;
    assert!(
        message.contains("configmap \"late\" not found"),
        "{message}"
    );
    let _: ConfigMap = create(
        &client,
        &ns,
        json!({"metadata": {"name": "late"}, "data": {"word": "world"}}),
    )
    .await;
    let message = on_cluster(
        "CreateContainerConfigError for the missing Secret",
        WAIT,
        || waiting("CreateContainerConfigError"),
    )
    .await;
    assert!(message.contains("secret \"late\" not found"), "{message}");
    let _: Secret = create(
        &client,
        &ns,
        json!({"metadata": {"name": "late"}, "stringData": {"token": "hello"}}),
    )
    .await;
    on_cluster("the pod to run once both exist", WAIT, || async {
        (pods.get("patient").await.ok()?.status?.phase? == "Succeeded").then_some(())
    })
    .await;
    let log = log_of(nodes, &ns, "patient", "main");
    assert_eq!(log.trim(), "hello world");
}

#[tokio::test(flavor = "multi_thread")]
async fn init_containers_run_in_order_and_foreign_images_run_without_a_process() {
    let (nodes, client, ns) = setup("init").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "ordered"},
        "spec": {"restartPolicy": "Never",
            "initContainers": [
                {"name": "one", "image": images::tools(), "command": ["/bin/sh", "-c", "echo one >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "two", "image": images::tools(), "command": ["/bin/sh", "-c", "echo two >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
            ],
            "containers": [{"name": "main", "image": images::tools(), "command": ["/bin/sh", "-c", "echo main >> /work/order; cat /work/order"],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "volumes": [{"name": "work", "emptyDir": {}}]}
    })).await;
    let _: Pod = create(
        &client,
        &ns,
        json!({
            "metadata": {"name": "engine"},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}]}
        }),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    on_cluster("the ordered pod to succeed", WAIT, || async {
        (pods.get("ordered").await.ok()?.status?.phase? == "Succeeded").then_some(())
    })
    .await;
    let log = log_of(nodes, &ns, "ordered", "main");
    assert_eq!(log.lines().collect::<Vec<_>>(), ["one", "two", "main"]);

    let engine = on_cluster("the engine pod to be Running and Ready", WAIT, || async {
        let p = pods.get("engine").await.ok()?;
        (pod_ready(&p) && p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    assert!(engine.status.and_then(|s| s.pod_ip).is_some());
    assert!(
        !nodes
            .kubelet
            .running_processes()
            .iter()
            .any(|(k, _)| k.starts_with(&format!("{ns}/engine/"))),
        "a foreign image runs no process"
    );
}

/// A shell loop that reports SIGTERM (or, with `ignore`, ignores it) and otherwise runs forever.
fn term_script(ignore: bool) -> &'static str {
    if ignore {
        "trap '' TERM; echo up; while :; do sleep 0.2; done"
    } else {
        "trap 'echo got SIGTERM; exit 0' TERM; echo up; while :; do sleep 0.2; done"
    }
}

fn shell_pod(name: &str, script: &str, grace: u32) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": grace, "containers": [{
            "name": "main", "image": images::tools(), "command": ["/bin/sh", "-c", script]
        }]}
    })
}

/// Whether a process is still alive (present and not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

fn pid_of(kubelet: &Kubelet, key: &str) -> Option<u32> {
    kubelet
        .running_processes()
        .into_iter()
        .find_map(|(k, pid)| (k == key).then_some(pid))
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_sends_sigterm_and_sigkill_after_the_grace_period() {
    let (nodes, client, ns) = setup("term").await;
    let _logs = nodes.kubelet.logs_on_panic();
    // 60 s of grace that the polite pod does not need: it exits on SIGTERM.
    let _: Pod = create(&client, &ns, shell_pod("polite", term_script(false), 60)).await;
    // 2 s of grace for a pod that ignores SIGTERM: SIGKILL ends it.
    let _: Pod = create(&client, &ns, shell_pod("stubborn", term_script(true), 2)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut pids = Vec::new();
    for name in ["polite", "stubborn"] {
        let key = format!("{ns}/{name}/main");
        let pid = on_cluster("the process to run", WAIT, || async {
            let log = nodes.kubelet.container_log(&ns, name, "main")?;
            log.contains("up")
                .then(|| pid_of(&nodes.kubelet, &key))
                .flatten()
        })
        .await;
        pids.push(pid);
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    on_cluster(
        "both pod objects removed",
        Duration::from_secs(30),
        || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0).then_some(())
        },
    )
    .await;
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived its pod");
    }
    assert_eq!(processes_in(nodes, &ns), 0);
    let polite = log_of(nodes, &ns, "polite", "main");
    assert!(polite.contains("got SIGTERM"), "{polite}");
    let stubborn = log_of(nodes, &ns, "stubborn", "main");
    assert!(!stubborn.contains("got SIGTERM"), "{stubborn}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_runs_the_prestop_sleep_and_stops_sidecars_after_the_main_containers() {
    let (nodes, client, ns) = setup("prestop").await;
    let _logs = nodes.kubelet.logs_on_panic();
    // Each container prints when it got SIGTERM (and the main one when it exits), in ns
    // (busybox's `date` has no `%N`).
    let stamp = |name: &str| {
        format!(
            "now() {{ python3 -c 'import time; print(time.time_ns())'; }}; \
             trap 'echo {name}-term $(now); sleep 0.3; echo {name}-exit $(now); exit 0' TERM; \
             echo up; while :; do sleep 0.1; done"
        )
    };
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "ordered"},
        "spec": {"terminationGracePeriodSeconds": 30,
            "initContainers": [{"name": "front", "image": images::tools(), "restartPolicy": "Always",
                                "command": ["/bin/sh", "-c", stamp("front")]}],
            "containers": [{"name": "model", "image": images::tools(),
                            "command": ["/bin/sh", "-c", stamp("model")],
                            "lifecycle": {"preStop": {"sleep": {"seconds": 2}}}}]}
    }))
    .await;
    for container in ["front", "model"] {
        on_cluster(&format!("{container} to run"), WAIT, || async {
            let log = nodes.kubelet.container_log(&ns, "ordered", container)?;
            log.contains("up").then_some(())
        })
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deleted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    pods.delete("ordered", &DeleteParams::default())
        .await
        .expect("delete");
    on_cluster("the pod object removed", WAIT, || async {
        let left = pods.list(&ListParams::default()).await.ok()?.items.len();
        (left == 0).then_some(())
    })
    .await;
    let at = |container: &str, event: &str| -> u128 {
        let log = log_of(nodes, &ns, "ordered", container);
        log.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{container}-{event} "))?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {container}-{event} in {log}"))
    };
    let (model_term, model_exit, front_term) = (
        at("model", "term"),
        at("model", "exit"),
        at("front", "term"),
    );
    assert!(
        model_term >= deleted + 1_900_000_000,
        "the model got SIGTERM {} ms after the deletion, before its 2 s preStop sleep ended",
        (model_term - deleted.min(model_term)) / 1_000_000
    );
    assert!(
        front_term >= model_exit,
        "the sidecar got SIGTERM before the main container exited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_drive_readiness_and_restarts() {
    let (nodes, client, ns) = setup("probes").await;
    let _logs = nodes.kubelet.logs_on_panic();
    // Serves /srv: `ready` appears after 5 s, `alive` disappears 4 s later.
    let script = r#"cd /srv; rm -f ready; touch alive
( sleep 5; touch ready; sleep 4; rm alive ) &
exec python3 -m http.server --bind "$POD_IP" 8080"#;
    let probe = |path: &str, failures: u32| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": 1, "failureThreshold": failures});
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "probed"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "web", "image": images::tools(), "command": ["/bin/sh", "-c", script],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "startupProbe": probe("/alive", 30),
            "readinessProbe": probe("/ready", 1),
            "livenessProbe": probe("/alive", 2),
            "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]
        }], "volumes": [{"name": "srv", "emptyDir": {}}]}
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let state = || async {
        let pod = pods.get("probed").await.ok()?;
        let c = pod
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .clone();
        Some((pod, c))
    };
    on_cluster("running, started, not yet ready", WAIT, || async {
        let (pod, c) = state().await?;
        let running = c.state.as_ref()?.running.is_some();
        (running && c.started == Some(true) && !c.ready && !pod_ready(&pod)).then_some(())
    })
    .await;
    on_cluster("ready once /ready exists", WAIT, || async {
        let (pod, c) = state().await?;
        (c.ready && pod_ready(&pod)).then_some(())
    })
    .await;
    let restarted = on_cluster("a liveness restart once /alive is gone", WAIT, || async {
        let (_, c) = state().await?;
        (c.restart_count >= 1).then_some(c)
    })
    .await;
    let last = restarted
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_ne!(last.exit_code, 0, "killed by the kubelet: {last:?}");
    on_cluster("ready again after the restart", WAIT, || async {
        let (pod, c) = state().await?;
        (c.ready && pod_ready(&pod) && c.state?.running.is_some()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_policies_decide_what_runs_again_and_the_phase() {
    let (nodes, client, ns) = setup("policy").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let pod = |name: &str, policy: &str, script: &str, init: Option<&str>| {
        let init: Vec<Value> = init
            .map(|s| json!({"name": "init", "image": images::tools(), "command": ["/bin/sh", "-c", s]}))
            .into_iter()
            .collect();
        json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": policy, "initContainers": init, "containers": [{
                "name": "main", "image": images::tools(), "command": ["/bin/sh", "-c", script]
            }]}
        })
    };
    let _: Pod = create(
        &client,
        &ns,
        pod("done", "OnFailure", "echo ran; exit 0", None),
    )
    .await;
    let _: Pod = create(
        &client,
        &ns,
        pod("failed", "Never", "echo ran; exit 3", None),
    )
    .await;
    let _: Pod = create(
        &client,
        &ns,
        pod("bad-init", "Never", "echo ran", Some("exit 1")),
    )
    .await;
    // OnFailure retries a failing init container (it fails once: its emptyDir remembers), then
    // runs the main one.
    let retry = "if [ -e /state/tried ]; then exit 0; fi; touch /state/tried; exit 1";
    let mut retried = pod("retried", "OnFailure", "echo ran", Some(retry));
    retried["spec"]["initContainers"][0]["volumeMounts"] =
        json!([{"name": "state", "mountPath": "/state"}]);
    retried["spec"]["volumes"] = json!([{"name": "state", "emptyDir": {}}]);
    let _: Pod = create(&client, &ns, retried).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, phase) in [
        ("done", "Succeeded"),
        ("failed", "Failed"),
        ("bad-init", "Failed"),
        ("retried", "Succeeded"),
    ] {
        let status = on_cluster(&format!("{name} to be {phase}"), WAIT, || async {
            let s = pods.get(name).await.ok()?.status?;
            (s.phase.as_deref() == Some(phase)).then_some(s)
        })
        .await;
        let main = status.container_statuses.unwrap_or_default().remove(0);
        assert_eq!(main.restart_count, 0, "{name}: {main:?}");
        let ran = nodes.kubelet.container_log(&ns, name, "main").is_some();
        assert_eq!(ran, name != "bad-init", "{name}: the main container ran?");
        if name == "retried" {
            let init = status.init_container_statuses.unwrap_or_default().remove(0);
            assert_eq!(init.restart_count, 1, "{init:?}");
        }
    }
}

/// A kubelet of its own with one tainted node, for tests that stop it.
async fn extra_kubelet(client: &Client, name: &str, ip_base: u8) -> Kubelet {
    let cp = shared();
    let mut config = KubeletConfig::standard(name, cp.state_dir.join(name), cp.apiserver_port());
    let mut node = NodeConfig::cpu(name);
    node.taints.push(Taint {
        key: "sluice.dev/extra".into(),
        value: Some(name.into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    });
    config.nodes = vec![node];
    config.ip_base = ip_base;
    config.provision_volumes = false;
    Kubelet::start(client.clone(), config)
        .await
        .expect("extra kubelet")
}

/// A pod pinned to `node` that reports SIGTERM.
fn pinned(name: &str, node: &str) -> Value {
    let mut pod = shell_pod(name, term_script(false), 30);
    pod["spec"]["nodeName"] = json!(node);
    pod["spec"]["tolerations"] = json!([{"key": "sluice.dev/extra", "operator": "Exists"}]);
    pod
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_and_drop_leave_no_process_behind() {
    let (nodes, client, ns) = setup("stop").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let suffix = random_suffix();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let node_api: Api<Node> = Api::all(client.clone());
    for (i, how) in ["shutdown", "drop"].into_iter().enumerate() {
        let name = format!("extra-{how}-{suffix}");
        let kubelet = extra_kubelet(&client, &name, 11 + u8::try_from(i).unwrap_or(0)).await;
        let _logs = kubelet.logs_on_panic();
        let _: Pod = create(&client, &ns, pinned(how, &name)).await;
        let key = format!("{ns}/{how}/main");
        let pid = on_cluster(
            &format!("the pod on the {how} kubelet to run"),
            WAIT,
            || async {
                let log = kubelet.container_log(&ns, how, "main")?;
                log.contains("up").then(|| pid_of(&kubelet, &key)).flatten()
            },
        )
        .await;
        let ip = pods
            .get(how)
            .await
            .ok()
            .and_then(|p| p.status?.pod_ip)
            .unwrap_or_default();
        assert!(ip.starts_with(&format!("127.{}.", 11 + i)), "{ip}");
        let log = kubelet.state_dir().join("pods");
        drop(_logs);
        if how == "shutdown" {
            kubelet.shutdown().await;
        } else {
            drop(kubelet);
        }
        on_cluster(
            &format!("the process gone after {how}"),
            Duration::from_secs(20),
            || async { (!alive(pid)).then_some(()) },
        )
        .await;
        if how == "shutdown" {
            // Shutdown is graceful: the container saw SIGTERM.
            let logs: String = std::fs::read_dir(&log)
                .expect("pod folders")
                .flatten()
                .filter_map(|d| std::fs::read_to_string(d.path().join("main.log")).ok())
                .collect();
            assert!(logs.contains("got SIGTERM"), "{logs}");
        }
        node_api
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete node");
    }
}

/// The status of container `name` of pod `pod`, once `check` accepts it.
async fn container_status<F>(
    pods: &Api<Pod>,
    pod: &str,
    name: &str,
    what: &str,
    check: F,
) -> k8s_openapi::api::core::v1::ContainerStatus
where
    F: Fn(&k8s_openapi::api::core::v1::ContainerStatus) -> bool,
{
    on_cluster(what, Duration::from_secs(90), || async {
        let p = pods.get(pod).await.ok()?;
        p.status?
            .container_statuses?
            .into_iter()
            .find(|c| c.name == name && check(c))
    })
    .await
}

/// The whole log of a container (empty when it never ran).
fn log_of(nodes: &LocalNodes, ns: &str, pod: &str, container: &str) -> String {
    nodes
        .kubelet
        .container_log(ns, pod, container)
        .unwrap_or_default()
}

/// The message of container `main` of `pod` once it waits with `reason`.
async fn waiting_message(pods: &Api<Pod>, pod: &str, reason: &str) -> String {
    let c = container_status(pods, pod, "main", reason, |c| {
        waiting_reason(c).as_deref() == Some(reason)
    })
    .await;
    c.state
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default()
}

fn waiting_reason(c: &k8s_openapi::api::core::v1::ContainerStatus) -> Option<String> {
    c.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_see_only_their_image_and_volumes_under_their_security_context() {
    let (nodes, client, ns) = setup("secctx").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let host_path = sluice_tests::repo_root().display().to_string();
    let script = format!(
        "echo uid=$(id -u) groups=$(id -G); \
         if [ -e '{host_path}' ]; then echo host=visible; else echo host=hidden; fi; \
         if touch /outside 2>/dev/null; then echo root=writable; else echo root=read-only; fi; \
         touch /work/file && echo work=writable group=$(stat -c %g /work/file); \
         grep -E '^(NoNewPrivs|CapEff)' /proc/self/status | tr -d '\\t' | tr ':' '='"
    );
    let restricted = json!({
        "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
    });
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "restricted"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 2000},
            "containers": [
                {"name": "inspect", "image": images::tools(), "command": ["/bin/sh", "-c", script],
                 "securityContext": restricted,
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "writer", "image": images::tools(), "command": ["/bin/sh", "-c", "echo data > /data.txt"],
                 "securityContext": restricted}
            ],
            "volumes": [{"name": "work", "emptyDir": {}}]
        }
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let writer = container_status(&pods, "restricted", "writer", "the writer to end", |c| {
        c.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some()
    })
    .await;
    let ended = writer.state.and_then(|s| s.terminated).expect("terminated");
    assert_ne!(ended.exit_code, 0, "writing to a read-only root fails");
    let log = log_of(nodes, &ns, "restricted", "writer");
    assert!(log.contains("Read-only file system"), "{log}");
    container_status(
        &pods,
        "restricted",
        "inspect",
        "the inspector to end",
        |c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some()
        },
    )
    .await;
    let log = log_of(nodes, &ns, "restricted", "inspect");
    for want in [
        "uid=65532 groups=65532 2000",
        "host=hidden",
        "root=read-only",
        "work=writable group=2000",
        "NoNewPrivs=1",
        "CapEff=0000000000000000",
    ] {
        assert!(log.contains(want), "{want:?} not in:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_as_non_root_refuses_a_root_image() {
    let (nodes, client, ns) = setup("nonroot").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let _: Pod = create(
        &client,
        &ns,
        json!({
            "metadata": {"name": "rooted"},
            "spec": {"securityContext": {"runAsNonRoot": true}, "containers": [{
                "name": "main", "image": images::tools(), "command": ["/bin/sh", "-c", "sleep 300"]
            }]}
        }),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let message = waiting_message(&pods, "rooted", "CreateContainerConfigError").await;
    assert!(
        message.contains("container has runAsNonRoot and image will run as root"),
        "{message}"
    );
    assert_eq!(processes_in(nodes, &ns), 0, "nothing started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_oom_killed_and_restarted() {
    let (nodes, client, ns) = setup("oom").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "hog"},
        "spec": {"containers": [{
            "name": "main", "image": images::tools(), "command": ["python3", "-c"],
            "args": ["print('allocating', flush=True); b = bytearray(512 * 1024 * 1024); print('survived')"],
            "resources": {"limits": {"memory": "64Mi"}}
        }]}
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let c = container_status(&pods, "hog", "main", "an OOMKilled restart", |c| {
        c.restart_count >= 1
            && c.last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
    })
    .await;
    let last = c.last_state.and_then(|s| s.terminated).expect("terminated");
    assert_eq!(last.exit_code, 137);
    let log = log_of(nodes, &ns, "hog", "main");
    assert!(!log.contains("survived"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misspelled_image_backs_off_pulling_with_the_registry_message() {
    let (nodes, client, ns) = setup("pull").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let good = sluice_tests::images::tools();
    let wrong = format!("{}s@{}", good.repository, good.digest);
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "typo"},
        "spec": {"containers": [{"name": "main", "image": wrong, "command": ["/bin/sh", "-c", "sleep 300"]}]}
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let message = waiting_message(&pods, "typo", "ImagePullBackOff").await;
    assert!(message.contains(&wrong), "{message}");
    assert!(message.to_lowercase().contains("unknown"), "{message}");
    assert_eq!(processes_in(nodes, &ns), 0, "nothing started");
}

#[tokio::test(flavor = "multi_thread")]
async fn termination_messages_come_from_the_file_or_the_log_tail() {
    let (nodes, client, ns) = setup("termmsg").await;
    let _logs = nodes.kubelet.logs_on_panic();
    let script = |s: &str| vec!["/bin/sh".to_string(), "-c".into(), s.into()];
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "ends"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 65532, "runAsNonRoot": true},
            "containers": [
                {"name": "file", "image": images::tools(),
                 "command": script("echo noise; echo 'bad artifact' > /dev/termination-log; exit 3"),
                 "securityContext": {"readOnlyRootFilesystem": true}},
                {"name": "custom-path", "image": images::tools(),
                 "terminationMessagePath": "/tmp/why",
                 "command": script("echo 'from a custom path' > /tmp/why; exit 0")},
                {"name": "fallback", "image": images::tools(),
                 "terminationMessagePolicy": "FallbackToLogsOnError",
                 "command": script("echo first; echo 'the last line' >&2; exit 2")},
                {"name": "fallback-ok", "image": images::tools(),
                 "terminationMessagePolicy": "FallbackToLogsOnError",
                 "command": script("echo 'not a message'; exit 0")}
            ]
        }
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ended = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let c = container_status(&pods, "ends", name, "a terminated state", |c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some()
            })
            .await;
            c.state.and_then(|s| s.terminated).expect("terminated")
        }
    };
    let file = ended("file").await;
    assert_eq!(
        (file.exit_code, file.message.as_deref()),
        (3, Some("bad artifact\n"))
    );
    let custom = ended("custom-path").await;
    assert_eq!(custom.message.as_deref(), Some("from a custom path\n"));
    let fallback = ended("fallback").await;
    let message = fallback.message.unwrap_or_default();
    assert!(message.ends_with("the last line"), "{message:?}");
    assert_eq!(
        ended("fallback-ok").await.message,
        None,
        "a success keeps no log tail"
    );
}
