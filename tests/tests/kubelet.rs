//! The test kubelet on the real control plane: the real scheduler places pods on its CPU and GPU
//! nodes, and it runs them as local processes on their own loopback addresses.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Event, Pod, Secret},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use sluice_tests::{
    cluster::{LocalNodes, fresh_namespace, images, shared, shared_nodes},
    http,
};

/// Polls `check` until it yields, or fails the test with the kubelet's container logs.
async fn eventually<T, Fut>(
    nodes: &LocalNodes,
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}\n{}",
                nodes.kubelet.dump_logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

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
async fn inference_server_replicas_run_as_processes_on_their_own_pod_ips() {
    let (nodes, client, ns) = setup("deploy").await;
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
                "name": "model", "image": format!("{}:test", images::INFERENCE_SERVER),
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
    let ips: BTreeSet<String> = eventually(nodes, "two ready pods", 60, || async {
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
    let refusal = eventually(
        nodes,
        "the EndpointSlice controller's report on the Service",
        60,
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
    eventually(
        nodes,
        "processes stopped and pods removed after scaling to 0",
        60,
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
    eventually(nodes, "one process again", 60, || async {
        (processes_in(nodes, &ns) == 1).then_some(())
    })
    .await;
    deployments
        .delete("web", &DeleteParams::foreground())
        .await
        .expect("delete");
    eventually(
        nodes,
        "no process left after deleting the Deployment",
        60,
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
            "name": "main", "image": images::SHELL, "command": ["/bin/sh", "-c", "sleep 300"], "resources": resources
        }]}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_places_gpu_pods_on_the_gpu_node_only() {
    let (nodes, client, ns) = setup("gpu").await;
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
    let on = eventually(nodes, "the GPU pod to be bound", 60, || {
        node_of("wants-gpu")
    })
    .await;
    assert_eq!(on, nodes.gpu_node);
    let on = eventually(nodes, "the CPU pod to be bound", 60, || node_of("cpu-only")).await;
    assert_eq!(
        on, nodes.cpu_node,
        "a pod without the GPU toleration never lands on the tainted GPU node"
    );

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let message = eventually(
        nodes,
        "FailedScheduling for the pod asking for 8 GPUs",
        60,
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
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "main", "image": images::SHELL, "command": ["/bin/sh", "-c", "echo started; exit 3"]}]}
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = eventually(nodes, "two restarts", 60, || async {
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
    let log = nodes
        .kubelet
        .container_log(&ns, "crasher", "main")
        .unwrap_or_default();
    assert!(log.matches("started").count() >= 2, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_volumes_and_the_service_account_token_are_what_kubernetes_gives() {
    let (nodes, client, ns) = setup("env").await;
    let _: ConfigMap = create(&client, &ns, json!({"metadata": {"name": "cfg"}, "data": {"mode": "fast", "file.txt": "from-configmap"}})).await;
    let _: Secret = create(
        &client,
        &ns,
        json!({"metadata": {"name": "sec"}, "stringData": {"token": "s3cret"}}),
    )
    .await;
    let script = r#"
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
out = {k: os.environ.get(k) for k in ["POD_NAME", "POD_IP", "NODE", "SECRET", "MODE", "KUBERNETES_SERVICE_HOST"]}
out["cm_file"] = open("/etc/cfg/file.txt").read()
out["secret_file"] = open("/etc/sec/token").read()
out["labels"] = open("/etc/podinfo/labels").read()
out["namespace"] = open(sa + "/namespace").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request("https://%s:%s/api" % (os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]),
                             headers={"Authorization": "Bearer " + open(sa + "/token").read()})
out["api_status"] = urllib.request.urlopen(req, context=ctx).status
print("RESULT " + json.dumps(out), flush=True)
"#;
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "inspect", "labels": {"team": "ml"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": images::PYTHON, "args": ["-c", script],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}
            ],
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
                {"name": "sec", "mountPath": "/etc/sec", "readOnly": true},
                {"name": "podinfo", "mountPath": "/etc/podinfo"}
            ]
        }],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec"}},
            {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels['team']"}}]}}
        ]}
    })).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    eventually(nodes, "the inspecting pod to succeed", 60, || async {
        let phase = pods.get("inspect").await.ok()?.status?.phase?;
        (phase == "Succeeded").then_some(())
    })
    .await;
    let log = nodes
        .kubelet
        .container_log(&ns, "inspect", "main")
        .unwrap_or_default();
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no result in log:\n{log}"));
    let got: Value = serde_json::from_str(line).expect("json");
    let ip = pods
        .get("inspect")
        .await
        .expect("pod")
        .status
        .and_then(|s| s.pod_ip)
        .expect("pod ip");
    assert_eq!(got["POD_NAME"], "inspect");
    assert_eq!(got["POD_IP"], ip.as_str());
    assert_eq!(got["NODE"], nodes.cpu_node.as_str());
    assert_eq!(got["SECRET"], "s3cret");
    assert_eq!(got["MODE"], "fast");
    assert_eq!(got["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
    assert_eq!(got["cm_file"], "from-configmap");
    assert_eq!(got["secret_file"], "s3cret");
    assert_eq!(got["labels"], "ml");
    assert_eq!(got["namespace"], ns.as_str());
    assert_eq!(
        got["api_status"], 200,
        "the projected service-account token authenticates"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn init_containers_run_in_order_and_foreign_images_run_without_a_process() {
    let (nodes, client, ns) = setup("init").await;
    let _: Pod = create(&client, &ns, json!({
        "metadata": {"name": "ordered"},
        "spec": {"restartPolicy": "Never",
            "initContainers": [
                {"name": "one", "image": images::SHELL, "command": ["/bin/sh", "-c", "echo one >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "two", "image": images::SHELL, "command": ["/bin/sh", "-c", "echo two >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
            ],
            "containers": [{"name": "main", "image": images::SHELL, "command": ["/bin/sh", "-c", "echo main >> /work/order; cat /work/order"],
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
    eventually(nodes, "the ordered pod to succeed", 60, || async {
        (pods.get("ordered").await.ok()?.status?.phase? == "Succeeded").then_some(())
    })
    .await;
    let log = nodes
        .kubelet
        .container_log(&ns, "ordered", "main")
        .unwrap_or_default();
    assert_eq!(log.lines().collect::<Vec<_>>(), ["one", "two", "main"]);

    let engine = eventually(
        nodes,
        "the engine pod to be Running and Ready",
        60,
        || async {
            let p = pods.get("engine").await.ok()?;
            (pod_ready(&p) && p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        },
    )
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
