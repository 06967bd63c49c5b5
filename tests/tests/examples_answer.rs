//! Every example in `examples/` that serves a model answers real requests on the local cluster
//! with real containers. Each manifest is applied unchanged into a namespace of its own, with
//! an operator watching only that namespace. Its artifact is put where the manifest points:
//! - the claim `models` or `model-store` for `pvc://`;
//! - an S3-compatible server (moto) for `s3://`, and a GCS emulator (fake-gcs-server) for `gs://`;
//!   the address and keys are in the Secret the example names, as a user's MinIO or service
//!   account key would be.
//!
//! The operator's real data-plane image fetches and serves the artifact, and requests go
//! through the gateway. The artifacts are `examples/models/` (made by `make_models.py`), the
//! real all-MiniLM-L6-v2 (`inference-server/tests/fetch-models.sh`), and a prompt folder whose
//! chat upstream is a loopback `inference-server serve` of the tiny random Llama.
//!
//! Not here: `gpu-llm-vllm.yaml` (a vLLM engine on a GPU: engine images run no process on the
//! test kubelet); `rate-limits.yaml`, whose TinyLlama GGUF this suite does not download (its
//! policies are proven by the gateway's and capture's own tests, its rendering by
//! `operator_examples`); and `external-model.yaml`, whose providers are public services tests
//! never dial (its READY rendering is `operator_examples`'; the external-model path itself runs
//! against local provider stand-ins in `gateway_cluster` and the gateway's `external` tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use sluice_crds::ServingEndpoint;
use sluice_tests::{
    apply,
    cluster::{OperatorOptions, OperatorProcess, fresh_namespace, shared, shared_nodes},
    gateway::GatewayProcess,
    lake::{claim_folder, delete_and_drain, duckdb_row, parquet_table},
    manifests::read_documents,
    models::iris_on_claim,
    object_store::{GcsServer, S3Server},
    repo_root,
};

const IRIS: &str = r#"{"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"], "data": [[6.7, 3.0, 5.2, 2.3], [5.1, 3.5, 1.4, 0.2]]}}"#;

/// One example's namespace, with a gateway and an operator that watch only it (the operator's
/// autoscaler reads that gateway's demand, as the chart wires an installation's gateways).
struct Scene {
    client: Client,
    ns: String,
    gateway: GatewayProcess,
    _operator: OperatorProcess,
}

impl Scene {
    async fn new(prefix: &str) -> Self {
        let cp = shared();
        let client = cp.client().await.expect("client");
        let ns = fresh_namespace(&client, prefix).await;
        let gateway = GatewayProcess::start(cp, &cp.kubeconfig, &ns).await;
        let operator = cp.start_operator_with(&OperatorOptions {
            namespace: Some(ns.clone()),
            identity: Some(ns.clone()),
            args: vec!["--gateway-admin-url".into(), gateway.admin.clone()],
            ..OperatorOptions::default()
        });
        Self {
            client,
            ns,
            gateway,
            _operator: operator,
        }
    }

    fn logs(&self) -> String {
        let cp = shared();
        format!(
            "{}{}{}",
            cp.dump_logs(),
            sluice_tests::log_tail(
                &cp.state_dir.join(format!("logs/operator-{}.log", self.ns)),
                60
            ),
            shared_nodes().kubelet.dump_logs()
        )
    }

    /// The Secret `name` with `data`, as the user creates it before applying an example.
    async fn secret(&self, name: &str, data: Value) {
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .patch(
                name,
                &PatchParams::apply("test-user"),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name}, "stringData": data})),
            )
            .await
            .unwrap_or_else(|e| panic!("secret {name}: {e}"));
    }

    /// Applies `examples/<file>` unchanged and waits for endpoint `name` READY.
    async fn example(&self, file: &str, name: &str) -> &GatewayProcess {
        let params = PatchParams::apply("test-user");
        for doc in read_documents(&repo_root().join("examples").join(file)).expect("example") {
            let resource = apply::api_resource(&doc).expect("kind");
            let object = doc["metadata"]["name"].as_str().unwrap_or_default();
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(self.client.clone(), &self.ns, &resource);
            api.patch(object, &params, &Patch::Apply(&doc))
                .await
                .unwrap_or_else(|e| panic!("applying {file}: {e}"));
        }
        let endpoints: Api<ServingEndpoint> = Api::namespaced(self.client.clone(), &self.ns);
        sluice_tests::wait::eventually(
            &format!("{file}: endpoint {name} READY"),
            Duration::from_secs(180),
            || self.logs(),
            || async {
                let state = endpoints.get(name).await.ok()?.status?.state?;
                (format!("{:?}", state.ready) == "READY").then_some(())
            },
        )
        .await;
        &self.gateway
    }
}

/// What the gateway answered to one request.
struct Answer {
    status: u16,
    served_by: String,
    body: Value,
}

/// Posts `body` to `path` of endpoint `name`; retried until the answer is 200 (the first
/// request after READY may meet a gateway whose pod watch is a moment behind).
async fn post(gateway: &GatewayProcess, name: &str, path: &str, body: &Value) -> Answer {
    let http = reqwest::Client::new();
    let url = format!("{}/serving-endpoints/{name}/{path}", gateway.base);
    sluice_tests::wait::eventually(
        &format!("{name}: a 200 from {path}"),
        Duration::from_secs(150),
        || sluice_tests::log_tail(&gateway.log, 40),
        || async {
            let response = http.post(&url).json(body).send().await.ok()?;
            let status = response.status().as_u16();
            let served_by = response
                .headers()
                .get("served-model-name")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body: Value = response.json().await.ok()?;
            (status == 200).then_some(Answer {
                status,
                served_by,
                body,
            })
        },
    )
    .await
}

/// Sends `count` requests and counts the answers per serving entity; every one must be 200.
async fn split(
    gateway: &GatewayProcess,
    name: &str,
    body: &Value,
    count: usize,
) -> BTreeMap<String, usize> {
    let http = reqwest::Client::new();
    let url = format!("{}/serving-endpoints/{name}/invocations", gateway.base);
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let response = http.post(&url).json(body).send().await.expect("request");
        let served_by = response
            .headers()
            .get("served-model-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{name}: {text}");
        *seen.entry(served_by).or_insert(0) += 1;
    }
    seen
}

/// A table of `rows` with `columns`, in MLflow's `dataframe_split` shape.
fn dataframe(columns: &[&str], rows: &[[f64; 4]]) -> Value {
    json!({"dataframe_split": {"columns": columns, "data": rows}})
}

fn example_model(relative: &str) -> Vec<PathBuf> {
    let dir = repo_root().join("examples/models").join(relative);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    files
}

fn objects(prefix: &str, files: &[PathBuf]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|f| {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            (format!("{prefix}/{name}"), std::fs::read(f).expect("read"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_answers_from_its_claim() {
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let scene = Scene::new("ex-quickstart").await;
    iris_on_claim(&scene.client, &scene.ns).await;
    let gateway = scene.example("quickstart.yaml", "iris").await;
    let answer = post(
        gateway,
        "iris",
        "invocations",
        &serde_json::from_str(IRIS).unwrap(),
    )
    .await;
    assert_eq!(
        answer.body["predictions"].as_array().map(Vec::len),
        Some(2),
        "{}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_cpu_example_answers_from_s3() {
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let scene = Scene::new("ex-minimal").await;
    let s3 = S3Server::start().await;
    let iris = repo_root().join("examples/models/iris");
    s3.put_folder(
        "models",
        "iris-classifier/1",
        &[iris.join("iris.onnx"), iris.join("sluice-model.yaml")],
    )
    .await;
    scene
        .secret("model-store-credentials", s3.credentials())
        .await;
    let gateway = scene.example("minimal-cpu.yaml", "iris").await;
    let answer = post(
        gateway,
        "iris",
        "invocations",
        &serde_json::from_str(IRIS).unwrap(),
    )
    .await;
    assert_eq!(
        answer.body["predictions"].as_array().map(Vec::len),
        Some(2),
        "{}",
        answer.body
    );
}

/// ab-test.yaml: two MLflow models (onnx flavor, converted with ZipMap) from S3, split 90/10 by
/// request, answering in MLflow's shape; the
/// `served-model-name` header says which one answered, and both do.
#[tokio::test(flavor = "multi_thread")]
async fn the_ab_test_splits_mlflow_models_from_s3() {
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let scene = Scene::new("ex-ab").await;
    let s3 = S3Server::start().await;
    for version in ["3", "4"] {
        let files = example_model(&format!("fraud-detector/{version}"));
        s3.put_folder("models", &format!("fraud-detector/{version}"), &files)
            .await;
    }
    scene
        .secret("model-store-credentials", s3.credentials())
        .await;
    let gateway = scene.example("ab-test.yaml", "fraud").await;
    let request = dataframe(
        &["amount", "hour", "merchant_risk", "card_present"],
        &[[2.5, -1.0, 1.8, -1.2], [-2.0, 0.5, -1.5, 1.0]],
    );
    let answer = post(gateway, "fraud", "invocations", &request).await;
    let predictions = answer.body["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 2, "{}", answer.body);
    // Both models learnt that a large amount at a risky merchant without the card is fraud.
    // MLflow models answer as MLflow's scoring server does: a DataFrame in, records of the
    // converter's outputs out (`output_label`, and `output_probability` from its ZipMap).
    assert_eq!(
        predictions[0]["output_label"], 1,
        "a clearly fraudulent row: {}",
        answer.body
    );
    assert!(
        predictions[0]["output_probability"]["1"]
            .as_f64()
            .is_some_and(|p| p > 0.5),
        "{}",
        answer.body
    );
    assert_eq!(
        predictions[1]["output_label"], 0,
        "a clearly fine row: {}",
        answer.body
    );
    // 10 % to version-b: 200 requests miss it with probability 0.9^200 ≈ 7e-10.
    let seen = split(gateway, "fraud", &request, 200).await;
    assert_eq!(seen.values().sum::<usize>(), 200);
    assert!(
        seen.get("version-a").copied().unwrap_or(0) > seen.get("version-b").copied().unwrap_or(0)
            && seen.contains_key("version-b"),
        "answers per entity: {seen:?}"
    );
}

/// canary-alias.yaml: the entities follow the `champion` and `challenger` aliases of two ONNX
/// versions on GCS, split 95/5.
#[tokio::test(flavor = "multi_thread")]
async fn the_canary_follows_aliases_of_models_on_gcs() {
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let scene = Scene::new("ex-canary").await;
    let gcs = GcsServer::start().await;
    let mut uploads = Vec::new();
    for version in ["7", "8"] {
        uploads.extend(objects(
            &format!("churn/{version}"),
            &example_model(&format!("churn/{version}")),
        ));
    }
    gcs.put_objects("ml-artifacts", &uploads).await;
    // fake-gcs-server does not check signatures, so any key text serves as the private key.
    scene
        .secret("gcs-credentials", gcs.credentials("not-a-real-private-key"))
        .await;
    let gateway = scene.example("canary-alias.yaml", "churn").await;
    let request = dataframe(
        &[
            "tenure_months",
            "monthly_charges",
            "support_calls",
            "contract_months",
        ],
        &[[-2.0, 1.5, 2.0, -1.5], [2.0, -1.0, -1.0, 1.5]],
    );
    let answer = post(gateway, "churn", "invocations", &request).await;
    let predictions = answer.body["predictions"].as_array().expect("predictions");
    assert_eq!(
        predictions[0]["label"], 1,
        "a customer about to leave: {}",
        answer.body
    );
    assert_eq!(
        predictions[1]["label"], 0,
        "a loyal customer: {}",
        answer.body
    );
    // 5 % to the challenger: 300 requests miss it with probability 0.95^300 ≈ 2e-7.
    let seen = split(gateway, "churn", &request, 300).await;
    assert!(
        seen.contains_key("champion") && seen.contains_key("challenger"),
        "answers per entity: {seen:?}"
    );
}

/// shadow-traffic.yaml: callers get only the live ranker's answers, and the inference table on
/// the lake claim has a row per request from the live entity and shadow rows from the candidate.
#[tokio::test(flavor = "multi_thread")]
async fn shadow_traffic_answers_from_live_and_records_the_candidate() {
    const REQUESTS: usize = 40;
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let scene = Scene::new("ex-shadow").await;
    let s3 = S3Server::start().await;
    for version in ["12", "13"] {
        let files = example_model(&format!("ranker/{version}"));
        s3.put_folder("models", &format!("ranker/{version}"), &files)
            .await;
    }
    scene
        .secret("model-store-credentials", s3.credentials())
        .await;
    let gateway = scene.example("shadow-traffic.yaml", "ranker").await;
    let request = dataframe(
        &["relevance", "freshness_days", "clicks", "price"],
        &[[1.5, 0.2, 1.0, -0.3]],
    );
    post(gateway, "ranker", "invocations", &request).await;
    let seen = split(gateway, "ranker", &request, REQUESTS - 1).await;
    assert_eq!(
        seen,
        BTreeMap::from([("live".to_string(), REQUESTS - 1)]),
        "only the live entity answers callers"
    );
    // Shadow copies are sent after the answer; give the last ones a moment to be recorded.
    tokio::time::sleep(Duration::from_secs(2)).await;

    delete_and_drain(&scene.client, &scene.ns, "ranker", || scene.logs()).await;
    let folder = claim_folder(&scene.client, &scene.ns, "sluice-lake").await;
    let table = parquet_table(&folder.join("ml/ranking/ranker_payload"));
    let live = duckdb_row(&format!(
        "select count(*), count(distinct request_id), min(status_code) from {table} \
         where served_entity = 'live'"
    ));
    assert_eq!(live, format!("({REQUESTS}, {REQUESTS}, 200)"), "live rows");
    let shadow = duckdb_row(&format!(
        "select count(*), count(*) filter (where request_metadata['shadow'] is not null) \
         from {table} where served_entity = 'candidate'"
    ));
    let (count, marked) = shadow
        .trim_matches(|c| c == '(' || c == ')')
        .split_once(", ")
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
        .unwrap_or_else(|| panic!("shadow rows: {shadow}"));
    // 50 % mirrored: 40 requests give none with probability 0.5^40.
    assert!(
        (1..=REQUESTS).contains(&count) && marked == count,
        "shadow rows (count, marked as shadow): {shadow}"
    );
}

/// The tiny random Llama served by `inference-server serve` on loopback: the OpenAI-compatible
/// chat upstream the support bot's prompt fills. Killed when dropped.
struct ChatUpstream {
    _child: tokio::process::Child,
    base: String,
}

impl ChatUpstream {
    async fn start(dir: &Path) -> Self {
        let model = sluice_tests::tiny_llm::Model::random(7);
        sluice_tests::tiny_llm::write_model_dir(dir, "safetensors", "llm/v1/chat", &model);
        // Port 0: serve announces what it bound on stdout (a file beside the model folder).
        let output = dir.with_extension("stdout");
        let child = tokio::process::Command::new(sluice_tests::binaries::built(
            "inference-server",
            "inference-server",
        ))
        .args(["serve", "--model-dir"])
        .arg(dir)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdout(std::fs::File::create(&output).unwrap_or_else(|e| panic!("stdout file: {e}")))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting the chat upstream: {e}"));
        let addr =
            sluice_tests::process::announced(&output, &["serve"], Duration::from_secs(30)).await[0];
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        sluice_tests::wait::eventually(
            "the chat upstream healthy",
            Duration::from_secs(60),
            String::new,
            || async {
                let r = http.get(format!("{base}/health")).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
        Self {
            _child: child,
            base: format!("{base}/v1"),
        }
    }
}

/// Writes the support bot's prompt folder bound to `upstream`, packed as
/// `<dir>/support-bot-2.tar.gz`, and returns the archive.
fn prompt_archive(dir: &Path, upstream: &str) -> PathBuf {
    let folder = dir.join("support-bot");
    std::fs::create_dir_all(&folder).expect("prompt folder");
    std::fs::write(
        folder.join("sluice-model.yaml"),
        format!(
            "format: prompt\ntask: llm/v1/chat\nprompt:\n  system: \"You are a support agent. Answer briefly.\"\n  template: \"Customer question: {{{{input}}}}\"\n  upstream: {{url: \"{upstream}\", model: tiny-llama}}\n"
        ),
    )
    .expect("manifest");
    let archive = dir.join("support-bot-2.tar.gz");
    let packed = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&folder)
        .arg("sluice-model.yaml")
        .status()
        .expect("tar");
    assert!(packed.success());
    archive
}

/// auto-capture.yaml: a prompt model from an archive on S3, answering chats through its
/// upstream; 10 % of exchanges become rows on the lake claim, which DuckDB reads back.
#[tokio::test(flavor = "multi_thread")]
async fn the_auto_capture_example_chats_and_its_rows_are_read_by_duckdb() {
    const REQUESTS: usize = 120;
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let scene = Scene::new("ex-capture").await;
    let work = shared().state_dir.join(format!(
        "ex-capture-{}",
        sluice_tests::cluster::random_suffix()
    ));
    std::fs::create_dir_all(work.join("llm")).expect("work dir");
    let upstream = ChatUpstream::start(&work.join("llm")).await;
    let archive = prompt_archive(&work, &upstream.base);
    let s3 = S3Server::start().await;
    s3.put_folder("models", "prompts", &[archive]).await;
    scene
        .secret("model-store-credentials", s3.credentials())
        .await;
    let gateway = scene.example("auto-capture.yaml", "support-bot").await;

    let chat = json!({"messages": [{"role": "user", "content": "Where is my order?"}],
                      "max_tokens": 8, "temperature": 0});
    let answer = post(gateway, "support-bot", "invocations", &chat).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.served_by, "support-bot-v2");
    assert_eq!(answer.body["object"], "chat.completion", "{}", answer.body);
    let seen = split(gateway, "support-bot", &chat, REQUESTS - 1).await;
    assert_eq!(seen.values().sum::<usize>(), REQUESTS - 1);

    delete_and_drain(&scene.client, &scene.ns, "support-bot", || scene.logs()).await;
    let folder = claim_folder(&scene.client, &scene.ns, "sluice-lake").await;
    let table = parquet_table(&folder.join("ml/support/support_bot_payload"));
    let row = duckdb_row(&format!(
        "select count(*), count(distinct request_id), min(status_code), max(status_code), \
         count(*) filter (where response like '%chat.completion%' \
                          and request like '%Where is my order?%'), \
         min(sampling_fraction) from {table}"
    ));
    let fields: Vec<&str> = row
        .trim_matches(|c| c == '(' || c == ')')
        .split(", ")
        .collect();
    let rows: usize = fields[0].parse().unwrap_or(0);
    // 10 % of 120: no row at all has probability 0.9^120 ≈ 3e-6; more than 60 is as unlikely.
    assert!((1..=60).contains(&rows), "sampled rows: {row}");
    assert_eq!(
        fields[1..],
        [
            rows.to_string().as_str(),
            "200",
            "200",
            rows.to_string().as_str(),
            "0.1"
        ],
        "rows: {row}"
    );
}

/// scale-to-zero.yaml: the real all-MiniLM-L6-v2 from the claim `model-store` answers
/// embeddings; with the idle timeout lowered, the entity goes to zero pods, and the next
/// request is held while a pod wakes, then answered.
#[tokio::test(flavor = "multi_thread")]
async fn the_scale_to_zero_example_embeds_and_wakes_from_zero() {
    let _logs = shared_nodes().kubelet.logs_on_panic();
    let cache = std::env::var_os("SLUICE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice/models")
        })
        .join("all-minilm-l6-v2");
    assert!(
        cache.join("model.safetensors").is_file(),
        "{} missing: run inference-server/tests/fetch-models.sh (`bash .ci/setup` does)",
        cache.display()
    );
    let scene = Scene::new("ex-zero").await;
    let folder =
        sluice_tests::pvc::bound_claim(&scene.client, &scene.ns, "model-store", "ReadWriteMany")
            .await;
    copy_tree(&cache, &folder.join("all-minilm-l6-v2"));
    let gateway = scene.example("scale-to-zero.yaml", "embeddings").await;
    let texts = json!({"input": ["A man is eating food.", "A man is eating a piece of bread."]});
    let answer = post(gateway, "embeddings", "invocations", &texts).await;
    let vectors: Vec<Vec<f64>> = answer.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", answer.body))
        .iter()
        .map(|item| {
            item["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .filter_map(Value::as_f64)
                .collect()
        })
        .collect();
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].len(), 384, "all-MiniLM-L6-v2 has 384 dimensions");
    // sentence-transformers gives 0.7553 for this pair (its semantic search example).
    let cosine: f64 = vectors[0].iter().zip(&vectors[1]).map(|(a, b)| a * b).sum();
    assert!((cosine - 0.7553).abs() < 0.01, "cosine {cosine}");

    // The example idles for 5 minutes; the test lowers that to 10 s to see the wake.
    Api::<ServingEndpoint>::namespaced(scene.client.clone(), &scene.ns)
        .patch(
            "embeddings",
            &PatchParams::apply("test-user").force(),
            &Patch::Apply(json!({"apiVersion": "serving.sluice.dev/v1alpha1",
                "kind": "ServingEndpoint", "metadata": {"name": "embeddings"},
                "spec": {"servedEntities": [{"name": "minilm", "model": "minilm-embedder",
                    "version": 1, "scaleToZeroEnabled": true, "workloadSize": "Small",
                    "autoscaling": {"idleTimeoutSeconds": 10, "maxHeldRequests": 100,
                                    "holdTimeoutSeconds": 120}}]}})),
        )
        .await
        .expect("lowering the idle timeout");
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.ns);
    sluice_tests::wait::eventually(
        "the embeddings entity at zero pods",
        Duration::from_secs(150),
        || scene.logs(),
        || async {
            let left = pods
                .list(&ListParams::default().labels("serving.sluice.dev/endpoint=embeddings"))
                .await
                .ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await;
    let woken = post(gateway, "embeddings", "invocations", &texts).await;
    assert_eq!(
        woken.body["data"].as_array().map(Vec::len),
        Some(2),
        "{}",
        woken.body
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", path.display()));
        }
    }
}
