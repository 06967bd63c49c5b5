//! `inference-server fetch` from real object-store servers on loopback: S3 (moto, from the
//! project's `.venv`), Google Cloud Storage (fake-gcs-server) and Azure Blob (Azurite), the last
//! two installed by `.ci/setup` under `${SLUICE_CACHE:-~/.cache/sluice}`. Each test uploads a
//! model folder through the server's own HTTP API, not through `object_store`, then runs the real
//! binary with the environment a ModelVersion's `secretRef` Secret gives: a folder under a prefix
//! arrives whole with identical bytes (and nothing from a sibling prefix), one object arrives as a
//! file, and a failure exits non-zero naming the URI without ever printing the secret. S3 also
//! covers a large streamed object, a missing prefix and a tarball that arrives unpacked.

mod capture_support;
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use capture_support::{Moto, client, eventually, free_port, temp_dir};
use common::cached_tool;
use sha2::{Digest, Sha256};

const SECRET: &str = "not-a-real-secret-9f3b";

/// The objects every store gets: the iris example's files and a nested one under `iris/1/`, and
/// one under the sibling prefix `iris/10/` that a fetch of `iris/1` must not take.
fn model_objects() -> Vec<(&'static str, Vec<u8>)> {
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/iris");
    let read = |name: &str| std::fs::read(iris.join(name)).expect(name);
    vec![
        ("iris/1/iris.onnx", read("iris.onnx")),
        ("iris/1/sluice-model.yaml", read("sluice-model.yaml")),
        ("iris/1/extra/notes.txt", b"nested".to_vec()),
        ("iris/10/other.bin", b"not this one".to_vec()),
    ]
}

fn model_object(name: &str) -> Vec<u8> {
    let mut objects = model_objects().into_iter();
    objects.find(|(n, _)| *n == name).expect(name).1
}

/// Asserts that `dest` holds exactly the objects under `iris/1/`, byte for byte.
fn assert_model_folder(dest: &Path) {
    for (name, bytes) in model_objects() {
        match name.strip_prefix("iris/1/") {
            Some(relative) => assert_eq!(
                std::fs::read(dest.join(relative)).expect(relative),
                bytes,
                "{relative}"
            ),
            None => assert!(
                !dest
                    .join(Path::new(name).file_name().expect("name"))
                    .exists(),
                "{name} is not under iris/1/"
            ),
        }
    }
}

/// Runs `fetch --uri <uri> --dest <dest>` as a pod would: credentials and endpoint in the
/// environment (`env`, what a ModelVersion's secretRef gives; any `AWS_*`, `GOOGLE_*` or
/// `AZURE_*` of the host's own is removed). Answers exit success, stdout+stderr, and the
/// termination log (written beside `dest`, never to the host's /dev).
fn fetch(env: &[(&str, String)], uri: &str, dest: &Path) -> (bool, String, String) {
    let termination_log = dest.with_extension("termination-log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_inference-server"));
    command
        .args(["fetch", "--uri", uri, "--dest"])
        .arg(dest)
        .env("RUST_LOG", "info")
        .env("SLUICE_TERMINATION_LOG", &termination_log);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if ["AWS_", "GOOGLE_", "AZURE_"]
            .iter()
            .any(|cloud| key.starts_with(cloud))
        {
            command.env_remove(key.as_ref());
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().expect("running fetch");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let termination = std::fs::read_to_string(&termination_log).unwrap_or_default();
    (out.status.success(), text, termination)
}

/// A server process on 127.0.0.1, killed when dropped.
struct Running {
    child: Child,
    base: String,
}

impl Running {
    /// Spawns `command` (which listens on `port`) and waits until it answers HTTP at `ready`.
    async fn start(mut command: Command, port: u16, ready: &str) -> Running {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the server");
        let running = Running {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = client();
        let url = format!("{}{ready}", running.base);
        eventually(Duration::from_secs(60), &url, || async {
            client.get(&url).send().await.ok().map(drop)
        })
        .await;
        running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn put(moto: &Moto, key: &str, body: Vec<u8>) {
    let response = client()
        .put(format!("{}/{key}", moto.endpoint()))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert!(response.status().is_success(), "{response:?}");
}

fn s3_env(moto: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

#[tokio::test]
async fn a_model_folder_an_object_a_large_object_and_a_tarball_come_from_s3() {
    let moto = Moto::start(free_port()).await;
    moto.create_bucket("models").await;
    for (name, bytes) in model_objects() {
        put(&moto, &format!("models/{name}"), bytes).await;
    }
    let large: Vec<u8> = (0..24 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    put(&moto, "models/big/weights.bin", large.clone()).await;
    let env = s3_env(&moto);

    let root = temp_dir("fetch-s3");
    let dest = root.join("folder");
    let (ok, log, _) = fetch(&env, "s3://models/iris/1", &dest);
    assert!(ok, "{log}");
    assert_model_folder(&dest);
    assert!(!log.contains(SECRET), "{log}");

    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/iris");
    let onnx = std::fs::read(iris.join("iris.onnx")).expect("iris.onnx");
    let one = root.join("one");
    let (ok, log, _) = fetch(&env, "s3://models/iris/1/iris.onnx", &one);
    assert!(ok, "{log}");
    assert_eq!(std::fs::read(one.join("iris.onnx")).expect("onnx"), onnx);

    let big = root.join("big");
    let (ok, log, _) = fetch(&env, "s3://models/big", &big);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(big.join("weights.bin")).expect("weights"),
        large
    );
    assert!(log.contains("download progress"), "{log}");

    // A tarball of the model folder (as `tar czf iris.tgz iris/` makes it) arrives unpacked.
    let tgz = root.join("iris.tgz");
    let tarred = Command::new("tar")
        .arg("czf")
        .arg(&tgz)
        .arg("-C")
        .arg(iris.parent().expect("models folder"))
        .arg("iris")
        .status()
        .expect("tar");
    assert!(tarred.success());
    put(
        &moto,
        "models/archives/iris.tgz",
        std::fs::read(&tgz).expect("tgz"),
    )
    .await;
    let unpacked = root.join("unpacked");
    let (ok, log, _) = fetch(&env, "s3://models/archives/iris.tgz", &unpacked);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(unpacked.join("iris.onnx")).expect("onnx"),
        onnx
    );
    assert!(unpacked.join("sluice-model.yaml").is_file());
    assert!(!unpacked.join("iris.tgz").exists());

    let (ok, log, _) = fetch(&env, "s3://models/absent/7", &root.join("absent"));
    assert!(!ok, "a missing prefix fails");
    assert!(
        log.contains("absent/7") && log.contains("does not exist"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}

/// fake-gcs-server, in memory. Path-style XML API requests (which `object_store` sends for
/// list, head and get) are only routed for the `-public-host`, so that is the address itself.
async fn fake_gcs() -> Running {
    let port = free_port();
    let mut command = Command::new(cached_tool("fake-gcs-server/fake-gcs-server"));
    command
        .args(["-scheme", "http", "-host", "127.0.0.1"])
        .args(["-backend", "memory"])
        .args(["-port", &port.to_string()])
        .args(["-public-host", &format!("127.0.0.1:{port}")])
        .args(["-log-level", "warn"]);
    Running::start(command, port, "/storage/v1/b").await
}

/// Creates `bucket` and uploads `objects` through the JSON API.
async fn gcs_upload(gcs: &Running, bucket: &str, objects: &[(&str, Vec<u8>)]) {
    let client = client();
    let response = client
        .post(format!("{}/storage/v1/b", gcs.base))
        .json(&serde_json::json!({ "name": bucket }))
        .send()
        .await
        .expect("create bucket");
    assert!(response.status().is_success(), "{response:?}");
    for (name, bytes) in objects {
        let mut url = url::Url::parse(&format!("{}/upload/storage/v1/b/{bucket}/o", gcs.base))
            .expect("upload url");
        url.query_pairs_mut()
            .append_pair("uploadType", "media")
            .append_pair("name", name);
        let response = client
            .post(url)
            .body(bytes.clone())
            .send()
            .await
            .expect("upload");
        assert!(response.status().is_success(), "{name}: {response:?}");
    }
}

#[tokio::test]
async fn a_model_folder_and_an_object_come_from_gcs() {
    let gcs = fake_gcs().await;
    gcs_upload(&gcs, "models", &model_objects()).await;
    // The Secret of a GCS ModelVersion holds a service account key. One that points at another
    // endpoint (`gcs_base_url`) and turns OAuth off is how `object_store` talks to an emulator;
    // its private key is the secret that must never be printed.
    let key = serde_json::json!({
        "type": "service_account",
        "client_email": "fetch@sluice.test",
        "private_key_id": "test",
        "private_key": SECRET,
        "gcs_base_url": gcs.base,
        "disable_oauth": true,
    });
    let env = [
        ("GOOGLE_SERVICE_ACCOUNT_KEY", key.to_string()),
        ("GOOGLE_ALLOW_HTTP", "true".into()),
    ];

    let root = temp_dir("fetch-gcs");
    let dest = root.join("folder");
    let (ok, log, _) = fetch(&env, "gs://models/iris/1", &dest);
    assert!(ok, "{log}");
    assert_model_folder(&dest);
    assert!(!log.contains(SECRET), "{log}");

    let one = root.join("one");
    let (ok, log, _) = fetch(&env, "gs://models/iris/1/sluice-model.yaml", &one);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(one.join("sluice-model.yaml")).expect("yaml"),
        model_object("iris/1/sluice-model.yaml")
    );

    // fake-gcs-server checks no credentials at all (any bearer token, or none, is accepted), so
    // a wrong key cannot be shown to fail here; a missing bucket is the failure tested instead
    // (fake-gcs-server answers it with a 500 "no bucket named …", where GCS says 404).
    let uri = "gs://no-such-bucket/iris/1";
    let (ok, log, termination) = fetch(&env, uri, &root.join("missing"));
    assert!(!ok, "a missing bucket fails: {log}");
    assert!(log.contains(uri) && log.contains("no-such-bucket"), "{log}");
    assert!(termination.contains(uri), "{termination}");
    assert!(
        !log.contains(SECRET) && !termination.contains(SECRET),
        "{log}"
    );
}

/// Azurite's well-known development account (its documented default, not a secret).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's Blob service, in memory, telemetry off (this machine reaches only loopback).
async fn azurite() -> Running {
    let port = free_port();
    let mut command = Command::new(cached_tool("azurite/node_modules/.bin/azurite-blob"));
    command
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
        .args(["--skipApiVersionCheck", "--loose"])
        // It writes nothing with in-memory persistence; a fresh folder in case it ever does.
        .current_dir(temp_dir("azurite"));
    // Any answer (a 400 for the bare root) means it listens.
    Running::start(command, port, "/").await
}

/// One `PUT` to Azurite's Blob service, signed with Shared Key as the Azure SDKs sign it
/// (https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key).
async fn azure_put(
    azurite: &Running,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
    body: Vec<u8>,
) {
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let mut signed: Vec<(&str, String)> =
        vec![("x-ms-date", date), ("x-ms-version", "2021-08-06".into())];
    signed.extend(
        headers
            .iter()
            .map(|(name, value)| (*name, value.to_string())),
    );
    signed.sort();
    let length = match body.len() {
        0 => String::new(),
        n => n.to_string(),
    };
    // VERB, Content-Encoding, -Language, -Length, -MD5, -Type, Date, If-Modified-Since,
    // If-Match, If-None-Match, If-Unmodified-Since, Range; then x-ms-* headers and the resource
    // (path-style: the account, then the account again as the URL's first segment).
    let mut to_sign = format!("PUT\n\n\n{length}\n\n\n\n\n\n\n\n\n");
    for (name, value) in &signed {
        to_sign.push_str(&format!("{name}:{value}\n"));
    }
    to_sign.push_str(&format!("/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{path}"));
    let mut sorted = query.to_vec();
    sorted.sort();
    for (name, value) in &sorted {
        to_sign.push_str(&format!("\n{name}:{value}"));
    }
    let signature = base64_encode(&hmac_sha256(
        &base64_decode(AZURITE_KEY),
        to_sign.as_bytes(),
    ));
    let mut url =
        url::Url::parse(&format!("{}/{AZURITE_ACCOUNT}/{path}", azurite.base)).expect("blob url");
    for (name, value) in query {
        url.query_pairs_mut().append_pair(name, value);
    }
    let mut request = client().put(url).header(
        "authorization",
        format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
    );
    for (name, value) in &signed {
        request = request.header(*name, value);
    }
    let response = request.body(body).send().await.expect("azure put");
    assert!(
        response.status().is_success(),
        "PUT {path}: {}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut n, mut bits) = (0u32, 0);
    for c in text.bytes().take_while(|c| *c != b'=') {
        let value = BASE64.iter().position(|b| *b == c).expect("base64") as u32;
        n = (n << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn a_model_folder_and_an_object_come_from_azure_blob() {
    let azurite = azurite().await;
    azure_put(
        &azurite,
        "models",
        &[("restype", "container")],
        &[],
        Vec::new(),
    )
    .await;
    for (name, bytes) in model_objects() {
        let path = format!("models/{name}");
        azure_put(
            &azurite,
            &path,
            &[],
            &[("x-ms-blob-type", "BlockBlob")],
            bytes,
        )
        .await;
    }
    // What the Secret of an Azure ModelVersion holds: the account's name and key, plus an
    // endpoint (here Azurite's path-style URL; in Azure a private or sovereign-cloud endpoint).
    let env_with_key = |key: &str| {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.to_string()),
            ("AZURE_STORAGE_ACCOUNT_KEY", key.to_string()),
            (
                "AZURE_STORAGE_ENDPOINT",
                format!("{}/{AZURITE_ACCOUNT}", azurite.base),
            ),
            ("AZURE_ALLOW_HTTP", "true".to_string()),
        ]
    };
    let env = env_with_key(AZURITE_KEY);

    let root = temp_dir("fetch-azure");
    let dest = root.join("folder");
    let (ok, log, _) = fetch(&env, "az://models/iris/1", &dest);
    assert!(ok, "{log}");
    assert_model_folder(&dest);
    assert!(!log.contains(AZURITE_KEY), "{log}");

    // The ADLS Gen2 form names the container and account in the URI.
    let adls = root.join("adls");
    let uri = format!("abfss://models@{AZURITE_ACCOUNT}.dfs.core.windows.net/iris/1");
    let (ok, log, _) = fetch(&env, &uri, &adls);
    assert!(ok, "{log}");
    assert_model_folder(&adls);

    let one = root.join("one");
    let (ok, log, _) = fetch(&env, "az://models/iris/1/iris.onnx", &one);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(one.join("iris.onnx")).expect("onnx"),
        model_object("iris/1/iris.onnx")
    );

    // A wrong account key (well-formed base64, so it reaches the server) is refused by Azurite
    // (403 AuthorizationFailure): the error names the URI and never the key.
    let wrong = base64_encode(SECRET.as_bytes());
    let uri = "az://models/iris/1";
    let (ok, log, termination) = fetch(&env_with_key(&wrong), uri, &root.join("denied"));
    assert!(!ok, "a wrong key fails: {log}");
    assert!(log.contains(uri) && log.contains("403"), "{log}");
    assert!(termination.contains(uri), "{termination}");
    for shown in [&log, &termination] {
        assert!(
            !shown.contains(&wrong) && !shown.contains(SECRET),
            "{shown}"
        );
    }
    assert!(!root.join("denied/iris.onnx").exists());
}
