//! Auto-capture with the chart's default lake on the local cluster with real containers: the
//! capture sidecar's root filesystem is read-only, so the inference table lands on the claim
//! the operator creates (`pvc://sluice-lake`, the operator's default `lakeRoot`), and every
//! request sent through the gateway is a row that DuckDB reads back from that volume once the
//! pods are gone (the sidecars drain their spool on SIGTERM), each row naming the caller the
//! gateway verified (a ServiceAccount token checked with the real API server, or an anonymous
//! caller RBAC lets in, held to the endpoint's rate limit), never the identity headers a client
//! sent; and a Delta table on an object
//! store, with the endpoint's own Secret and store options, read back by `deltalake`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use sluice_crds::{ModelVersion, ServingEndpoint};
use sluice_tests::{
    cluster::{fresh_namespace, shared, shared_nodes},
    gateway::GatewayProcess,
    lake::{claim_folder, delete_and_drain, duckdb_row, parquet_table},
    models::{iris_on_claim, iris_version_1},
    object_store::S3Server,
    rbac, venv_tool,
};

const REQUESTS: usize = 25;

#[tokio::test(flavor = "multi_thread")]
async fn captured_rows_land_on_the_default_lake_claim_and_duckdb_reads_them() {
    let nodes = shared_nodes();
    let cp = shared();
    let _logs = nodes.kubelet.logs_on_panic();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "capture").await;
    // The operator's own defaults: no lakeRoot configured.
    let operator = cp.start_operator();
    let logs = || format!("{}{}", cp.dump_logs(), nodes.kubelet.dump_logs());

    iris_version_1(&client, &ns).await;
    let apply = PatchParams::apply("test-user");
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    endpoints
        .patch(
            "iris",
            &apply,
            &Patch::Apply(json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
                "metadata": {"name": "iris"},
                "spec": {"servedEntities": [{"name": "v1", "model": "iris", "version": 1}],
                         "autoCapture": {"enabled": true, "catalogName": "ml", "schemaName": "prod"},
                         // Enforced by the gateway and the sidecars, so the endpoint is
                         // READY with them.
                         "aiGateway": {"rateLimits": [{"calls": 1, "key": "user",
                             "principal": "system:anonymous", "renewalPeriod": "minute"}],
                             "usageTracking": {"enabled": true}}}})),
        )
        .await
        .expect("endpoint");
    let table = sluice_tests::wait::eventually(
        "the endpoint READY",
        Duration::from_secs(180),
        logs,
        || async {
            let status = endpoints.get("iris").await.ok()?.status?;
            let ready = format!("{:?}", status.state?.ready) == "READY";
            let config = status.config?;
            ready.then_some((
                config.auto_capture?.table_uri,
                config.usage_tracking?.table_uri,
            ))
        },
    )
    .await;
    assert_eq!(
        table,
        (
            "pvc://sluice-lake/ml/prod/iris_payload".to_string(),
            "pvc://sluice-lake/ml/prod/iris_usage".to_string()
        )
    );

    // The claim is the operator's, with no owner: the table outlives the endpoint.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim = claims.get("sluice-lake").await.expect("the lake claim");
    assert!(claim.metadata.owner_references.is_none());

    // Callers are checked (no --allow-anonymous), each decision asked afresh: a ServiceAccount
    // that may `query` iris, and then anonymous callers once RBAC lets them.
    let gateway =
        GatewayProcess::start_with(cp, &cp.kubeconfig, &ns, &["--auth-cache-ttl", "0s"]).await;
    let token = query_token(&client, &ns, "caller", "iris").await;
    let http = reqwest::Client::new();
    let url = format!("{}/serving-endpoints/iris/invocations", gateway.base);
    let send = |token: Option<String>, i: usize| {
        let body = format!(
            r#"{{"inputs": [[6.7, 3.0, 5.2, {}]]}}"#,
            2.0 + i as f64 / 100.0
        );
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            // A caller's claims about who it is never reach the table.
            .header("x-sluice-requester", "mallory")
            .header("x-forwarded-user", "mallory")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("request").status().as_u16() }
    };
    for i in 0..REQUESTS {
        assert_eq!(send(Some(token.clone()), i).await, 200);
    }
    assert_eq!(send(None, 0).await, 401, "anonymous callers are not let in");
    open_to_anonymous(&client, &ns, "iris").await;
    // Both anonymous calls in one budget window (1 call a minute for system:anonymous).
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if second >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
    assert_eq!(
        send(None, 0).await,
        200,
        "RBAC lets anonymous callers query iris"
    );
    assert_eq!(
        send(None, 1).await,
        429,
        "the rate limit of the spec holds in cluster mode"
    );

    // Deleting the endpoint stops its pods; each capture sidecar writes what it spooled.
    delete_and_drain(&client, &ns, "iris", logs).await;
    drop(operator);

    let folder = claim_folder(&client, &ns, "sluice-lake").await;
    let table = parquet_table(&folder.join("ml/prod/iris_payload"));
    assert_eq!(
        duckdb_row(&format!(
            "select count(*), count(distinct request_id) from {table}"
        )),
        format!("({0}, {0})", REQUESTS + 1),
        "rows in {}",
        folder.display()
    );
    assert_eq!(
        duckdb_row(&format!(
            "select string_agg(requester || '=' || n, ' ' order by requester) \
             from (select requester, count(*) as n from {table} group by requester)"
        )),
        format!("('system:anonymous=1 system:serviceaccount:{ns}:caller={REQUESTS}',)"),
        "each row names the verified caller, never the header a client sent"
    );
    // The usage table beside it: a row per request that reached the model (the 401 and the
    // 429 did not), by the verified caller, with its latency and status.
    let usage = parquet_table(&folder.join("ml/prod/iris_usage"));
    assert_eq!(
        duckdb_row(&format!(
            "select string_agg(requester || '=' || n, ' ' order by requester) from \
             (select requester, count(*) as n from {usage} \
              where status_code = 200 and sampled and execution_time_ms >= 0 \
                and endpoint_name = 'iris' and served_entity_name = 'v1' \
              group by requester)"
        )),
        format!("('system:anonymous=1 system:serviceaccount:{ns}:caller={REQUESTS}',)"),
        "usage rows in {}",
        folder.display()
    );
}

/// An external entity of a recording endpoint gets a recorder, a real container on the test
/// kubelet: the capture sidecar alone (`--record-only`), one replica, under the entity's labels.
/// The endpoint is READY once it is; each call the gateway makes to the provider (the
/// Anthropic stand-in) becomes a payload row and a usage row with the provider's token counts
/// on the default lake claim, read by DuckDB after the recorder drained.
#[tokio::test(flavor = "multi_thread")]
async fn an_external_entitys_calls_land_on_the_lake_through_its_recorder() {
    const KEY: &str = "sk-ant-cluster-recorded-4c3b2a19";
    let nodes = shared_nodes();
    let cp = shared();
    let _logs = nodes.kubelet.logs_on_panic();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "recorder").await;
    let operator = cp.start_operator();
    let logs = || format!("{}{}", cp.dump_logs(), nodes.kubelet.dump_logs());
    let providers = sluice_tests::providers::Providers::start(KEY).await;
    let apply = PatchParams::apply("test-user");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "anthropic",
            &apply,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "anthropic"}, "stringData": {"api-key": KEY}})),
        )
        .await
        .expect("secret");
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    endpoints
        .patch(
            "assistant",
            &apply,
            &Patch::Apply(json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
                "metadata": {"name": "assistant"},
                "spec": {"servedEntities": [{"name": "claude", "externalModel": {
                            "provider": "anthropic", "name": "claude-haiku-4-5", "task": "llm/v1/chat",
                            "apiBase": format!("http://{}/anthropic", providers.addr),
                            "apiKeySecretRef": {"name": "anthropic", "key": "api-key"}}}],
                         "autoCapture": {"enabled": true, "catalogName": "ml", "schemaName": "chat"},
                         "aiGateway": {"usageTracking": {"enabled": true}}}})),
        )
        .await
        .expect("endpoint");
    let recorder = sluice_tests::wait::eventually(
        "the endpoint READY with its recorder",
        Duration::from_secs(180),
        logs,
        || async {
            let status = endpoints.get("assistant").await.ok()?.status?;
            let ready = format!("{:?}", status.state?.ready) == "READY";
            let entity = status.config?.served_entities.into_iter().next()?;
            ready.then_some(entity.deployment_name?)
        },
    )
    .await;
    let deployment = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
        .get(&recorder)
        .await
        .expect("the recorder's Deployment");
    let pod = deployment.spec.template.spec.expect("pod");
    assert_eq!(pod.containers.len(), 1, "the capture sidecar alone");
    let args = pod.containers[0].args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--record-only") && !args.contains("--upstream"),
        "{args}"
    );

    let gateway = GatewayProcess::start(cp, &cp.kubeconfig, &ns).await;
    let http = reqwest::Client::new();
    let url = format!("{}/serving-endpoints/v1/chat/completions", gateway.base);
    for stream in [false, true, false] {
        let response = http
            .post(&url)
            .json(&json!({"model": "assistant", "stream": stream,
                          "messages": [{"role": "user", "content": "Hello"}]}))
            .send()
            .await
            .expect("call");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("answer");
    }
    // Deleting the endpoint stops the recorder, which writes what it spooled.
    delete_and_drain(&client, &ns, "assistant", logs).await;
    drop(operator);
    let folder = claim_folder(&client, &ns, "sluice-lake").await;
    let table = parquet_table(&folder.join("ml/chat/assistant_payload"));
    assert_eq!(
        duckdb_row(&format!(
            "select count(*), count(*) filter (where request_metadata['provider'] = 'anthropic' \
             and served_entity = 'claude' and model = 'claude-haiku-4-5'), \
             count(*) filter (where request like '%{KEY}%' or response like '%{KEY}%') from {table}"
        )),
        "(3, 3, 0)",
        "rows in {}",
        folder.display()
    );
    let usage = parquet_table(&folder.join("ml/chat/assistant_usage"));
    assert_eq!(
        duckdb_row(&format!(
            "select count(*), sum(input_token_count), sum(output_token_count) from {usage}"
        )),
        // Two whole answers (2095 in, 503 out) and a stream (25 in, 15 out).
        "(3, 4215, 1021)",
        "usage rows in {}",
        folder.display()
    );
}

/// A ServiceAccount `account` in `ns` that may `query` the endpoint `endpoint` only, and a
/// token of it from the TokenRequest API.
async fn query_token(client: &kube::Client, ns: &str, account: &str, endpoint: &str) -> String {
    rbac::account_token(
        client,
        ns,
        account,
        rbac::on_endpoints(&["query"], &[endpoint]),
    )
    .await
}

/// Lets callers without credentials (the group `system:unauthenticated`) query `endpoint`.
async fn open_to_anonymous(client: &kube::Client, ns: &str, endpoint: &str) {
    rbac::grant(
        client,
        ns,
        &format!("{endpoint}-anonymous"),
        rbac::on_endpoints(&["query"], &[endpoint]),
        json!({"kind": "Group", "name": "system:unauthenticated",
               "apiGroup": "rbac.authorization.k8s.io"}),
    )
    .await;
}

/// The lake on an object store, as a platform team would point it: an `s3://` table, the
/// credentials in a Secret that only the capture sidecars see, the store's address and
/// plain-HTTP permission as store options, and the Delta Lake format; the `deltalake` Python
/// package reads every request back as a row of the committed table.
#[tokio::test(flavor = "multi_thread")]
async fn captured_rows_reach_an_object_store_delta_table_with_the_endpoints_secret() {
    let nodes = shared_nodes();
    let cp = shared();
    let _logs = nodes.kubelet.logs_on_panic();
    let client = cp.client().await.expect("client");
    let ns = fresh_namespace(&client, "capture-s3").await;
    let operator = cp.start_operator();
    let logs = || format!("{}{}", cp.dump_logs(), nodes.kubelet.dump_logs());
    let store = S3Server::start().await;
    store.put_folder("lake", "tables", &[]).await;

    let uri = iris_on_claim(&client, &ns).await;
    let apply = PatchParams::apply("test-user");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "lake-credentials",
            &apply,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "lake-credentials"},
                "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                               "AWS_REGION": "us-east-1"}})),
        )
        .await
        .expect("secret");
    let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &ns);
    mvs.patch(
        "iris-1",
        &apply,
        &Patch::Apply(
            json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "iris-1"},
            "spec": {"model": "iris", "version": 1, "source": {"uri": uri}, "format": "onnx"}}),
        ),
    )
    .await
    .expect("model version");
    let endpoints: Api<ServingEndpoint> = Api::namespaced(client.clone(), &ns);
    endpoints
        .patch(
            "iris",
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "serving.sluice.dev/v1alpha1", "kind": "ServingEndpoint",
                "metadata": {"name": "iris"},
                "spec": {"servedEntities": [{"name": "v1", "model": "iris", "version": 1}],
                         "autoCapture": {"enabled": true, "uri": "s3://lake/tables/iris_payload",
                                         "secretRef": {"name": "lake-credentials"},
                                         "storeOptions": {"aws_endpoint": store.endpoint,
                                                          "aws_allow_http": "true"},
                                         "tableFormat": "delta"}}}),
            ),
        )
        .await
        .expect("endpoint");
    sluice_tests::wait::eventually(
        "the endpoint READY",
        Duration::from_secs(180),
        logs,
        || async {
            let status = endpoints.get("iris").await.ok()?.status?;
            (format!("{:?}", status.state?.ready) == "READY").then_some(())
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pods
        .list(&ListParams::default().labels("serving.sluice.dev/endpoint=iris"))
        .await
        .expect("pods")
        .items
        .remove(0);
    let spec = pod.spec.expect("pod spec");
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let has_secret = c.env_from.iter().flatten().any(|e| {
            e.secret_ref
                .as_ref()
                .is_some_and(|s| s.name == "lake-credentials")
        });
        assert_eq!(
            has_secret,
            c.name == "capture",
            "{}: the lake Secret is the sidecar's only",
            c.name
        );
    }

    let gateway = GatewayProcess::start(cp, &cp.kubeconfig, &ns).await;
    let http = reqwest::Client::new();
    let url = format!("{}/serving-endpoints/iris/invocations", gateway.base);
    for _ in 0..REQUESTS {
        let answer = http
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"inputs": [[6.7, 3.0, 5.2, 2.3]]}"#)
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), 200);
    }
    delete_and_drain(&client, &ns, "iris", logs).await;
    drop(operator);

    // deltalake 1.6.6 aborts in its runtime's teardown at interpreter exit after everything
    // was read (as capture_delta notes): print, flush, and leave without the teardown.
    let script = format!(
        "import os, sys\n\
         from deltalake import DeltaTable\n\
         t = DeltaTable('s3://lake/tables/iris_payload', storage_options={{\
         'AWS_ENDPOINT_URL': '{}', 'AWS_ALLOW_HTTP': 'true', 'AWS_ACCESS_KEY_ID': 'testing', \
         'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_REGION': 'us-east-1', \
         'AWS_S3_ALLOW_UNSAFE_RENAME': 'true'}})\n\
         rows = t.to_pyarrow_table(columns=['request_id'])\n\
         print(rows.num_rows, len(set(rows.column('request_id').to_pylist())))\n\
         sys.stdout.flush()\n\
         os._exit(0)",
        store.endpoint
    );
    let out = std::process::Command::new(venv_tool("python"))
        .args(["-c", &script])
        .output()
        .expect("running deltalake");
    assert!(
        out.status.success(),
        "deltalake failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{REQUESTS} {REQUESTS}"),
        "rows in the Delta table"
    );
}
