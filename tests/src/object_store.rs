//! An S3-compatible object store for tests: moto's server (from the project's `.venv`) on a
//! free loopback port, stopped when dropped. Tests put model artifacts where an example's
//! `s3://` URI points, and hand pods its address through the ModelVersion's Secret, as a user
//! would hand them a MinIO's.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::venv_tool;

/// A running moto S3 server.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Starts moto on a free loopback port and waits until it answers.
    pub async fn start() -> Self {
        let port = crate::cluster::free_loopback_addr().port();
        let child = Command::new(venv_tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto_server: {e}"));
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        crate::wait::eventually(
            "moto to answer",
            Duration::from_secs(30),
            String::new,
            || async { http.get(&server.endpoint).send().await.ok().map(drop) },
        )
        .await;
        server
    }

    /// Creates `bucket`, then uploads each local file under `key/` (its file name appended).
    pub async fn put_folder(&self, bucket: &str, key: &str, files: &[std::path::PathBuf]) {
        let http = reqwest::Client::new();
        let ok = |r: reqwest::Response| assert!(r.status().is_success(), "{r:?}");
        ok(http
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("creating the bucket"));
        for file in files {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("file");
            let body = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            ok(http
                .put(format!("{}/{bucket}/{key}/{name}", self.endpoint))
                .body(body)
                .send()
                .await
                .expect("upload"));
        }
    }

    /// The Secret data a ModelVersion's `secretRef` gives the fetch step for this server: the
    /// standard `AWS_*` variables, the endpoint included.
    pub fn credentials(&self) -> serde_json::Value {
        serde_json::json!({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1"
        })
    }
}

/// A server process on 127.0.0.1, killed when dropped.
struct Emulator {
    child: Child,
    endpoint: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    /// Spawns `command` (listening on `port`) and waits until it answers HTTP at `ready`.
    async fn start(mut command: Command, port: u16, ready: &str) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let emulator = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let url = format!("{}{ready}", emulator.endpoint);
        crate::wait::eventually(
            &format!("{url} to answer"),
            Duration::from_secs(60),
            String::new,
            || async { http.get(&url).send().await.ok().map(drop) },
        )
        .await;
        emulator
    }
}

/// fake-gcs-server (installed by `.ci/setup`), in memory. `object_store` sends path-style XML
/// API requests (list, head, get), which fake-gcs-server routes only for its `-public-host`,
/// so that is its own address.
pub struct GcsServer(Emulator);

impl GcsServer {
    /// Starts it on a free loopback port.
    pub async fn start() -> Self {
        let port = crate::cluster::free_loopback_addr().port();
        let mut command = Command::new(crate::cached_tool("fake-gcs-server/fake-gcs-server"));
        command
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
            ])
            .args(["-port", &port.to_string()])
            .args(["-public-host", &format!("127.0.0.1:{port}")])
            .args(["-log-level", "warn"]);
        Self(Emulator::start(command, port, "/storage/v1/b").await)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.0.endpoint
    }

    /// Creates `bucket` and uploads each `(name, bytes)` through the JSON API.
    pub async fn put_objects(&self, bucket: &str, objects: &[(String, Vec<u8>)]) {
        let http = reqwest::Client::new();
        let response = http
            .post(format!("{}/storage/v1/b", self.endpoint()))
            .json(&serde_json::json!({ "name": bucket }))
            .send()
            .await
            .expect("creating the bucket");
        assert!(response.status().is_success(), "{response:?}");
        for (name, bytes) in objects {
            let mut url = reqwest::Url::parse(&format!(
                "{}/upload/storage/v1/b/{bucket}/o",
                self.endpoint()
            ))
            .expect("upload url");
            url.query_pairs_mut()
                .append_pair("uploadType", "media")
                .append_pair("name", name);
            let response = http
                .post(url)
                .body(bytes.clone())
                .send()
                .await
                .expect("upload");
            assert!(response.status().is_success(), "{name}: {response:?}");
        }
    }

    /// What a GCS ModelVersion's Secret holds: a service-account key that points at this
    /// server (`gcs_base_url`) with OAuth off (how `object_store` talks to an emulator; its
    /// `private_key` is `private_key`, the secret never to be printed), and plain http allowed.
    pub fn credentials(&self, private_key: &str) -> serde_json::Value {
        let key = serde_json::json!({
            "type": "service_account",
            "client_email": "fetch@sluice.test",
            "private_key_id": "test",
            "private_key": private_key,
            "gcs_base_url": self.endpoint(),
            "disable_oauth": true,
        });
        serde_json::json!({
            "GOOGLE_SERVICE_ACCOUNT_KEY": key.to_string(),
            "GOOGLE_ALLOW_HTTP": "true",
        })
    }
}

/// Azurite's Blob service (installed by `.ci/setup`), in memory, telemetry off (this machine
/// reaches only loopback).
pub struct AzureServer(Emulator);

impl AzureServer {
    /// Azurite's well-known development account (its documented default, not a secret).
    pub const ACCOUNT: &'static str = "devstoreaccount1";
    /// That account's key.
    pub const KEY: &'static str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// Starts it on a free loopback port.
    pub async fn start() -> Self {
        let port = crate::cluster::free_loopback_addr().port();
        let folder = std::env::temp_dir().join(format!("sluice-azurite-{port}"));
        let _ = std::fs::create_dir_all(&folder);
        let mut command =
            Command::new(crate::cached_tool("azurite/node_modules/.bin/azurite-blob"));
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
            .args(["--skipApiVersionCheck", "--loose"])
            .current_dir(folder);
        // Any answer (a 400 for the bare root) means it listens.
        Self(Emulator::start(command, port, "/").await)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.0.endpoint
    }

    /// Creates `container` and uploads each `(name, bytes)` as a block blob.
    pub async fn put_objects(&self, container: &str, objects: &[(String, Vec<u8>)]) {
        self.put(container, &[("restype", "container")], &[], Vec::new())
            .await;
        for (name, bytes) in objects {
            self.put(
                &format!("{container}/{name}"),
                &[],
                &[("x-ms-blob-type", "BlockBlob")],
                bytes.clone(),
            )
            .await;
        }
    }

    /// What an Azure ModelVersion's Secret holds: the account's name and `key`, this server's
    /// endpoint and plain http allowed.
    pub fn credentials(&self, key: &str) -> serde_json::Value {
        serde_json::json!({
            "AZURE_STORAGE_ACCOUNT_NAME": Self::ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": key,
            "AZURE_STORAGE_ENDPOINT": format!("{}/{}", self.endpoint(), Self::ACCOUNT),
            "AZURE_ALLOW_HTTP": "true",
        })
    }

    /// One `PUT`, signed with Shared Key as the Azure SDKs sign it
    /// (https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key).
    async fn put(
        &self,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) {
        let date = k8s_openapi::jiff::Timestamp::now()
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let mut signed: Vec<(&str, String)> =
            vec![("x-ms-date", date), ("x-ms-version", "2021-08-06".into())];
        signed.extend(headers.iter().map(|(n, v)| (*n, v.to_string())));
        signed.sort();
        let length = match body.len() {
            0 => String::new(),
            n => n.to_string(),
        };
        // VERB, Content-Encoding, -Language, -Length, -MD5, -Type, Date, If-Modified-Since,
        // If-Match, If-None-Match, If-Unmodified-Since, Range; then x-ms-* headers and the
        // resource (path-style: the account, then the account again as the first segment).
        let mut to_sign = format!("PUT\n\n\n{length}\n\n\n\n\n\n\n\n\n");
        for (name, value) in &signed {
            to_sign.push_str(&format!("{name}:{value}\n"));
        }
        to_sign.push_str(&format!("/{0}/{0}/{path}", Self::ACCOUNT));
        let mut sorted = query.to_vec();
        sorted.sort();
        for (name, value) in &sorted {
            to_sign.push_str(&format!("\n{name}:{value}"));
        }
        let signature =
            base64::encode(&hmac_sha256(&base64::decode(Self::KEY), to_sign.as_bytes()));
        let mut url = reqwest::Url::parse(&format!("{}/{}/{path}", self.endpoint(), Self::ACCOUNT))
            .expect("blob url");
        for (name, value) in query {
            url.query_pairs_mut().append_pair(name, value);
        }
        let mut request = reqwest::Client::new().put(url).header(
            "authorization",
            format!("SharedKey {}:{signature}", Self::ACCOUNT),
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
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
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

/// Standard base64 (what Shared Key signatures and account keys use).
pub mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes with padding.
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                out.push(if i <= chunk.len() {
                    char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize])
                } else {
                    '='
                });
            }
        }
        out
    }

    /// Decodes (padding optional); panics on a character outside the alphabet.
    pub fn decode(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut n, mut bits) = (0u32, 0);
        for c in text.bytes().take_while(|c| *c != b'=') {
            let value = ALPHABET.iter().position(|b| *b == c).expect("base64") as u32;
            n = (n << 6) | value;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((n >> bits) as u8);
            }
        }
        out
    }
}
