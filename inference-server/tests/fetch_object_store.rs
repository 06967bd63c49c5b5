//! `inference-server fetch` from an S3-compatible object store (moto on loopback, from the
//! project's `.venv`): a model folder under a prefix arrives whole with identical bytes, one
//! object arrives as a file, a large object is streamed, a missing prefix fails with a message
//! naming it, a tarball arrives unpacked, and the secret key never appears in the output.

mod capture_support;

use std::{path::Path, process::Command};

use capture_support::{Moto, client, free_port, temp_dir};

const SECRET: &str = "not-a-real-secret-9f3b";

async fn put(moto: &Moto, key: &str, body: Vec<u8>) {
    let response = client()
        .put(format!("{}/{key}", moto.endpoint()))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert!(response.status().is_success(), "{response:?}");
}

/// Runs `fetch --uri <uri> --dest <dest>` as a pod would: credentials and the endpoint in the
/// environment (what a ModelVersion's secretRef gives). Exit success, and stdout+stderr.
fn fetch(moto: &Moto, uri: &str, dest: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inference-server"))
        .args(["fetch", "--uri", uri, "--dest"])
        .arg(dest)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "info")
        // Not the host's /dev: a pod's termination log, beside the destination.
        .env(
            "SLUICE_TERMINATION_LOG",
            dest.with_extension("termination-log"),
        )
        .output()
        .expect("running fetch");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn a_model_folder_an_object_a_large_object_and_a_tarball_come_from_s3() {
    let moto = Moto::start(free_port()).await;
    moto.create_bucket("models").await;
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/iris");
    let onnx = std::fs::read(iris.join("iris.onnx")).expect("iris.onnx");
    let manifest = std::fs::read(iris.join("sluice-model.yaml")).expect("manifest");
    put(&moto, "models/iris/1/iris.onnx", onnx.clone()).await;
    put(&moto, "models/iris/1/sluice-model.yaml", manifest.clone()).await;
    put(&moto, "models/iris/1/extra/notes.txt", b"nested".to_vec()).await;
    put(&moto, "models/iris/10/other.bin", b"not this one".to_vec()).await;
    let large: Vec<u8> = (0..24 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    put(&moto, "models/big/weights.bin", large.clone()).await;

    let root = temp_dir("fetch-s3");
    let dest = root.join("folder");
    let (ok, log) = fetch(&moto, "s3://models/iris/1", &dest);
    assert!(ok, "{log}");
    assert_eq!(std::fs::read(dest.join("iris.onnx")).expect("onnx"), onnx);
    assert_eq!(
        std::fs::read(dest.join("sluice-model.yaml")).expect("yaml"),
        manifest
    );
    assert_eq!(
        std::fs::read(dest.join("extra/notes.txt")).expect("nested"),
        b"nested"
    );
    assert!(
        !dest.join("other.bin").exists(),
        "iris/10 is not under iris/1/"
    );
    assert!(!log.contains(SECRET), "{log}");

    let one = root.join("one");
    let (ok, log) = fetch(&moto, "s3://models/iris/1/iris.onnx", &one);
    assert!(ok, "{log}");
    assert_eq!(std::fs::read(one.join("iris.onnx")).expect("onnx"), onnx);

    let big = root.join("big");
    let (ok, log) = fetch(&moto, "s3://models/big", &big);
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
    let (ok, log) = fetch(&moto, "s3://models/archives/iris.tgz", &unpacked);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(unpacked.join("iris.onnx")).expect("onnx"),
        onnx
    );
    assert!(unpacked.join("sluice-model.yaml").is_file());
    assert!(!unpacked.join("iris.tgz").exists());

    let (ok, log) = fetch(&moto, "s3://models/absent/7", &root.join("absent"));
    assert!(!ok, "a missing prefix fails");
    assert!(
        log.contains("absent/7") && log.contains("does not exist"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}
