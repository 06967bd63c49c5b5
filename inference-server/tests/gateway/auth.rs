//! Callers of a standalone gateway with a keys file: keys minted and revoked with
//! `inference-server api-key --file`, a call without one refused with 401 and
//! `WWW-Authenticate`, a key outside its scope refused with 403, the `openai` client's model list
//! holding what each key may call, and a revoked key refused at the next call.

use std::path::Path;
use std::process::Command;

use crate::common::{BINARY, temp_dir};
use crate::harness::{Gateway, Upstream, two_entities};

/// Runs `inference-server api-key <args> --file <file>`; its stdout, or a panic with stderr.
fn api_key(file: &Path, args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .arg("api-key")
        .args(args)
        .arg("--file")
        .arg(file)
        .output()
        .expect("api-key runs");
    assert!(
        output.status.success(),
        "api-key {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `client.models.list()` of the `openai` Python package with `key`, as a JSON list of ids.
fn openai_models(base: &str, key: &str) -> String {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let script = format!(
        "import json, openai\n\
         client = openai.OpenAI(base_url='{base}/serving-endpoints/v1', api_key='{key}')\n\
         print(json.dumps([m.id for m in client.models.list()]))"
    );
    let output = Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("{} (run .ci/setup): {e}", python.display()));
    assert!(
        output.status.success(),
        "openai models.list(): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn post(gateway: &Gateway, key: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
    let mut request = gateway
        .client
        .post(format!("{}/serving-endpoints/ep/invocations", gateway.base))
        .header("content-type", "application/json")
        .body(r#"{"inputs": [[1.0]]}"#);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("answer");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.json().await.unwrap_or_default();
    (status, challenge, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_file_are_checked_and_revoked_at_the_next_call() {
    let dir = temp_dir("api-keys");
    let file = dir.join("keys.yaml");
    let key = api_key(
        &file,
        &["create", "--principal", "batch", "--group", "risk"],
    );
    let scoped = api_key(
        &file,
        &[
            "create",
            "--principal",
            "other",
            "--endpoint",
            "somewhere-else",
        ],
    );
    assert!(key.starts_with("sluice_"), "{key}");
    let stored = std::fs::read_to_string(&file).expect("keys file");
    assert!(!stored.contains(&key[20..]), "the secret is not stored");
    let id = key
        .strip_prefix("sluice_")
        .and_then(|rest| rest.split('_').next())
        .expect("id");
    let listed = api_key(&file, &["list"]);
    assert!(
        listed.contains(id) && listed.contains("batch") && listed.contains("groups=risk"),
        "{listed}"
    );

    let up = Upstream::python("a", None).await;
    let keys = file.display().to_string();
    let gateway = Gateway::start(
        &two_entities(100, "", ""),
        &[("a", up.addr), ("b", up.addr)],
        &["--api-keys-file", &keys],
    )
    .await;

    let (status, challenge, body) = post(&gateway, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"sluice\""));
    assert_eq!(body["error_code"], "UNAUTHENTICATED");
    let (status, _, body) = post(&gateway, Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(&gateway, Some(&scoped)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error_code"], "PERMISSION_DENIED");

    // The OpenAI client's model list shows what each key may call.
    for (caller, expected) in [(&key, r#"["ep"]"#), (&scoped, "[]")] {
        assert_eq!(openai_models(&gateway.base, caller), expected);
    }

    api_key(&file, &["revoke", id]);
    let (status, _, body) = post(&gateway, Some(&key)).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{body}"
    );
    let metrics = gateway.metrics().await;
    for line in [
        // One call, and two model lists.
        "sluice_gateway_auth_checks_total{outcome=\"allowed\"} 3",
        "sluice_gateway_auth_checks_total{outcome=\"unauthenticated\"} 2",
        "sluice_gateway_auth_checks_total{outcome=\"forbidden\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}
