//! Failures a user must see in the endpoint's status within seconds, with real containers on
//! the test kubelet: a fetch that fails (the init container's termination message), an image
//! that cannot be pulled, a GPU request no node can hold (the scheduler's message), and a model
//! server that crash-loops; each in the entity's state, the Ready condition and a Warning
//! event. Past the operator's progress deadline, a failing update is `UPDATE_FAILED` while
//! the previous config keeps serving. Fields this version does not act on keep an endpoint
//! from READY and say so.

mod operator_support;

use std::time::Instant;

use k8s_openapi::api::core::v1::Event;
use kube::{Api, api::ListParams};
use operator_support::{Scene, condition, endpoint};
use serde_json::{Value, json};
use sluice_crds::{ServedEntityState, ServingEndpointStatus};
use sluice_tests::{models, pvc};

/// Real data-plane image; a short progress deadline so a failing update gives up in the test.
const CONFIG: &str = "progressDeadlineSeconds: 20\n";

fn version(name: &str, model: &str, v: i64, uri: &str) -> Value {
    json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
           "metadata": {"name": name},
           "spec": {"model": model, "version": v, "source": {"uri": uri}, "format": "onnx"}})
}

/// Every entity state of `status`, pending config first.
fn entity_states(status: &ServingEndpointStatus) -> Vec<ServedEntityState> {
    status
        .pending_config
        .iter()
        .chain(status.config.iter())
        .flat_map(|c| c.served_entities.iter())
        .filter_map(|e| e.state.clone())
        .collect()
}

fn ready_message(status: &ServingEndpointStatus) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

impl Scene {
    /// Waits until an entity of `endpoint` fails with one of `reasons` and a message holding
    /// `needle`; returns that state and prints how long it took from `since`.
    async fn failing(
        &self,
        endpoint: &str,
        reasons: &[&str],
        needle: &str,
        since: Instant,
    ) -> (ServedEntityState, ServingEndpointStatus) {
        let api = self.endpoints();
        let found = self
            .eventually(&format!("{endpoint}: {reasons:?} with {needle:?}"), || {
                let api = api.clone();
                async move {
                    let status = api.get(endpoint).await.ok()?.status?;
                    let state = entity_states(&status).into_iter().find(|s| {
                        s.reason.as_deref().is_some_and(|r| reasons.contains(&r))
                            && s.deployment_state_message
                                .as_deref()
                                .is_some_and(|m| m.contains(needle))
                    })?;
                    Some((state, status))
                }
            })
            .await;
        eprintln!(
            "{endpoint}: {:?} in status after {:.1}s",
            found.0.reason,
            since.elapsed().as_secs_f64()
        );
        found
    }

    /// Waits for a Warning event on `endpoint` whose note holds `needle`.
    async fn warned(&self, endpoint: &str, needle: &str) -> Event {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        self.eventually(
            &format!("a Warning event on {endpoint} with {needle:?}"),
            || {
                let events = events.clone();
                async move {
                    let list = events.list(&ListParams::default()).await.ok()?;
                    list.items.into_iter().find(|e| {
                        e.involved_object.name.as_deref() == Some(endpoint)
                            && e.type_.as_deref() == Some("Warning")
                            && e.message.as_deref().is_some_and(|m| m.contains(needle))
                    })
                }
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_error_shows_in_status_and_events_within_seconds() {
    let scene = Scene::with_config("fail-fetch", true, CONFIG).await;
    let iris = models::iris_on_claim(&scene.client, &scene.ns).await;
    // The source is there (its check passes) but is not the artifact the digest names.
    let mut wrong = version("iris-1", "iris", 1, &iris);
    wrong["spec"]["source"]["sha256"] = json!("0".repeat(64));
    scene.apply(wrong).await;
    let started = Instant::now();
    scene
        .apply(endpoint(
            "iris",
            vec![json!({"name": "main", "model": "iris", "version": 1})],
            &[],
        ))
        .await;
    let (state, status) = scene
        .failing(
            "iris",
            &["CrashLoopBackOff", "Error"],
            "SHA-256 mismatch",
            started,
        )
        .await;
    let message = state.deployment_state_message.unwrap_or_default();
    assert!(
        message.contains("init container fetch exited with code 1"),
        "{message}"
    );
    assert!(
        message.contains(&format!("expected {}", "0".repeat(64))),
        "the fetch step's own error: {message}"
    );
    let ready = ready_message(&status);
    assert!(
        ready.contains("entity main") && ready.contains("SHA-256 mismatch"),
        "{ready}"
    );
    let event = scene.warned("iris", "SHA-256 mismatch").await;
    assert!(
        matches!(event.reason.as_deref(), Some("CrashLoopBackOff" | "Error")),
        "{event:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_check_job_reports_each_version_before_any_pod() {
    let scene = Scene::with_config("source-check", true, CONFIG).await;
    let iris = models::iris_on_claim(&scene.client, &scene.ns).await;
    scene.apply(version("iris-1", "iris", 1, &iris)).await;
    scene
        .apply(version("iris-2", "iris", 2, "pvc://models/nowhere"))
        .await;
    let api = scene.versions();
    let condition_of = |name: &'static str, status: &'static str| {
        let api = api.clone();
        async move {
            let mv = api.get(name).await.ok()?;
            mv.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "SourceReachable" && c.status == status)
        }
    };
    let reachable = scene
        .eventually("iris-1 SourceReachable=True", || {
            condition_of("iris-1", "True")
        })
        .await;
    assert_eq!(
        reachable.message, "pvc://models/iris: readable, 2 objects, 929 B",
        "what the check found"
    );
    let unreachable = scene
        .eventually("iris-2 SourceReachable=False", || {
            condition_of("iris-2", "False")
        })
        .await;
    assert!(
        unreachable
            .message
            .contains("/mnt/pvc/models/nowhere does not exist"),
        "{}",
        unreachable.message
    );
    let mv = api.get("iris-2").await.expect("iris-2");
    let ready = condition(&mv.status.expect("status").conditions, "Ready");
    assert_eq!(ready, Some(("False".into(), "SourceUnreachable".into())));
    assert!(
        scene.pods_of("anything").await.is_empty(),
        "no endpoint, no entity pod: the check ran on its own"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_cannot_be_pulled_and_a_gpu_no_node_has_say_why() {
    let scene = Scene::with_config("fail-place", true, CONFIG).await;
    // A model that fetches, so the pod gets as far as pulling the model container's image.
    let iris = models::iris_on_claim(&scene.client, &scene.ns).await;
    scene.apply(version("any-1", "any", 1, &iris)).await;
    let image = sluice_tests::images::tools();
    let misspelled = format!("{}-typo@{}", image.repository, image.digest);
    let started = Instant::now();
    scene
        .apply(endpoint(
            "typo",
            vec![json!({"name": "main", "model": "any", "version": 1,
                        "runtime": {"engine": "custom", "image": misspelled, "port": 8080,
                                    "healthPath": "/health"}})],
            &[],
        ))
        .await;
    scene
        .apply(endpoint(
            "huge",
            vec![json!({"name": "main", "model": "any", "version": 1,
                        "workloadType": "GPU_XLARGE_8"})],
            &[],
        ))
        .await;
    let (pulled, _) = scene
        .failing(
            "typo",
            &["ErrImagePull", "ImagePullBackOff"],
            &misspelled,
            started,
        )
        .await;
    assert!(
        pulled
            .deployment_state_message
            .as_deref()
            .is_some_and(|m| m.contains("container model")),
        "{pulled:?}"
    );
    let (placed, status) = scene
        .failing("huge", &["Unschedulable"], "nvidia.com/gpu", started)
        .await;
    let message = placed.deployment_state_message.unwrap_or_default();
    assert!(
        message.contains("nodes are available"),
        "the scheduler's words: {message}"
    );
    assert!(ready_message(&status).contains("Unschedulable"));
    scene.warned("huge", "nvidia.com/gpu").await;
    scene.warned("typo", &misspelled).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_update_fails_at_the_deadline_while_the_old_config_serves() {
    let scene = Scene::with_config("fail-crash", true, CONFIG).await;
    let iris = models::iris_on_claim(&scene.client, &scene.ns).await;
    // Same claim: bound_claim keeps it and returns its folder.
    let folder = pvc::bound_claim(&scene.client, &scene.ns, models::CLAIM, "ReadWriteMany").await;
    let broken = folder.join("broken");
    std::fs::create_dir_all(&broken).expect("broken model folder");
    std::fs::write(broken.join("sluice-model.yaml"), "format: [onnx\n").expect("manifest");
    scene.apply(version("iris-1", "iris", 1, &iris)).await;
    scene
        .apply(version("iris-2", "iris", 2, "pvc://models/broken"))
        .await;
    let spec = |v: i64| {
        endpoint(
            "iris",
            vec![json!({"name": "main", "model": "iris", "version": v})],
            &[],
        )
    };
    scene.apply(spec(1)).await;
    scene.settled("iris", "iris v1 READY", |_| true).await;

    let started = Instant::now();
    scene.apply(spec(2)).await;
    let (crashing, status) = scene
        .failing(
            "iris",
            &["CrashLoopBackOff", "Error"],
            "sluice-model.yaml",
            started,
        )
        .await;
    let message = crashing.deployment_state_message.unwrap_or_default();
    assert!(
        message.contains("container model exited with code"),
        "{message}"
    );
    assert_eq!(
        condition(&status.conditions, "Ready")
            .map(|c| c.0)
            .as_deref(),
        Some("True"),
        "version 1 keeps serving while version 2 fails"
    );
    let updating = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Updating")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(updating.contains("sluice-model.yaml"), "{updating}");

    let api = scene.endpoints();
    let failed = scene
        .eventually("UPDATE_FAILED after the progress deadline", || {
            let api = api.clone();
            async move {
                let s = api.get("iris").await.ok()?.status?;
                let update = s.state.as_ref()?.config_update;
                (format!("{update:?}") == "UPDATE_FAILED").then_some(s)
            }
        })
        .await;
    eprintln!(
        "UPDATE_FAILED after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let served: Vec<_> = failed
        .config
        .iter()
        .flat_map(|c| c.served_entities.iter().map(|e| e.version))
        .collect();
    assert_eq!(served, vec![Some(1)], "the old config still serves");
    assert_eq!(
        format!("{:?}", failed.state.map(|s| s.ready)),
        "Some(READY)"
    );
    scene
        .warned("iris", "a pending entity failed to deploy")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fields_this_version_ignores_keep_an_endpoint_from_ready() {
    let scene = Scene::new("unsupported", false).await;
    scene
        .apply(version("any-1", "any", 1, "s3://models/any/1"))
        .await;
    let mut limited = endpoint(
        "limited",
        vec![json!({"name": "main", "model": "any", "version": 1,
                    "runtime": {"engine": "vllm"}})],
        &[],
    );
    limited["spec"]["aiGateway"] = json!({
        "rateLimits": [{"calls": 10, "key": "endpoint", "renewalPeriod": "minute"}],
        "guardrails": {"output": {"validTopics": ["secret"]}},
    });
    scene.apply(limited).await;
    let api = scene.endpoints();
    let status = scene
        .eventually("Ready=False FieldNotSupported", || {
            let api = api.clone();
            async move {
                let s = api.get("limited").await.ok()?.status?;
                (condition(&s.conditions, "Supported")?
                    == ("False".into(), "FieldNotSupported".into()))
                    .then_some(s)
            }
        })
        .await;
    assert_eq!(
        condition(&status.conditions, "Ready"),
        Some(("False".into(), "FieldNotSupported".into()))
    );
    let message = ready_message(&status);
    assert!(message.contains("spec.aiGateway.guardrails"), "{message}");
    assert!(
        !message.contains("rateLimits"),
        "rate limits act: {message}"
    );
    scene.warned("limited", "spec.aiGateway.guardrails").await;
}

/// A child the API server refuses (here a real ValidatingAdmissionPolicy that freezes
/// Deployments in the namespace, as a platform team's policy would) is reported on the
/// endpoint: `Applied=False` with the policy's message, and a Warning event.
#[tokio::test(flavor = "multi_thread")]
async fn a_child_the_api_server_refuses_is_reported_on_the_endpoint() {
    use kube::api::{DeleteParams, DynamicObject, PostParams};
    let scene = Scene::new("refused", false).await;
    let policy_name = format!("freeze-{}", scene.ns);
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                     "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
                 "validations": [{"expression": "false",
                                  "message": "Deployments are frozen in this namespace"}]}});
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name},
        "spec": {"policyName": policy_name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels":
                     {"kubernetes.io/metadata.name": scene.ns}}}}});
    let mut created = Vec::new();
    for doc in [policy, binding] {
        let resource = sluice_tests::apply::api_resource(&doc).expect("known kind");
        let api: Api<DynamicObject> = Api::all_with(scene.client.clone(), &resource);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(doc).expect("object"),
        )
        .await
        .expect("creating the policy");
        created.push(api);
    }
    // The policy is in force once a plain Deployment is refused.
    let deployments = scene.deployments();
    let probe: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "example.invalid/c"}]}}}}))
    .expect("deployment");
    scene
        .eventually("the policy to refuse Deployments", || async {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            deployments.create(&dry, &probe).await.err().map(drop)
        })
        .await;

    scene
        .apply(version("any-1", "any", 1, "s3://models/any/1"))
        .await;
    scene
        .apply(endpoint(
            "frozen",
            vec![json!({"name": "main", "model": "any", "version": 1,
                        "runtime": {"engine": "vllm"}})],
            &[],
        ))
        .await;
    let api = scene.endpoints();
    let applied = scene
        .eventually("Applied=False on the endpoint", || async {
            let status = api.get("frozen").await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Applied" && c.status == "False")
        })
        .await;
    assert_eq!(applied.reason, "ApplyFailed");
    assert!(
        applied
            .message
            .contains("Deployments are frozen in this namespace"),
        "{}",
        applied.message
    );
    scene.warned("frozen", "Deployments are frozen").await;
    for api in created {
        let _ = api.delete(&policy_name, &DeleteParams::default()).await;
    }
}
